"""Human-readable tables and JSON for ``cloud-relay logs`` and ``stats``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from cloud_relay.stats import DeviceStats
from cloud_relay.store import LogRow


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _short(text: str | None, width: int) -> str:
    if not text:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


LOG_HEADERS = (
    "received (UTC)",
    "device",
    "request",
    "task",
    "outcome",
    "ms",
    "tries",
    "tok in/out",
    "cost $",
    "agree",
    "answer / error",
)


def log_cells(r: LogRow) -> list[str]:
    agree = "-" if r.agreement is None else ("yes" if r.agreement else "no")
    detail = r.error if r.outcome is not None and r.error else (r.cloud_label or r.cloud_answer)
    return [
        _when(r.received_at),
        r.device_id,
        _short(r.request_id, 16),
        r.task or "-",
        r.outcome.value if r.outcome else "in-flight",
        _num(r.latency_ms, ".0f"),
        str(r.attempts),
        f"{r.tokens_in}/{r.tokens_out}",
        _num(r.cost_usd, ".6f"),
        agree,
        _short(detail, 48),
    ]


def log_json(r: LogRow) -> str:
    data: dict[str, Any] = asdict(r)
    data["outcome"] = r.outcome.value if r.outcome else None
    data["reply"] = json.loads(r.reply) if r.reply else None
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


STATS_HEADERS = (
    "device",
    "escalations",
    "errors",
    "error %",
    "p50 ms",
    "p95 ms",
    "tok in",
    "tok out",
    "cost $",
    "agree %",
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}"


def stats_cells(s: DeviceStats) -> list[str]:
    return [
        s.device_id,
        str(s.escalations),
        str(s.errors),
        _pct(s.error_rate),
        _num(s.p50_ms, ".0f"),
        _num(s.p95_ms, ".0f"),
        str(s.tokens_in),
        str(s.tokens_out),
        f"{s.cost_usd:.6f}",
        _pct(s.agreement_rate),
    ]
