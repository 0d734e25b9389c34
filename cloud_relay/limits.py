"""Per-device rate limit and daily token budget, counted in the shared store.

Counting in the store (not in process memory) makes the limits hold across
all relays sharing one database. Checks and counts are not one transaction,
so concurrent escalations of one device may overshoot by a few: these are cost
guards, not billing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from cloud_relay.config import LimitSettings
from cloud_relay.store import Usage

RATE_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class OverBudget:
    message: str
    retry_after_s: float


def _utc_midnight(now: float) -> float:
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


class UsageSource(Protocol):
    """Where usage is counted: the store, through its writer."""

    async def usage(self, device_id: str, *, calls_since: float, tokens_since: float) -> Usage: ...


async def check_budget(
    store: UsageSource, limits: LimitSettings, device_id: str, now: float
) -> OverBudget | None:
    """Why ``device_id`` may not call the LLM now, or None when it may (no read if no limits)."""
    if not limits.rate_per_minute and not limits.daily_tokens:
        return None
    day_start = _utc_midnight(now)
    usage = await store.usage(device_id, calls_since=now - RATE_WINDOW_S, tokens_since=day_start)
    if limits.rate_per_minute and usage.llm_calls >= limits.rate_per_minute:
        return OverBudget(
            f"rate limit: {usage.llm_calls} LLM calls in the last minute "
            f"(limit {limits.rate_per_minute})",
            retry_after_s=RATE_WINDOW_S,
        )
    if limits.daily_tokens and usage.tokens >= limits.daily_tokens:
        tomorrow = day_start + timedelta(days=1).total_seconds()
        return OverBudget(
            f"daily token budget spent: {usage.tokens} of {limits.daily_tokens}",
            retry_after_s=tomorrow - now,
        )
    return None
