"""Retry delays: jittered exponential backoff and the HTTP ``Retry-After`` header."""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Delay before retry number ``attempt`` (1-based): "equal jitter" around base * 2^(n-1).

    Half fixed, half random: never near zero (the server gets a real pause),
    yet spread so a fleet's retries do not arrive in lockstep.
    """
    ceiling = min(max_s, base_s * 2.0 ** (attempt - 1))
    jitter: float = random.uniform(0, ceiling / 2)  # noqa: S311 - not cryptographic
    return ceiling / 2 + jitter


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 §10.2.3).

    Either delay-seconds or an HTTP-date; None when absent or unreadable.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
