"""The LLM client against a real loopback HTTP server that injects faults."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest

from cloud_relay.backoff import parse_retry_after
from cloud_relay.breaker import BreakerState, CircuitBreaker
from cloud_relay.config import LlmSettings
from cloud_relay.llm import ChatRequest, LlmError, LlmFailure, OpenAiChat
from tests.relay.aio import SyncChat
from tests.relay.faultserver import FaultServer, Step

REQ = ChatRequest([{"role": "user", "content": "hi"}], max_tokens=8)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer().running() as s:
        yield s


def _client(
    server: FaultServer, breaker: CircuitBreaker | None = None, **overrides: object
) -> SyncChat:
    fields: dict[str, object] = {
        "url": server.url,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 1.0,
        "total_timeout_s": 10.0,
        "max_attempts": 3,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.2,
    }
    fields.update(overrides)
    return SyncChat(
        OpenAiChat(
            LlmSettings.model_validate(fields),
            model="fault-model",
            breaker=breaker or CircuitBreaker(5, 30.0),
            max_concurrency=2,
        )
    )


def _in(seconds: float) -> float:
    return time.monotonic() + seconds


def test_success_parses_usage_and_x_confidence(server: FaultServer) -> None:
    server.script = [Step(content="Paris", extra={"x_confidence": 0.8})]
    c = _client(server).complete(REQ, deadline=_in(5))
    assert (c.text, c.prompt_tokens, c.completion_tokens, c.attempts) == ("Paris", 11, 3, 1)
    assert c.confidence == 0.8
    assert server.requests[0]["model"] == "fault-model"
    assert server.requests[0]["max_tokens"] == 8


def test_confidence_from_logprobs(server: FaultServer) -> None:
    logprobs = {"content": [{"token": "a", "logprob": -0.1}, {"token": "b", "logprob": -0.3}]}
    server.script = [Step(content="ab", choice_extra={"logprobs": logprobs})]
    c = _client(server, request_logprobs=True).complete(REQ, deadline=_in(5))
    assert c.confidence == pytest.approx(0.8187, abs=1e-3)  # exp(mean(-0.1, -0.3))
    assert server.requests[0]["logprobs"] is True


def test_429_with_retry_after_seconds_is_honoured(server: FaultServer) -> None:
    server.script = [Step(status=429, headers={"Retry-After": "1"}), Step(content="late")]
    c = _client(server).complete(REQ, deadline=_in(5))
    assert c.text == "late"
    assert c.attempts == 2
    waited = server.times[1] - server.times[0]
    assert 0.95 <= waited < 1.6, waited


def test_retry_after_http_date() -> None:
    now = time.time()
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("soon") is None


def test_retry_after_past_the_deadline_gives_up_without_waiting(server: FaultServer) -> None:
    server.script = [Step(status=503, headers={"Retry-After": "30"})]
    started = time.monotonic()
    with pytest.raises(LlmError) as info:
        _client(server).complete(REQ, deadline=_in(2))
    assert time.monotonic() - started < 0.5
    assert info.value.failure is LlmFailure.FAILED
    assert info.value.attempts == 1
    assert info.value.retry_after_s == 30
    assert server.hits == 1


def test_500_then_success_counts_attempts(server: FaultServer) -> None:
    server.script = [Step(status=500), Step(status=502), Step(content="third time")]
    c = _client(server).complete(REQ, deadline=_in(5))
    assert c.text == "third time"
    assert c.attempts == 3
    assert server.hits == 3


def test_retries_exhausted(server: FaultServer) -> None:
    server.default = Step(status=500)
    with pytest.raises(LlmError) as info:
        _client(server, max_attempts=2).complete(REQ, deadline=_in(5))
    assert info.value.failure is LlmFailure.FAILED
    assert info.value.attempts == 2
    assert server.hits == 2


def test_400_is_not_retried(server: FaultServer) -> None:
    server.script = [Step(status=400)]
    with pytest.raises(LlmError) as info:
        _client(server).complete(REQ, deadline=_in(5))
    assert info.value.attempts == 1
    assert server.hits == 1


def test_stall_past_the_read_timeout_is_retried(server: FaultServer) -> None:
    server.script = [Step(stall_s=2.0), Step(content="fresh")]
    started = time.monotonic()
    c = _client(server, read_timeout_s=0.3).complete(REQ, deadline=_in(5))
    elapsed = time.monotonic() - started
    assert c.text == "fresh"
    assert c.attempts == 2
    assert 0.3 <= elapsed < 1.5, elapsed


def test_stall_is_cut_at_the_deadline(server: FaultServer) -> None:
    server.default = Step(stall_s=3.0)
    started = time.monotonic()
    with pytest.raises(LlmError) as info:
        _client(server, read_timeout_s=30.0).complete(REQ, deadline=_in(0.5))
    elapsed = time.monotonic() - started
    assert elapsed < 1.2, elapsed
    assert info.value.failure in (LlmFailure.DEADLINE, LlmFailure.FAILED)


def test_disconnect_mid_body_is_retried(server: FaultServer) -> None:
    server.script = [Step(cut_body=True), Step(content="whole")]
    c = _client(server).complete(REQ, deadline=_in(5))
    assert c.text == "whole"
    assert c.attempts == 2


def test_breaker_opens_after_n_failures_and_short_circuits(server: FaultServer) -> None:
    server.default = Step(status=500)
    breaker = CircuitBreaker(failure_threshold=3, open_s=0.5)
    client = _client(server, breaker, max_attempts=1)
    for _ in range(3):
        with pytest.raises(LlmError):
            client.complete(REQ, deadline=_in(5))
    assert breaker.state is BreakerState.OPEN
    assert server.hits == 3
    with pytest.raises(LlmError) as info:
        client.complete(REQ, deadline=_in(5))
    assert info.value.failure is LlmFailure.UNAVAILABLE
    assert info.value.attempts == 0
    assert server.hits == 3  # short-circuited: no HTTP call
    # After the cool-down one probe goes out; its success closes the circuit.
    time.sleep(0.55)
    server.default = Step(content="back")
    assert breaker.state is BreakerState.HALF_OPEN
    assert client.complete(REQ, deadline=_in(5)).text == "back"
    assert breaker.state is BreakerState.CLOSED
    assert server.hits == 4


def test_failed_probe_reopens(server: FaultServer) -> None:
    server.default = Step(status=503)
    breaker = CircuitBreaker(failure_threshold=1, open_s=0.2)
    client = _client(server, breaker, max_attempts=1)
    with pytest.raises(LlmError):
        client.complete(REQ, deadline=_in(5))
    time.sleep(0.25)
    with pytest.raises(LlmError) as info:
        client.complete(REQ, deadline=_in(5))
    assert info.value.failure is LlmFailure.FAILED  # the probe went out and failed
    assert breaker.state is BreakerState.OPEN
    assert server.hits == 2


def test_429_does_not_open_the_breaker(server: FaultServer) -> None:
    server.default = Step(status=429, headers={"Retry-After": "0"})
    breaker = CircuitBreaker(failure_threshold=2, open_s=30)
    with pytest.raises(LlmError):
        _client(server, breaker, max_attempts=3).complete(REQ, deadline=_in(5))
    assert breaker.state is BreakerState.CLOSED


def test_connection_refused_is_a_failure() -> None:
    dead = FaultServer()  # bound but never serving: take its port, then close it
    url = dead.url
    dead._httpd.server_close()
    client = SyncChat(
        OpenAiChat(
            LlmSettings(url=url, max_attempts=2, backoff_base_s=0.01, connect_timeout_s=0.5),
            model="m",
            breaker=CircuitBreaker(5, 30),
            max_concurrency=1,
        )
    )
    with pytest.raises(LlmError) as info:
        client.complete(REQ, deadline=_in(3))
    assert info.value.attempts == 2
