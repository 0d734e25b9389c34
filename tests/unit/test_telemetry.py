import pytest
from prometheus_client import generate_latest

from agent.config import TelemetrySettings
from agent.telemetry import TelemetryRecorder
from edge_slm.contract import EscalationReason, Response, Source, TokenUsage


def _reply(source: Source | None, latency: float, prompt: int = 0, completion: int = 0, **kw):  # type: ignore[no-untyped-def]
    if source is None:
        return Response.failure("x", "busy", "full")  # type: ignore[arg-type]
    return Response(
        id="x",
        ok=True,
        answer="a",
        source=source,
        latency_ms=latency,
        tokens=TokenUsage(prompt=prompt, completion=completion),
        **kw,
    )


def test_counts_latency_escalations_and_cost_avoided() -> None:
    rec = TelemetryRecorder(
        device_id="d1",
        model="m",
        settings=TelemetrySettings(cloud_price_in_per_mtok=1.0, cloud_price_out_per_mtok=2.0),
    )
    for latency in (100, 200, 300, 400):
        rec.reply(_reply(Source.EDGE, latency, prompt=1000, completion=500))
    rec.reply(_reply(Source.CLOUD, 900, prompt=50, completion=10))
    rec.reply(_reply(Source.EDGE_FALLBACK, 1500, prompt=40, completion=5))
    rec.reply(_reply(Source.CLOUD, 2500, prompt=60, completion=20, supersedes=True))
    rec.reply(_reply(None, 1))
    rec.escalated(EscalationReason.LOW_CONFIDENCE)
    rec.escalated(EscalationReason.CLOUD_ALWAYS)
    rec.decoded(100.0)
    rec.decoded(150.0)
    t = rec.snapshot(provider="cpu", outbox_depth=3, dropped={"full": 1}, conditions=[])
    assert t.requests == {"edge": 4, "cloud": 1, "edge-fallback": 1, "error": 1}
    assert t.escalations == 2
    assert t.escalation_rate == pytest.approx(2 / 6)
    assert t.escalation_reasons == {"low_confidence": 1, "cloud_always": 1}
    assert t.latency["edge"].count == 4
    assert t.latency["edge"].p50_ms in (200, 300)
    assert t.latency["edge"].p95_ms == 400
    assert t.decode_tok_s == 125.0
    # Only edge answers avoid cost: 4 x (1000 x $1 + 500 x $2) per 1M tokens.
    assert t.cost_avoided_usd == pytest.approx(4 * 2000 / 1_000_000)
    # Cloud tokens include the correction's; the correction is no new request.
    assert (t.cloud_tokens.prompt, t.cloud_tokens.completion) == (110, 30)
    assert t.outbox_depth == 3
    assert t.conditions is None
    scraped = generate_latest(rec.registry).decode()
    assert 'edge_agent_replies_total{source="edge"} 4.0' in scraped
    assert 'edge_agent_escalations_total{reason="low_confidence"} 1.0' in scraped
    assert "edge_agent_outbox_depth 3.0" in scraped


def test_empty_snapshot_is_valid() -> None:
    rec = TelemetryRecorder(device_id="d1", model="m", settings=TelemetrySettings())
    t = rec.snapshot(provider="cpu", outbox_depth=0, dropped={}, conditions=None)
    assert t.requests == {}
    assert t.escalation_rate == 0.0
    assert t.latency == {}
    assert t.decode_tok_s is None
    assert t.to_wire()
