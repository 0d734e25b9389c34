"""The one retry delay both daemons use: exponential backoff with equal jitter.

Used by the MQTT reconnect (``edge_slm.mqtt``), model downloads
(``agent.models.download``) and the relay's LLM calls (``cloud_relay.llm``).

Why equal jitter and not full jitter (``uniform(0, step)``): every caller retries
against a server that has just failed (a restarted broker, a 429/5xx, a dropped
download). Full jitter puts some retries at nearly zero, straight back onto a
server that is still recovering; equal jitter keeps half the step as a floor, so
every client pauses, and spreads the other half at random, so a fleet that lost
the server at one instant does not come back in lockstep.

Why no retry library (tenacity, stamina): the three loops differ in what they
retry and how long they may wait (paho's reconnect timer takes only a base delay;
the relay honours ``Retry-After`` and a deadline), so each keeps its own loop and
only the formula is shared.
"""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Delay before retry number ``attempt`` (1-based), in seconds.

    The step is ``base_s * 2**(attempt - 1)``, capped at ``max_s``; the delay is
    half the step plus a uniformly random share of the other half, so it lies in
    ``[step / 2, step]``.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    step = min(max_s, base_s * 2.0 ** (attempt - 1))
    return step / 2 + random.uniform(0, step / 2)  # noqa: S311 - spreading retries, not crypto
