#!/usr/bin/env bash
# Set up (idempotent), then run the end-to-end demo: a private mosquitto, the
# agent with the on-device model, and real requests sent with mosquitto_rr.
# Pass --broker mqtt://host:port to use an existing broker instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
