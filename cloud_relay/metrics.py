"""Prometheus metrics of one relay process (off by default: ``metrics.port``).

Own :class:`CollectorRegistry` (nothing from the process-wide default registry,
so tests and embedders can build several), served by prometheus-client's
``start_http_server`` on a daemon thread. Counters are per process: sum them
over the relays of a fleet in PromQL. ``devices_online`` is fleet-wide (read
from the shared store), so take ``max`` of it, not ``sum``.

The endpoint has no authentication; it binds 127.0.0.1 unless told otherwise,
and a non-loopback bind is logged as a warning.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from edge_slm.logs import get_logger
from edge_slm.settings import is_loopback

if TYPE_CHECKING:
    from cloud_relay.store import Final

log = get_logger("cloud_relay.metrics")

NAMESPACE = "cloud_relay"

#: Seconds; escalations span a fast classify (~0.2 s) to a long answer with retries.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.escalations = Counter(
            "escalations",
            "Escalations finished, by outcome (`shed`: refused with busy, never logged).",
            ["outcome"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.llm_calls = Counter(
            "llm_calls",
            "LLM chat completions per escalation step, by result "
            "(ok, failed, deadline, unavailable = circuit open).",
            ["result"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.tokens = Counter(
            "tokens",
            "LLM tokens, by direction (in, out).",
            ["direction"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.cost = Counter(
            "cost_usd", "Estimated LLM cost, USD (price table).", namespace=NAMESPACE, registry=r
        )
        self.latency = Histogram(
            "escalation_latency_seconds",
            "Relay time from receipt to the final reply.",
            namespace=NAMESPACE,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.in_flight = Gauge(
            "in_flight",
            "Escalations queued or running in this relay.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.breaker_open = Gauge(
            "breaker_open",
            "1 while the LLM circuit breaker is open or half-open.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.devices_online = Gauge(
            "devices_online",
            "Devices whose retained status is online (fleet-wide, from the store).",
            namespace=NAMESPACE,
            registry=r,
        )
        self._tokens_in = self.tokens.labels("in")  # exported as 0 before the first call
        self._tokens_out = self.tokens.labels("out")
        # labels() validates and locks on every call: keep each labelled child once found.
        self._by_outcome: dict[str, Counter] = {}
        self._by_result: dict[str, Counter] = {}

    def bind(
        self,
        *,
        in_flight: Callable[[], float],
        breaker_open: Callable[[], float],
        devices_online: Callable[[], float],
    ) -> None:
        """Gauges read at scrape time (cheap callables only: no I/O on the scrape)."""
        self.in_flight.set_function(in_flight)
        self.breaker_open.set_function(breaker_open)
        self.devices_online.set_function(devices_online)

    def _escalations(self, outcome: str) -> Counter:
        child = self._by_outcome.get(outcome)
        if child is None:
            child = self._by_outcome[outcome] = self.escalations.labels(outcome)
        return child

    def escalation_final(self, final: Final) -> None:
        self._escalations(final.outcome.value).inc()
        self.latency.observe(final.latency_ms / 1000)
        self._tokens_in.inc(final.tokens_in)
        self._tokens_out.inc(final.tokens_out)
        if final.cost_usd:
            self.cost.inc(final.cost_usd)

    def escalation_shed(self) -> None:
        self._escalations("shed").inc()

    def llm_call(self, result: str, count: int = 1) -> None:
        child = self._by_result.get(result)
        if child is None:
            child = self._by_result[result] = self.llm_calls.labels(result)
        child.inc(count)


class MetricsServer:
    """``/metrics`` on a background thread; ``stop`` shuts it down."""

    def __init__(self, metrics: RelayMetrics, host: str, port: int) -> None:
        if not is_loopback(host):
            log.warning(
                "metrics_exposed_beyond_loopback",
                host=host,
                port=port,
                hint="the endpoint has no authentication; bind 127.0.0.1 and scrape "
                "through a proxy with TLS and auth",
            )
        self._server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.port = int(self._server.server_address[1])
        log.info("metrics_serving", host=host, port=self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if isinstance(self._thread, threading.Thread):
            self._thread.join(timeout=2)
