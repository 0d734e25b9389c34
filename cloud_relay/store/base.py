"""The relay log store: one row per escalation, keyed by (device_id, request_id).

The unique key is also the idempotency guard: :meth:`RelayStore.claim` inserts
the row or finds it, atomically, so a redelivered or replayed escalation never
reaches the LLM twice, even with several relays sharing one database.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from edge_slm.contract import Outcome


class ClaimState(StrEnum):
    CLAIMED = "claimed"  # ours: go ahead and answer it
    IN_FLIGHT = "in_flight"  # another worker or relay is answering it
    FINAL = "final"  # answered before: re-send the stored reply


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    reply: str | None = None  # the stored CloudReply JSON when FINAL


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """What a claimed escalation and its log row both hold of the case."""

    #: The case as the relay received it: already redacted on the device (kept for
    #: `cloud-relay export`; None when `store_prompts` is off).
    edge_model: str | None = None
    text: str | None = None
    labels: list[str] | None = None
    sensor: list[dict[str, Any]] | None = None
    #: The skill the request named (``Escalation.skill``), for ``cloud-relay learn``.
    skill: str | None = None
    #: The act request's tools (OpenAI's format, as resolved by the device) and the extract
    #: request's schema: part of the case, so None too when `store_prompts` is off.
    tools: list[dict[str, Any]] | None = None
    json_schema: dict[str, Any] | None = None
    #: The edge's structured answer: its call ``{"name", "arguments"}`` (act) or object
    #: (extract); ``edge_answer`` holds the same as compact JSON text.
    edge_tool_call: dict[str, Any] | None = None
    edge_data: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class NewEscalation(Case):
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
    #: Set when the claimer is about to call the LLM: saves a separate mark_llm_start.
    llm_start: float | None = None


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
    #: The cloud's validated call ``{"name", "arguments"}`` (act) or object (extract);
    #: ``cloud_answer`` holds the same as compact JSON text.
    cloud_tool_call: dict[str, Any] | None = None
    cloud_data: dict[str, Any] | None = None
    agreement: bool | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class LogRow(Case):
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
    #: The cloud's structured answer (see :class:`Final`); None for other tasks and for
    #: rows logged before store migration 6, like the case's structured fields.
    cloud_tool_call: dict[str, Any] | None = None
    cloud_data: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class LogQuery:
    device_id: str | None = None
    since: float | None = None  # received_at >= since
    outcome: Outcome | None = None
    answered_after: float | None = None  # for --follow: final rows answered after this
    limit: int | None = 100  # newest first; None = all
    oldest_first: bool = False
    until: float | None = None  # received_at < until
    #: Case-insensitive substring of the device, request id, reason, text, answers or error.
    search: str | None = None
    offset: int = 0  # rows to skip (paging), after ordering


@dataclass(frozen=True, slots=True)
class LogPoint:
    """The few columns of a log row that charts need (no texts, no reply)."""

    device_id: str
    received_at: float
    outcome: Outcome | None
    latency_ms: float | None
    cost_usd: float | None
    agreement: bool | None


@dataclass(frozen=True, slots=True)
class Usage:
    llm_calls: int  # rows that reached the LLM since the window start
    tokens: int  # tokens in + out since the day start


#: ``Telemetry.requests`` keys kept as columns (the history is for charts: plain columns).
REQUEST_SOURCES = ("edge", "cloud", "edge-fallback", "error")


@dataclass(frozen=True, slots=True)
class TelemetrySample:
    """One ``Telemetry`` message, flattened for the store."""

    device_id: str
    ts: float  # device clock
    received_at: float  # relay clock
    started_at: float
    model: str
    provider: str
    requests: dict[str, int]  # by source, see REQUEST_SOURCES
    escalations: int
    cost_avoided_usd: float
    latency_ms: dict[str, tuple[float, float]]  # source -> (p50, p95)
    conditions: list[str] | None
    raw: str  # the telemetry JSON as received (validated)

    def count(self, source: str) -> int:
        return int(self.requests.get(source, 0))


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One retained ``Status`` message."""

    device_id: str
    state: str  # online | offline
    received_at: float  # relay clock
    ts: float  # device clock (the will's is its connect time: not used for ordering)
    live: bool  # False: the broker's retained copy, sent because we subscribed
    model: str | None
    provider: str | None
    version: str | None
    conditions: list[str] | None
    #: The running model's version (``model_state.version``: the sha256 prefix of the
    #: archive it came from over the air); None for a configured model.
    model_version: str | None = None
    #: ``Status.heads``: the head version in use per skill; None when the status has none.
    heads: dict[str, int] | None = None
    #: ``Status.embedder``: the encoder the device's heads run on; None: none, or unsaid.
    embedder: str | None = None


@dataclass(frozen=True, slots=True)
class Totals:
    """Cumulative counters of a device over all its runs (restarts added up)."""

    edge: int = 0
    cloud: int = 0
    edge_fallback: int = 0
    error: int = 0
    escalations: int = 0
    cost_avoided_usd: float = 0.0

    @property
    def answered(self) -> int:
        return self.edge + self.cloud + self.edge_fallback

    @property
    def escalation_rate(self) -> float | None:
        return self.escalations / self.answered if self.answered else None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: str
    last_seen: float | None  # relay clock
    state: str | None  # online | offline, from the retained status; None: never seen
    state_at: float | None
    model: str | None
    provider: str | None
    version: str | None
    conditions: list[str]
    telemetry: dict[str, Any] | None  # the latest Telemetry JSON
    telemetry_ts: float | None
    started_at: float | None
    runs: int  # distinct started_at values seen
    totals: Totals
    model_version: str | None = None  # of ``model``; None: a configured model
    heads: dict[str, int] | None = None  # head version per skill, from the status
    embedder: str | None = None  # the encoder its heads run on, from the status


