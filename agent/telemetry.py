"""Counters, latency and unit economics of one agent; published as ``Telemetry``.

Every final reply to an app passes through :meth:`TelemetryRecorder.reply`, so
the counters cannot drift from what apps saw. Counters are cumulative since
start; latency percentiles cover a bounded window of recent replies. The same
numbers feed the optional Prometheus endpoint.

Cost avoided: each edge answer priced at the configured cloud price per
token, ``prompt * in_price + completion * out_price``: what answering it in the
cloud would have cost. Cloud and fallback answers avoid nothing.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter, deque

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter

from agent.config import TelemetrySettings
from edge_slm.contract import (
    EscalationReason,
    LatencySummary,
    Response,
    Telemetry,
    TokenUsage,
)

ERROR = "error"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class TelemetryRecorder:
    """Thread-safe: replies come from the network, worker and timer threads."""

    def __init__(self, *, device_id: str, model: str, settings: TelemetrySettings) -> None:
        self._device_id = device_id
        self._model = model
        self._settings = settings
        self._lock = threading.Lock()
        self.started_at = time.time()
        self._requests: Counter[str] = Counter()
        self._reasons: Counter[str] = Counter()
        self._latency: dict[str, deque[float]] = {}
        self._decode: deque[float] = deque(maxlen=100)
        self._cloud_prompt = 0
        self._cloud_completion = 0
        self._cost_avoided = 0.0
        self.registry = reg = CollectorRegistry()
        self._m_replies = PromCounter(
            "edge_agent_replies", "Final replies to apps", ["source"], registry=reg
        )
        self._m_escalations = PromCounter(
            "edge_agent_escalations",
            "Requests sent to the cloud",
            ["reason"],
            registry=reg,
        )
        self._m_latency = Histogram(
            "edge_agent_reply_latency_seconds",
            "Receipt to reply",
            ["source"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=reg,
        )
        self._m_cost = PromCounter(
            "edge_agent_cost_avoided_usd",
            "Cloud cost avoided by edge answers",
            registry=reg,
        )
        self._m_cloud_tokens = PromCounter(
            "edge_agent_cloud_tokens",
            "Tokens the cloud spent",
            ["direction"],
            registry=reg,
        )
        self.outbox_depth = Gauge(
            "edge_agent_outbox_depth", "Escalations awaiting a reply", registry=reg
        )

    def set_model(self, name: str) -> None:
        """The model in use changed (an over-the-air update)."""
        with self._lock:
            self._model = name

    # -- recording -----------------------------------------------------------

    def reply(self, response: Response) -> None:
        """One reply to an app; corrections are not new requests and count only tokens."""
        source = response.source.value if response.ok and response.source else ERROR
        cloud_tokens = response.tokens if response.ok and source == "cloud" else None
        with self._lock:
            if cloud_tokens is not None:
                self._cloud_prompt += cloud_tokens.prompt
                self._cloud_completion += cloud_tokens.completion
            if response.supersedes:
                return
            self._requests[source] += 1
            if response.latency_ms is not None:
                window = self._latency.setdefault(source, deque(maxlen=self._settings.window))
                window.append(response.latency_ms)
            avoided = 0.0
            if source == "edge" and response.tokens is not None:
                avoided = (
                    response.tokens.prompt * self._settings.cloud_price_in_per_mtok
                    + response.tokens.completion * self._settings.cloud_price_out_per_mtok
                ) / 1_000_000
                self._cost_avoided += avoided
        self._m_replies.labels(source).inc()
        if response.latency_ms is not None:
            self._m_latency.labels(source).observe(response.latency_ms / 1000)
        if avoided:
            self._m_cost.inc(avoided)
        if cloud_tokens is not None:
            self._m_cloud_tokens.labels("prompt").inc(cloud_tokens.prompt)
            self._m_cloud_tokens.labels("completion").inc(cloud_tokens.completion)

    def escalated(self, reason: EscalationReason) -> None:
        with self._lock:
            self._reasons[reason.value] += 1
        self._m_escalations.labels(reason.value).inc()

    def decoded(self, tok_s: float | None) -> None:
        if tok_s is not None:
            with self._lock:
                self._decode.append(tok_s)

    # -- reporting -------------------------------------------------------------

    def snapshot(
        self,
        *,
        provider: str,
        outbox_depth: int,
        dropped: dict[str, int],
        conditions: list[str] | None,
    ) -> Telemetry:
        with self._lock:
            requests = dict(self._requests)
            # Shadow samples are comparisons, not escalations the app waited for.
            escalations = sum(n for r, n in self._reasons.items() if r != "shadow")
            answered = sum(n for source, n in requests.items() if source != ERROR)
            latency = {
                source: LatencySummary(
                    p50_ms=round(_percentile(list(w), 0.5), 2),
                    p95_ms=round(_percentile(list(w), 0.95), 2),
                    count=len(w),
                )
                for source, w in self._latency.items()
                if w
            }
            decode = statistics.median(self._decode) if self._decode else None
            telemetry = Telemetry(
                device_id=self._device_id,
                ts=time.time(),
                started_at=self.started_at,
                model=self._model,
                provider=provider,
                requests=requests,
                escalations=escalations,
                escalation_rate=min(1.0, escalations / answered) if answered else 0.0,
                escalation_reasons=dict(self._reasons),
                latency=latency,
                decode_tok_s=round(decode, 1) if decode is not None else None,
                outbox_depth=outbox_depth,
                outbox_dropped=dropped,
                cloud_tokens=TokenUsage(
                    prompt=self._cloud_prompt, completion=self._cloud_completion
                ),
                cost_avoided_usd=round(self._cost_avoided, 8),
                conditions=conditions or None,
            )
        self.outbox_depth.set(outbox_depth)
        return telemetry
