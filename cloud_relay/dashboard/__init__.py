"""``cloud-relay dashboard``: a read-only web page over the relay log store."""

from __future__ import annotations

from cloud_relay.dashboard.app import create_app
from cloud_relay.dashboard.auth import Auth

__all__ = ["Auth", "create_app"]
