"""Per-device and fleet-wide figures from relay log rows.

* relay errors and their rate: final rows whose outcome is not ``ok`` (the relay
  could not answer), over all final rows; a device's own error replies are in its
  telemetry (``cloud-relay devices``), not here;
* latency p50/p95: of final rows, linear interpolation between closest ranks;
* agreement rate: rows with an agreement verdict that agree (rows without an
  edge answer or without a cloud answer have no verdict and are left out);
* cost avoided: from the devices' telemetry, not the log: what the edge answers
  would have cost in the cloud. Without ``--since``, the device's total over
  every run the relay has seen (counters are cumulative since ``started_at``;
  on a restart the previous run's last totals are carried over); with it, what
  the samples inside the window added. None for a device that sent no telemetry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cloud_relay.store import LogRow
from edge_slm.contract import Outcome

FLEET = "*fleet*"


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True, slots=True)
class DeviceStats:
    device_id: str
    escalations: int
    in_flight: int
    relay_errors: int  # final rows whose outcome is not ok (not the device's own errors)
    relay_error_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    tokens_in: int
    tokens_out: int
    cost_usd: float
    agreement_rate: float | None
    outcomes: dict[str, int]
    cost_avoided_usd: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summarize(
    device_id: str, rows: Sequence[LogRow], cost_avoided_usd: float | None = None
) -> DeviceStats:
    final = [r for r in rows if r.outcome is not None]
    errors = sum(1 for r in final if r.outcome is not Outcome.OK)
    latencies = [r.latency_ms for r in final if r.latency_ms is not None]
    verdicts = [r.agreement for r in final if r.agreement is not None]
    outcomes: dict[str, int] = defaultdict(int)
    for r in final:
        outcomes[r.outcome.value if r.outcome else "in_flight"] += 1
    return DeviceStats(
        device_id=device_id,
        escalations=len(rows),
        in_flight=len(rows) - len(final),
        relay_errors=errors,
        relay_error_rate=errors / len(final) if final else None,
        p50_ms=percentile(latencies, 0.50),
        p95_ms=percentile(latencies, 0.95),
        tokens_in=sum(r.tokens_in for r in rows),
        tokens_out=sum(r.tokens_out for r in rows),
        cost_usd=sum(r.cost_usd or 0.0 for r in rows),
        agreement_rate=sum(verdicts) / len(verdicts) if verdicts else None,
        outcomes=dict(sorted(outcomes.items())),
        cost_avoided_usd=cost_avoided_usd,
    )


def compute(
    rows: Iterable[LogRow], cost_avoided: Mapping[str, float] | None = None
) -> list[DeviceStats]:
    """One entry per device (sorted by id), then the fleet-wide entry.

    ``cost_avoided`` (device -> USD, from telemetry) adds its devices even when they
    have no escalations: a device that never needs the cloud saves the most.
    """
    avoided = dict(cost_avoided or {})
    by_device: dict[str, list[LogRow]] = defaultdict(list)
    everything: list[LogRow] = []
    for row in rows:
        by_device[row.device_id].append(row)
        everything.append(row)
    devices = sorted(set(by_device) | set(avoided))
    result = [_summarize(d, by_device.get(d, []), avoided.get(d)) for d in devices]
    fleet_avoided = sum(avoided.values()) if avoided else None
    result.append(_summarize(FLEET, everything, fleet_avoided))
    return result
