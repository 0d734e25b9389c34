"""``python -m cloud_relay`` is ``cloud-relay``."""

import sys

from cloud_relay.cli import main

sys.exit(main())
