"""Human-readable tables and JSON for ``cloud-relay logs``, ``stats``, ``devices``, ``export``."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from cloud_relay.stats import DeviceStats
from cloud_relay.store import DeviceRow, LogRow
from edge_slm.console import shorten
from edge_slm.contract.skills import is_label_set
from edge_slm.rounding import usd


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _short(text: str | None, width: int) -> str:
    return shorten(text, width) if text else "-"


def _usd(value: float | None) -> float | None:
    return None if value is None else usd(value)


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
    data["cost_usd"] = _usd(r.cost_usd)
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


STATS_HEADERS = (
    "device",
    "escalations",
    "relay errors",
    "relay error %",
    "p50 ms",
    "p95 ms",
    "tok in",
    "tok out",
    "cost $",
    "cost avoided $",
    "agree %",
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}"


def stats_cells(s: DeviceStats) -> list[str]:
    return [
        s.device_id,
        str(s.escalations),
        str(s.relay_errors),
        _pct(s.relay_error_rate),
        _num(s.p50_ms, ".0f"),
        _num(s.p95_ms, ".0f"),
        str(s.tokens_in),
        str(s.tokens_out),
        f"{s.cost_usd:.6f}",
        _num(s.cost_avoided_usd, ".6f"),
        _pct(s.agreement_rate),
    ]


def stats_dict(s: DeviceStats) -> dict[str, Any]:
    data = s.as_dict()
    data["cost_usd"] = usd(s.cost_usd)
    data["cost_avoided_usd"] = _usd(s.cost_avoided_usd)
    return data


def device_state(d: DeviceRow, *, now: float, stale_after_s: float) -> str:
    """online | offline | stale (online, but silent for longer than ``stale_after_s``)."""
    if d.state is None:
        return "unknown"  # telemetry only: no retained status seen yet
    if d.state == "online" and (d.last_seen is None or now - d.last_seen > stale_after_s):
        return "stale"
    return d.state


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    age = max(now - ts, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{age / size:.0f}{unit} ago"
    return f"{age:.0f}s ago"


DEVICE_HEADERS = (
    "device",
    "status",
    "last seen",
    "model",
    "provider",
    "heads",
    "encoder",
    "conditions",
    "edge",
    "cloud",
    "fallback",
    "device errors",
    "esc %",
    "cost avoided $",
)


def heads_text(heads: dict[str, int] | None) -> str:
    """``home_intents@3`` per skill (0: the head the device fitted from the skill's text),
    then how many learned label sets it keeps (``+2 label sets``; ``--json`` lists them)."""
    if not heads:
        return "-"
    parts = [f"{n}@{v}" for n, v in sorted(heads.items()) if not is_label_set(n)]
    sets = sum(is_label_set(n) for n in heads)
    if sets:
        parts.append(f"+{sets} label set{'s' if sets > 1 else ''}")
    return ",".join(parts)


def device_cells(d: DeviceRow, *, now: float, stale_after_s: float) -> list[str]:
    t = d.totals
    # Counters come with telemetry: before the first one they are unknown, not zero.
    known = d.telemetry is not None
    counters = (
        [str(t.edge), str(t.cloud), str(t.edge_fallback), str(t.error)] if known else ["-"] * 4
    )
    return [
        d.device_id,
        device_state(d, now=now, stale_after_s=stale_after_s),
        _ago(d.last_seen, now),
        f"{d.model}@{d.model_version}" if d.model and d.model_version else d.model or "-",
        d.provider or "-",
        heads_text(d.heads),
        d.embedder or "-",
        ",".join(d.conditions) or "-",
        *counters,
        _pct(t.escalation_rate if known else None),
        f"{t.cost_avoided_usd:.6f}" if known else "-",
    ]


def device_dict(d: DeviceRow, *, now: float, stale_after_s: float) -> dict[str, Any]:
    """``requests``, ``escalations``, the rate and the cost avoided are null before the
    device's first telemetry (unknown, not zero)."""
    t = d.totals
    known = d.telemetry is not None
    return {
        "device_id": d.device_id,
        "status": device_state(d, now=now, stale_after_s=stale_after_s),
        "state": d.state,
        "last_seen": d.last_seen,
        "model": d.model,
        "model_version": d.model_version,
        "provider": d.provider,
        "heads": d.heads,
        "embedder": d.embedder,
        "version": d.version,
        "conditions": d.conditions,
        "requests": {
            "edge": t.edge,
            "cloud": t.cloud,
            "edge-fallback": t.edge_fallback,
            "error": t.error,
        }
        if known
        else None,
        "escalations": t.escalations if known else None,
        "escalation_rate": t.escalation_rate if known else None,
        "cost_avoided_usd": usd(t.cost_avoided_usd) if known else None,
        "started_at": d.started_at,
        "runs": d.runs,
        "telemetry": d.telemetry,
    }


def case_fields(r: LogRow) -> dict[str, Any]:
    """What the export and the dashboard's rows both show of an escalation: who sent which
    case, and how it ended."""
    return {
        "device_id": r.device_id,
        "request_id": r.request_id,
        "received_at": r.received_at,
        "kind": r.kind,
        "task": r.task,
        "text": r.text,
        "reason": r.reason,
        "outcome": r.outcome.value if r.outcome else None,
    }


def export_record(r: LogRow) -> dict[str, Any]:
    """One escalation as a distillation example: the case, both answers, the verdict.

    Every record has the same keys; those of another task are null. An ``act`` record has
    ``tools`` (the request's, OpenAI's format) and ``cloud.tool_call`` / ``edge.tool_call``
    (``{"name", "arguments"}``); an ``extract`` record has ``schema`` and ``cloud.data`` /
    ``edge.data`` (objects). ``answer`` keeps the same as compact JSON text. The case
    (``text``, ``labels``, ``sensor``, ``tools``, ``schema``) is null when the relay ran with
    ``store_prompts`` off; the structured fields are null for rows logged before store
    migration 6, and an answer's when that side gave none (an edge that found no tool, a
    failed escalation).
    """
    return {
        **case_fields(r),
        "labels": r.labels,
        "sensor": r.sensor,
        "tools": r.tools,
        "schema": r.json_schema,
        "cloud": {
            "answer": r.cloud_answer,
            "label": r.cloud_label,
            "tool_call": r.cloud_tool_call,
            "data": r.cloud_data,
            "confidence": r.cloud_confidence,
            "model": r.llm_model,
        },
        "edge": {
            "answer": r.edge_answer,
            "label": r.edge_label,
            "tool_call": r.edge_tool_call,
            "data": r.edge_data,
            "confidence": r.edge_confidence,
            "model": r.edge_model,
        },
        "agreement": r.agreement,
    }
