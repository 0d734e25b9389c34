"""What the dashboard's JSON API returns: log pages, the device list, summaries, chart series.

Charts are bucketed in Python from light rows (:meth:`RelayStore.log_points`) and the
telemetry history: percentiles and per-run counter deltas are not portable SQL, and a
dashboard window holds thousands of rows, not millions.

Telemetry counters are cumulative per run (device, ``started_at``). What a sample
adds is its counters minus the run's previous sample's. The first sample of a run
that started inside the window counts from zero; for a run that started before
the window, the first sample in the window is only a baseline (what the run did
before it, but inside the window, is not charted; the summary's cost avoided
comes from :meth:`RelayStore.cost_avoided_since` and is exact).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cloud_relay.render import case_fields, device_dict
from cloud_relay.stats import percentile
from cloud_relay.store import LogPoint, LogQuery, LogRow, RelayStore, TelemetrySample
from edge_slm.contract import Outcome

#: Chart bucket widths (seconds) to choose from: the smallest giving <= MAX_BUCKETS.
BUCKET_SIZES = (
    10,
    30,
    60,
    300,
    900,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    7 * 86400,
)
MAX_BUCKETS = 90
#: Window charted when the request gives no start and the store has no rows in it.
DEFAULT_SPAN_S = 3600.0


@dataclass(frozen=True, slots=True)
class LogFilters:
    """The table's filters (each a :class:`LogQuery` field of the same name); the same
    ones narrow the charts and the summary."""

    device_id: str | None = None
    outcome: Outcome | None = None
    since: float | None = None
    until: float | None = None
    search: str | None = None

    def query(self, *, limit: int | None, offset: int = 0) -> LogQuery:
        return LogQuery(**asdict(self), limit=limit, offset=offset)


def row_dict(r: LogRow) -> dict[str, Any]:
    """One log row for the table. Left out: the stored reply JSON (it repeats the rest), and
    the request's tools and schema (large, and the table shows the answers only). An act
    row's calls are ``{"name", "arguments"}``, an extract row's data objects; null otherwise."""
    return {
        **case_fields(r),
        "relay_id": r.relay_id,
        "answered_at": r.answered_at,
        "latency_ms": r.latency_ms,
        "attempts": r.attempts,
        "llm_model": r.llm_model,
        "tokens_in": r.tokens_in,
        "tokens_out": r.tokens_out,
        "cost_usd": r.cost_usd,
        "edge_answer": r.edge_answer,
        "edge_label": r.edge_label,
        "edge_tool_call": r.edge_tool_call,
        "edge_data": r.edge_data,
        "edge_confidence": r.edge_confidence,
        "cloud_answer": r.cloud_answer,
        "cloud_label": r.cloud_label,
        "cloud_tool_call": r.cloud_tool_call,
        "cloud_data": r.cloud_data,
        "cloud_confidence": r.cloud_confidence,
        "agreement": r.agreement,
        "error": r.error,
        "redactions": r.redactions,
    }


def log_page(
    store: RelayStore, filters: LogFilters, *, page: int, page_size: int
) -> dict[str, Any]:
    """Page ``page`` (1-based, newest first) of the rows matching ``filters``."""
    total = store.count_logs(filters.query(limit=None))
    rows = store.logs(filters.query(limit=page_size, offset=(page - 1) * page_size))
    return {
        "total": total,
        "page": page,
        "page_size": page_size,
        "pages": max(1, math.ceil(total / page_size)),
        "rows": [row_dict(r) for r in rows],
    }


def device_list(store: RelayStore, *, now: float, stale_after_s: float) -> list[dict[str, Any]]:
    return [device_dict(d, now=now, stale_after_s=stale_after_s) for d in store.devices()]


def _final(points: Sequence[LogPoint]) -> list[LogPoint]:
    return [p for p in points if p.outcome is not None]


def summary(store: RelayStore, filters: LogFilters) -> dict[str, Any]:
    """Headline figures for the filtered window (device, outcome and time range)."""
    points = [
        p
        for p in store.log_points(filters.device_id, filters.since, filters.until)
        if filters.outcome is None or p.outcome is filters.outcome
    ]
    final = _final(points)
    latencies = [p.latency_ms for p in final if p.latency_ms is not None]
    verdicts = [p.agreement for p in final if p.agreement is not None]
    errors = sum(1 for p in final if p.outcome is not Outcome.OK)
    if filters.since is None:
        devices = store.devices(filters.device_id)
        avoided: float | None = (
            sum(d.totals.cost_avoided_usd for d in devices if d.telemetry is not None)
            if any(d.telemetry is not None for d in devices)
            else None
        )
    else:
        by_device = store.cost_avoided_since(filters.since, filters.device_id)
        avoided = sum(by_device.values()) if by_device else None
    return {
        "escalations": len(points),
        "in_flight": len(points) - len(final),
        "errors": errors,
        "error_rate": errors / len(final) if final else None,
        "p50_ms": percentile(latencies, 0.50),
        "p95_ms": percentile(latencies, 0.95),
        "cost_usd": sum(p.cost_usd or 0.0 for p in points),
        "cost_avoided_usd": avoided,
        "agreement_rate": sum(verdicts) / len(verdicts) if verdicts else None,
        "devices": len(store.devices()),
        "online": store.count_online(),
    }


def bucket_size(span_s: float) -> int:
    for size in BUCKET_SIZES:
        if span_s / size <= MAX_BUCKETS:
            return size
    return BUCKET_SIZES[-1]


@dataclass(slots=True)
class _Bucket:
    escalations: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    cost_usd: float = 0.0
    agree: int = 0
    verdicts: int = 0
    edge: int = 0  # telemetry: answers from the edge added
    escalated: int = 0  # telemetry: escalations added
    cost_avoided_usd: float = 0.0
    edge_p50: list[float] = field(default_factory=list)


def _telemetry_deltas(
    samples: Sequence[TelemetrySample], window_start: float
) -> list[tuple[TelemetrySample, int, int, float]]:
    """(sample, edge answers added, escalations added, cost avoided added) per sample."""
    runs: dict[tuple[str, float], list[TelemetrySample]] = defaultdict(list)
    for s in samples:
        runs[(s.device_id, s.started_at)].append(s)
    out: list[tuple[TelemetrySample, int, int, float]] = []
    for (_, started_at), run in runs.items():
        run.sort(key=lambda s: s.ts)
        prev: TelemetrySample | None = None
        for s in run:
            if prev is None and started_at < window_start:
                prev = s  # a baseline only: the run's earlier work is outside what we have
                continue
            base_edge = prev.count("edge") if prev else 0
            base_esc = prev.escalations if prev else 0
            base_cost = prev.cost_avoided_usd if prev else 0.0
            out.append(
                (
                    s,
                    max(s.count("edge") - base_edge, 0),
                    max(s.escalations - base_esc, 0),
                    max(s.cost_avoided_usd - base_cost, 0.0),
                )
            )
            prev = s
    return out


def series(store: RelayStore, filters: LogFilters, *, now: float) -> dict[str, Any]:
    """Per-bucket chart data for the window (the outcome and search filters do not apply).

    The buckets run from the window's first row or sample (or its start, when empty)
    to its end (or now). Escalation rate and edge latency come from telemetry; cloud
    latency, cost and agreement from the log; cost and cost avoided are cumulative.

    Escalation rate per bucket: escalations / (edge answers + escalations). Both are
    counted when they happen (an escalation when it is sent), so a bucket never waits
    for the cloud's answers; ``Totals.escalation_rate`` (escalations / answers) can
    only be read over a long span, as answers to escalations land later.
    """
    until = filters.until if filters.until is not None else now
    points = store.log_points(filters.device_id, filters.since, filters.until)
    samples = [
        s
        for s in store.telemetry_history(filters.device_id, filters.since)
        if filters.until is None or s.ts < filters.until
    ]
    # The charts start at the window's first data, so a young store (a demo, a new
    # fleet) is not one dot at the right edge of a 24-hour axis.
    firsts = [p.received_at for p in points[:1]] + [s.ts for s in samples[:1]]
    if firsts:
        since = min(firsts)
    else:
        since = filters.since if filters.since is not None else until - DEFAULT_SPAN_S
    span = max(until - since, 1.0)
    size = bucket_size(span)
    start = math.floor(since / size) * size
    count = max(1, math.ceil((until - start) / size))
    buckets = [_Bucket() for _ in range(count)]

    def at(ts: float) -> _Bucket | None:
        index = int((ts - start) // size)
        return buckets[index] if 0 <= index < count else None

    for p in points:
        b = at(p.received_at)
        if b is None:
            continue
        b.escalations += 1
        b.cost_usd += p.cost_usd or 0.0
        if p.outcome is not None and p.outcome is not Outcome.OK:
            b.errors += 1
        if p.outcome is not None and p.latency_ms is not None:
            b.latencies.append(p.latency_ms)
        if p.agreement is not None:
            b.verdicts += 1
            b.agree += int(p.agreement)
    # Without a start the whole history is here: every run counts from zero.
    history_from = filters.since if filters.since is not None else -math.inf
    for s, edge, escalated, avoided in _telemetry_deltas(samples, history_from):
        b = at(s.ts)
        if b is None:
            continue
        b.edge += edge
        b.escalated += escalated
        b.cost_avoided_usd += avoided
        edge_latency = s.latency_ms.get("edge")
        if edge_latency is not None and edge_latency[0] is not None:
            b.edge_p50.append(edge_latency[0])

    cost = avoided_total = 0.0
    cum_cost: list[float] = []
    cum_avoided: list[float] = []
    for b in buckets:
        cost += b.cost_usd
        avoided_total += b.cost_avoided_usd
        cum_cost.append(cost)
        cum_avoided.append(avoided_total)
    return {
        "bucket_s": size,
        "t": [start + i * size for i in range(count)],
        "escalations": [b.escalations for b in buckets],
        "errors": [b.errors for b in buckets],
        "escalation_rate": [
            b.escalated / (b.edge + b.escalated) if b.edge + b.escalated else None for b in buckets
        ],
        "cloud_p50_ms": [percentile(b.latencies, 0.5) for b in buckets],
        "cloud_p95_ms": [percentile(b.latencies, 0.95) for b in buckets],
        "edge_p50_ms": [sum(b.edge_p50) / len(b.edge_p50) if b.edge_p50 else None for b in buckets],
        "cost_usd": cum_cost,
        "cost_avoided_usd": cum_avoided,
        "agreement_rate": [b.agree / b.verdicts if b.verdicts else None for b in buckets],
    }