@dataclass(frozen=True, slots=True)
class LabelledCase:
    """A case the cloud labelled: training data for a skill's head (``cloud-relay learn``).

    Only what already left the device, redacted there: the escalation's text as the
    relay received it and logged it (``store_prompts``).
    """

    device_id: str
    request_id: str
    received_at: float
    text: str
    label: str  # the cloud's
    shadow: bool  # a confident edge answer sampled for comparison, not a low-confidence one
    #: The request's own label set, for a request that named no skill (``ad_hoc_cases``).
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PushedHead:
    """A skill head the relay published (the retained ``SkillHead`` JSON, as sent)."""

    skill: str
    embedder: str  # the encoder it reads: one head per (skill, encoder)
    version: int  # one sequence per skill over its encoders
    payload: str  # the SkillHead wire JSON
    pushed_at: float
    #: Labelled cases in the store when it was fitted (the next run skips when none came).
    cases: int


@dataclass(frozen=True, slots=True)
class Paraphrase:
    """A request the cloud LLM wrote for one of a skill's labels (``learn.paraphrases``):
    training data made from the skill's own text, never from a device's request."""

    label: str
    text: str


class StoreError(Exception):
    """The store is unreachable or its schema is newer than this code."""


class RelayStore(Protocol):
    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction around the calls inside (for group commit): they commit
        together when the block ends, or are rolled back together if it raises."""
        ...

    def claim(self, esc: NewEscalation, *, stale_before: float) -> Claim:
        """Insert the row as in flight, or report what is already there.

        An in-flight row claimed before ``stale_before`` (its relay died) is taken over.
        ``esc.llm_start``, when set, is stored with the claim (insert or takeover).
        """
        ...

    def claim_many(self, claims: Sequence[tuple[NewEscalation, float]]) -> list[Claim]:
        """:meth:`claim` for each (escalation, stale_before), in order, sent together."""
        ...

    def mark_llm_start(self, device_id: str, request_id: str, at: float) -> None: ...

    def finalize(self, device_id: str, request_id: str, final: Final) -> None: ...

    def finalize_many(self, finals: Sequence[tuple[str, str, Final]]) -> None:
        """:meth:`finalize` for each (device_id, request_id, final), sent together."""
        ...

    def release(self, device_id: str, request_id: str) -> None:
        """Drop an in-flight claim that was never answered (shutdown), so a replay is served."""
        ...

    def usage(self, device_id: str, *, calls_since: float, tokens_since: float) -> Usage: ...

    def logs(self, query: LogQuery) -> Sequence[LogRow]: ...

    def count_logs(self, query: LogQuery) -> int:
        """How many rows match ``query``'s filters (its limit, offset and order ignored)."""
        ...

    def log_points(
        self, device_id: str | None = None, since: float | None = None, until: float | None = None
    ) -> Sequence[LogPoint]:
        """Chart columns of the rows received in [since, until), oldest first."""
        ...

    def record_telemetry(self, sample: TelemetrySample) -> bool:
        """Add ``sample`` to the history; make it the device's latest unless a newer one is.

        When ``started_at`` changes (the agent restarted), the previous run's last
        totals are added to the device's prior totals, atomically. Returns whether
        the sample became the latest.
        """
        ...

    def record_status(self, status: StatusUpdate) -> None: ...

    def devices(self, device_id: str | None = None) -> Sequence[DeviceRow]: ...

    def telemetry_history(
        self, device_id: str | None = None, since: float | None = None
    ) -> Sequence[TelemetrySample]:
        """History samples, oldest first (``raw`` is empty: not kept per sample)."""
        ...

    def count_online(self) -> int: ...

    def labelled_cases(self, skill: str, *, limit: int | None = None) -> Sequence[LabelledCase]:
        """Answered escalations (shadow samples included) of ``skill`` with a cloud label and
        a logged text, newest first (``limit`` of them; None: all)."""
        ...

    def ad_hoc_cases(self, *, limit: int) -> Sequence[LabelledCase]:
        """Answered escalations (shadow samples included) that named no skill and listed
        their own ``labels``, with a cloud label and a logged text, newest first, at most
        ``limit``; each carries its label set (``LabelledCase.labels``)."""
        ...

    def latest_head(self, skill: str, embedder: str) -> PushedHead | None:
        """The head last pushed for ``skill`` on the encoder ``embedder``, or None."""
        ...

    def head_names(self) -> Sequence[str]:
        """Every skill and label set a head was pushed for, sorted."""
        ...

    def head_version(self, skill: str) -> int:
        """The highest version pushed for ``skill`` on any encoder; 0 before any."""
        ...

    def record_head(self, head: PushedHead) -> bool:
        """Claim ``head.version`` of its skill and keep the head; False when that version
        is taken already (another relay sharing the store pushed it first)."""
        ...

    def paraphrases(self, skill: str, fingerprint: str) -> Sequence[Paraphrase]:
        """The paraphrases kept for ``skill`` at ``fingerprint`` (its text and the prompt),
        in the order they were written; empty when none were."""
        ...

    def record_paraphrases(
        self, skill: str, fingerprint: str, model: str, written: Sequence[Paraphrase]
    ) -> None:
        """Keep ``written`` for ``skill`` at ``fingerprint`` (repeats are ignored)."""
        ...

    def cost_avoided_since(self, since: float, device_id: str | None = None) -> dict[str, float]:
        """Cost avoided per device by telemetry samples from ``since`` on (all runs)."""
        ...

    def close(self) -> None: ...
