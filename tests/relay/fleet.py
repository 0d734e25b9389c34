"""Typed factories of what the fleet side stores: a device's status as the relay reads it."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from cloud_relay.store import StatusUpdate


def status_update(
    device: str = "d", state: str = "online", *, at: float | None = None, **fields: Any
) -> StatusUpdate:
    """A live status of ``device`` received (and sent) at ``at`` (default now); ``fields``
    set the rest (``heads``, ``embedder``, ``live``, ...)."""
    now = time.time() if at is None else at
    base = StatusUpdate(
        device_id=device,
        state=state,
        received_at=now,
        ts=now,
        live=True,
        model="smol",
        provider="cpu",
        version="0.1.0",
        conditions=None,
    )
    return replace(base, **fields)
