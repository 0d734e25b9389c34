"""The large LLM behind an OpenAI-compatible ``/chat/completions`` API (asyncio).

:class:`OpenAiChat` adds, around each call:

* timeouts: connect and read per attempt, plus an overall deadline (the
  escalation's remaining time, capped by ``total_timeout_s``) enforced while
  the body streams in, so a server that trickles bytes cannot hold us forever;
* retries on 408/429/5xx and connection errors, with jittered exponential
  backoff or the server's ``Retry-After``, never sleeping past the deadline;
* a circuit breaker (5xx, timeouts and connection errors count as failures;
  a 429 means the provider is alive and pacing us, so it does not);
* a global concurrency limit (a semaphore held only while a request is out).

Calls are coroutines on the relay's event loop. HTTP goes through
:mod:`cloud_relay.http11` (h11 over asyncio streams, one keep-alive pool):
``httpx.AsyncClient`` cost 0.6-1.1 ms of CPU per request against an instant
server, more than the relay's whole budget per escalation. The TLS context is
still httpx's, and proxies still come from the usual
``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` variables.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import httpx

from cloud_relay.backoff import parse_retry_after
from cloud_relay.breaker import CircuitBreaker, CircuitOpen
from cloud_relay.config import LlmSettings
from cloud_relay.http11 import HttpClient, HttpError, Timeouts, proxy_for
from edge_slm.backoff import backoff_delay
from edge_slm.logs import get_logger

log = get_logger("cloud_relay.llm")

_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: list[dict[str, str]]
    max_tokens: int
    #: Extra request fields: ``response_format`` (structured outputs), ``tools`` and
    #: ``tool_choice`` (extract with a schema, act).
    extra: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    confidence: float | None
    attempts: int
    finish_reason: str | None = None
    #: The message's tool calls as (name, arguments JSON text), in order.
    tool_calls: tuple[tuple[str, str], ...] = ()


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

    async def complete(self, request: ChatRequest, *, deadline: float) -> Completion: ...

    async def aclose(self) -> None: ...


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
        text = choice["message"].get("content") or ""
        calls = tuple(
            (str(c["function"]["name"]), str(c["function"].get("arguments") or "{}"))
            for c in choice["message"].get("tool_calls") or []
        )
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
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
        tool_calls=calls,
    )


class OpenAiChat:
    """:class:`LlmClient` for any OpenAI-compatible server (coroutines on one event loop)."""

    def __init__(
        self,
        settings: LlmSettings,
        *,
        model: str,
        breaker: CircuitBreaker,
        max_concurrency: int,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._s = settings
        self._model = model
        self._breaker = breaker
        # Not bound to a loop until first contended (Python >= 3.10).
        self._slots = asyncio.BoundedSemaphore(max_concurrency)
        self._sleep = sleep
        headers = [
            ("Accept", "application/json"),
            ("Content-Type", "application/json"),
            ("User-Agent", f"python-httpx/{httpx.__version__}"),  # what the server saw before
        ]
        if settings.api_key is not None:
            headers.append(("Authorization", f"Bearer {settings.api_key.get_secret_value()}"))
        url = settings.url.rstrip("/") + "/chat/completions"
        self._http = HttpClient(url, headers=headers, proxy=proxy_for(url))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def complete(self, request: ChatRequest, *, deadline: float) -> Completion:
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
                body = await self._attempt(request, deadline)
                completion = parse_completion(body, model=self._model, attempts=attempts)
            except (LlmError, asyncio.CancelledError):
                self._breaker.cancel()  # never sent or never judged: a probe slot must not leak
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
                await self._sleep(delay)
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

    async def _attempt(self, request: ChatRequest, deadline: float) -> dict[str, Any]:
        if self._slots.locked():  # wait for a slot, but not past the deadline
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    await self._slots.acquire()
            except TimeoutError:
                raise LlmError(
                    LlmFailure.DEADLINE, "no LLM slot before the deadline", attempts=0
                ) from None
        else:
            await self._slots.acquire()
        try:
            return await self._post(request, deadline)
        finally:
            self._slots.release()

    async def _post(self, request: ChatRequest, deadline: float) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self._model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": self._s.temperature,
        }
        if self._s.request_logprobs:
            payload["logprobs"] = True
        payload.update(request.extra or {})
        remaining = max(deadline - time.monotonic(), 0.001)
        timeouts = Timeouts(
            connect=min(self._s.connect_timeout_s, remaining),
            write=min(self._s.read_timeout_s, remaining),
            read=min(self._s.read_timeout_s, remaining),
        )
        # What httpx.Client(json=...) sends: compact UTF-8 JSON, NaN refused.
        body = json.dumps(
            payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
        try:
            resp = await self._http.post(body, timeouts=timeouts, deadline=deadline)
        except HttpError as exc:
            what = f"timeout: {exc.kind}" if exc.timeout else f"connection error: {exc.kind}: {exc}"
            raise _Retryable(what, breaker_failure=True, retry_after_s=None) from exc
        return self._check(resp.status, resp.headers, resp.body)

    @staticmethod
    def _check(status: int, headers: Mapping[str, str], raw: bytes) -> dict[str, Any]:
        if status in _RETRY_STATUS:
            raise _Retryable(
                f"HTTP {status}",
                breaker_failure=status != 429,
                retry_after_s=parse_retry_after(headers.get("retry-after")),
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
