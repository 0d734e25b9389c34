"""The large LLM behind an OpenAI-compatible ``/chat/completions`` API (httpx).

:class:`OpenAiChat` adds, around each call:

* timeouts: connect and read per attempt, plus an overall deadline (the
  escalation's remaining time, capped by ``total_timeout_s``) enforced while
  the body streams in, so a server that trickles bytes cannot hold us forever;
* retries on 408/429/5xx and connection errors, with jittered exponential
  backoff or the server's ``Retry-After``, never sleeping past the deadline;
* a circuit breaker (5xx, timeouts and connection errors count as failures;
  a 429 means the provider is alive and pacing us, so it does not);
* a global concurrency limit (a semaphore held only while a request is out).

Each worker thread sends through its own :class:`httpx.HTTPTransport` (one
keep-alive connection per thread) rather than through one shared
``httpx.Client``: at hundreds of escalations per second the shared pool's lock
was the relay's busiest spot, and the client layers (auth, redirects, cookies)
cost ~0.15 ms of CPU per request for features this POST never uses. httpx's
exceptions, timeouts and response decoding are unchanged. Proxies come from
the usual ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` variables, as before.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import httpx

from cloud_relay.backoff import backoff_delay, parse_retry_after
from cloud_relay.breaker import CircuitBreaker, CircuitOpen
from cloud_relay.config import LlmSettings
from edge_slm.logs import get_logger

log = get_logger("cloud_relay.llm")

_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: list[dict[str, str]]
    max_tokens: int


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    confidence: float | None
    attempts: int
    finish_reason: str | None = None


class LlmFailure(StrEnum):
    UNAVAILABLE = "unavailable"  # circuit open: not even tried
    DEADLINE = "deadline"  # the escalation's time ran out
    FAILED = "failed"  # retries exhausted or a non-retryable answer


class LlmError(Exception):
    def __init__(
        self,
        failure: LlmFailure,
        message: str,
        *,
        attempts: int,
        retry_after_s: float | None = None,
    ) -> None:
        self.failure = failure
        self.attempts = attempts
        self.retry_after_s = retry_after_s
        super().__init__(message)


class LlmClient(Protocol):
    """A provider of chat completions; ``deadline`` is a ``time.monotonic()`` instant."""

    def complete(self, request: ChatRequest, *, deadline: float) -> Completion: ...

    def close(self) -> None: ...


class _Retryable(Exception):
    def __init__(self, message: str, *, breaker_failure: bool, retry_after_s: float | None) -> None:
        self.breaker_failure = breaker_failure
        self.retry_after_s = retry_after_s
        super().__init__(message)


class _Fatal(Exception):
    pass


def _confidence(body: dict[str, Any], choice: dict[str, Any]) -> float | None:
    for holder in (body, choice):
        value = holder.get("x_confidence")
        if isinstance(value, int | float) and 0.0 <= value <= 1.0:
            return float(value)
    content = (choice.get("logprobs") or {}).get("content") or []
    logprobs = [t["logprob"] for t in content if isinstance(t.get("logprob"), int | float)]
    if not logprobs:
        return None
    # Geometric mean of the token probabilities: the per-token average certainty.
    return min(1.0, max(0.0, math.exp(sum(logprobs) / len(logprobs))))


def parse_completion(body: dict[str, Any], *, model: str, attempts: int) -> Completion:
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"] or ""
    except (KeyError, IndexError, TypeError) as exc:
        raise _Retryable(
            f"malformed completion: {exc!r}", breaker_failure=True, retry_after_s=None
        ) from exc
    usage = body.get("usage") or {}
    return Completion(
        text=str(text),
        model=str(body.get("model") or model),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        confidence=_confidence(body, choice),
        attempts=attempts,
        finish_reason=choice.get("finish_reason"),
    )


def _proxy_for(url: httpx.URL) -> str | None:
    """The proxy from the environment for ``url``, as httpx.Client(trust_env=True) finds it."""
    if urllib.request.proxy_bypass(url.host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(url.scheme) or proxies.get("all")


class OpenAiChat:
    """:class:`LlmClient` for any OpenAI-compatible server."""

    def __init__(
        self,
        settings: LlmSettings,
        *,
        model: str,
        breaker: CircuitBreaker,
        max_concurrency: int,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._s = settings
        self._model = model
        self._breaker = breaker
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._sleep = sleep
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"python-httpx/{httpx.__version__}",
        }
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._headers = httpx.Headers(headers)
        self._url = httpx.URL(settings.url.rstrip("/") + "/chat/completions")
        self._proxy = _proxy_for(self._url)
        self._local = threading.local()
        self._transports: list[httpx.HTTPTransport] = []
        self._transports_lock = threading.Lock()
        self._closed = False

    def _transport(self) -> httpx.HTTPTransport:
        """This thread's transport (created on first use)."""
        transport: httpx.HTTPTransport | None = getattr(self._local, "transport", None)
        if transport is None:
            # One connection per thread: a thread has at most one request out.
            transport = httpx.HTTPTransport(
                # Expire an idle connection before the server does: uvicorn and gunicorn
                # close idle keep-alives after 5 s, and a request written into that close
                # fails with a reset (a wasted, billed-looking attempt).
                limits=httpx.Limits(
                    max_connections=1, max_keepalive_connections=1, keepalive_expiry=4.0
                ),
                proxy=self._proxy,
            )
            with self._transports_lock:
                if self._closed:
                    transport.close()
                    raise RuntimeError("the LLM client is closed")
                self._transports.append(transport)
            self._local.transport = transport
        return transport

    def close(self) -> None:
        with self._transports_lock:
            self._closed = True
            transports, self._transports = self._transports, []
        for transport in transports:
            transport.close()

    def complete(self, request: ChatRequest, *, deadline: float) -> Completion:
        deadline = min(deadline, time.monotonic() + self._s.total_timeout_s)
        attempts = 0
        while True:
            if time.monotonic() >= deadline:
                raise LlmError(LlmFailure.DEADLINE, "deadline passed", attempts=attempts)
            try:
                self._breaker.before_call()
            except CircuitOpen as exc:
                raise LlmError(
                    LlmFailure.UNAVAILABLE,
                    str(exc),
                    attempts=attempts,
                    retry_after_s=exc.retry_after_s,
                ) from exc
            attempts += 1
            try:
                body = self._attempt(request, deadline)
                completion = parse_completion(body, model=self._model, attempts=attempts)
            except LlmError:
                self._breaker.cancel()  # never sent: a probe slot must not leak
                raise
            except _Retryable as exc:
                if exc.breaker_failure:
                    self._breaker.failure()
                else:
                    self._breaker.success()
                delay = self._next_delay(exc, attempts, deadline)
                log.warning(
                    "llm_attempt_failed", attempt=attempts, error=str(exc), retry_in_s=delay
                )
                self._sleep(delay)
                continue
            except _Fatal as exc:
                self._breaker.success()  # the server answered; the request was at fault
                raise LlmError(LlmFailure.FAILED, str(exc), attempts=attempts) from exc
            self._breaker.success()
            return completion

    def _next_delay(self, exc: _Retryable, attempts: int, deadline: float) -> float:
        if attempts >= self._s.max_attempts:
            raise LlmError(
                LlmFailure.FAILED,
                f"gave up after {attempts} attempt(s): {exc}",
                attempts=attempts,
                retry_after_s=exc.retry_after_s,
            ) from exc
        delay = exc.retry_after_s
        if delay is None:
            delay = backoff_delay(attempts, self._s.backoff_base_s, self._s.backoff_max_s)
        if time.monotonic() + delay >= deadline:
            raise LlmError(
                LlmFailure.FAILED,
                f"a retry in {delay:.2f}s would pass the deadline: {exc}",
                attempts=attempts,
                retry_after_s=delay,
            ) from exc
        return delay

    def _attempt(self, request: ChatRequest, deadline: float) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if not self._slots.acquire(timeout=max(remaining, 0.0)):
            raise LlmError(LlmFailure.DEADLINE, "no LLM slot before the deadline", attempts=0)
        try:
            return self._post(request, deadline)
        finally:
            self._slots.release()

    def _post(self, request: ChatRequest, deadline: float) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self._model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": self._s.temperature,
        }
        if self._s.request_logprobs:
            payload["logprobs"] = True
        remaining = max(deadline - time.monotonic(), 0.001)
        timeout = {
            "connect": min(self._s.connect_timeout_s, remaining),
            "read": min(self._s.read_timeout_s, remaining),
            "write": min(self._s.read_timeout_s, remaining),
            "pool": min(self._s.connect_timeout_s, remaining),
        }
        # What httpx.Client(json=...) sends: compact UTF-8 JSON, NaN refused.
        body = json.dumps(
            payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
        http_request = httpx.Request(
            "POST", self._url, headers=self._headers, content=body, extensions={"timeout": timeout}
        )
        try:
            resp = self._transport().handle_request(http_request)
            try:
                chunks = []
                for chunk in resp.iter_bytes():
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise _Retryable(
                            "deadline passed while reading the response",
                            breaker_failure=True,
                            retry_after_s=None,
                        )
                raw = b"".join(chunks)
            finally:
                resp.close()
        except httpx.TimeoutException as exc:
            raise _Retryable(
                f"timeout: {type(exc).__name__}", breaker_failure=True, retry_after_s=None
            ) from exc
        except httpx.TransportError as exc:
            raise _Retryable(
                f"connection error: {type(exc).__name__}: {exc}",
                breaker_failure=True,
                retry_after_s=None,
            ) from exc
        return self._check(resp, raw)

    @staticmethod
    def _check(resp: httpx.Response, raw: bytes) -> dict[str, Any]:
        status = resp.status_code
        if status in _RETRY_STATUS:
            raise _Retryable(
                f"HTTP {status}",
                breaker_failure=status != 429,
                retry_after_s=parse_retry_after(resp.headers.get("retry-after")),
            )
        if status >= 400:
            raise _Fatal(f"HTTP {status}: {raw[:200].decode(errors='replace')}")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise _Retryable(
                "response body is not JSON", breaker_failure=True, retry_after_s=None
            ) from exc
        if not isinstance(body, dict):
            raise _Retryable(
                "response body is not an object", breaker_failure=True, retry_after_s=None
            )
        return body
