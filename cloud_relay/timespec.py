"""``--since`` values: an ISO 8601 time, or a relative age like ``90s``, ``10m``, ``2h``, ``1d``."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, *, now: float | None = None) -> float:
    """Epoch seconds for ``value``; naive ISO times are taken as UTC."""
    current = time.time() if now is None else now
    match = _RELATIVE.match(value)
    if match:
        return current - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"--since {value!r}: use an ISO time (2025-06-01T12:00) or an age (10m, 2h, 1d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
