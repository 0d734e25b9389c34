"""The relay log store: one row per escalation, keyed by (device_id, request_id).

The unique key is also the idempotency guard: :meth:`RelayStore.claim` inserts
the row or finds it, atomically, so a redelivered or replayed escalation never
reaches the LLM twice, even with several relays sharing one database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from edge_slm.contract import Outcome


class ClaimState(StrEnum):
    CLAIMED = "claimed"  # ours: go ahead and answer it
    IN_FLIGHT = "in_flight"  # another worker or relay is answering it
    FINAL = "final"  # answered before: re-send the stored reply


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    reply: str | None = None  # the stored CloudReply JSON when FINAL


@dataclass(frozen=True, slots=True)
class NewEscalation:
    """What is known about an escalation when it is claimed."""

    device_id: str
    request_id: str
    relay_id: str
    received_at: float
    task: str | None = None
    kind: str | None = None
    reason: str | None = None
    edge_answer: str | None = None
    edge_label: str | None = None
    edge_confidence: float | None = None
    redactions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Final:
    """How an escalation ended."""

    outcome: Outcome
    answered_at: float
    reply: str
    latency_ms: float
    llm_model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None
    attempts: int = 0
    cloud_answer: str | None = None
    cloud_label: str | None = None
    cloud_confidence: float | None = None
    agreement: bool | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class LogRow:
    device_id: str
    request_id: str
    relay_id: str
    received_at: float
    task: str | None
    kind: str | None
    reason: str | None
    edge_answer: str | None
    edge_label: str | None
    edge_confidence: float | None
    redactions: dict[str, int]
    llm_start: float | None
    answered_at: float | None
    outcome: Outcome | None  # None while in flight
    llm_model: str | None
    tokens_in: int
    tokens_out: int
    cost_usd: float | None
    attempts: int
    cloud_answer: str | None
    cloud_label: str | None
    cloud_confidence: float | None
    agreement: bool | None
    error: str | None
    latency_ms: float | None
    reply: str | None


@dataclass(frozen=True, slots=True)
class LogQuery:
    device_id: str | None = None
    since: float | None = None  # received_at >= since
    outcome: Outcome | None = None
    answered_after: float | None = None  # for --follow: final rows answered after this
    limit: int | None = 100  # newest first; None = all
    oldest_first: bool = False


@dataclass(frozen=True, slots=True)
class Usage:
    llm_calls: int  # rows that reached the LLM since the window start
    tokens: int  # tokens in + out since the day start


class StoreError(Exception):
    """The store is unreachable or its schema is newer than this code."""


class RelayStore(Protocol):
    def claim(self, esc: NewEscalation, *, stale_before: float) -> Claim:
        """Insert the row as in flight, or report what is already there.

        An in-flight row claimed before ``stale_before`` (its relay died) is taken over.
        """
        ...

    def mark_llm_start(self, device_id: str, request_id: str, at: float) -> None: ...

    def finalize(self, device_id: str, request_id: str, final: Final) -> None: ...

    def release(self, device_id: str, request_id: str) -> None:
        """Drop an in-flight claim that was never answered (shutdown), so a replay is served."""
        ...

    def usage(self, device_id: str, *, calls_since: float, tokens_since: float) -> Usage: ...

    def logs(self, query: LogQuery) -> Sequence[LogRow]: ...

    def close(self) -> None: ...
