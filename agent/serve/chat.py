"""Serving one chat completion request: a ticket's events to a reply or an SSE stream."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from agent.engine.engine import Cancelled, EngineError, Prefilled, PromptTooLong, StreamEvent
from agent.serve.completion import Collector, Released, token_logprob
from agent.serve.errors import ApiError, bad_request, internal
from agent.serve.runner import Ticket
from agent.serve.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    Usage,
)
from agent.serve.sse import DONE, sse_data
from edge_slm.logs import get_logger
from edge_slm.rounding import confidence as round_confidence

log = get_logger("agent.serve")


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def engine_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, PromptTooLong):
        return bad_request(str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, Cancelled):
        return ApiError(499, "the request was cancelled", type_="cancelled", code="cancelled")
    if isinstance(exc, EngineError):
        return internal(str(exc))
    log.error("generation_failed", exc_info=exc)
    return internal()


class ChatSession:
    def __init__(
        self, request: ChatCompletionRequest, ticket: Ticket, *, model: str, completion_id: str
    ) -> None:
        self.request = request
        self.ticket = ticket
        self.model = model
        self.id = completion_id
        self.created = int(time.time())
        self.collector = Collector(request.stop_sequences())
        self.first_token_at: float | None = None
        self.status = 200

    async def _next(self) -> StreamEvent:
        try:
            event = await self.ticket.next()
        except Exception as exc:
            error = engine_error(exc)
            self.status = error.status
            raise error from exc
        if self.first_token_at is None and not isinstance(event, Prefilled):
            self.first_token_at = time.monotonic()
        return event

    async def prime(self) -> None:
        """Wait for the prefill, so a prompt that does not fit is a 400, not a broken stream."""
        self.collector.feed(await self._next())

    def _logprobs(self, released: Released) -> ChoiceLogprobs | None:
        if not self.request.logprobs:
            return None
        return ChoiceLogprobs(content=[token_logprob(t) for t in released.tokens])

    async def collect(self) -> dict[str, Any]:
        """The whole reply, for ``stream: false``."""
        text: list[str] = []
        tokens = []
        try:
            while not self.collector.done:
                released = self.collector.feed(await self._next())
                text.append(released.text)
                tokens.extend(released.tokens)
        finally:
            self.ticket.cancel.set()  # a stop sequence ended it early: stop decoding
            self.log()
        c = self.collector
        reply = ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[
                Choice(
                    message=AssistantMessage(content="".join(text)),
                    logprobs=self._logprobs(Released("", tokens)),
                    finish_reason=c.finish_reason or "stop",
                )
            ],
            usage=Usage.of(c.prompt_tokens, c.completion_tokens),
            x_confidence=c.confidence,
        )
        return reply.model_dump(mode="json")

    def _chunk(self, choice: ChunkChoice | None, **extra: Any) -> bytes:
        chunk = ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[] if choice is None else [choice],
            **extra,
        )
        data = chunk.model_dump(mode="json")
        if data["x_confidence"] is None:
            del data["x_confidence"]
        if not self.request.include_usage():
            del data["usage"]  # OpenAI sends the field only when usage was asked for
        for c in data["choices"]:
            c["delta"] = {k: v for k, v in c["delta"].items() if v is not None}
        return sse_data(data)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The reply as SSE, for ``stream: true``; call :meth:`prime` first."""
        c = self.collector
        try:
            yield self._chunk(ChunkChoice(delta=Delta(role="assistant", content="")))
            while not c.done:
                try:
                    released = c.feed(await self._next())
                except ApiError as exc:  # headers are sent: report it in-band, as OpenAI does
                    yield sse_data(exc.body().model_dump(mode="json"))
                    return
                if released.text or (released.tokens and self.request.logprobs):
                    delta = Delta(content=released.text)
                    yield self._chunk(ChunkChoice(delta=delta, logprobs=self._logprobs(released)))
            last = ChunkChoice(delta=Delta(), finish_reason=c.finish_reason)
            yield self._chunk(last, x_confidence=c.confidence)
            if self.request.include_usage():
                yield self._chunk(None, usage=Usage.of(c.prompt_tokens, c.completion_tokens))
            yield DONE
        finally:
            self.ticket.cancel.set()
            self.log()

    def log(self) -> None:
        c = self.collector
        if not c.done and self.status == 200:
            self.status = 499  # the client left before the end (nginx's code for it)
        now = time.monotonic()
        started = self.ticket.started or now
        decode_s = now - self.first_token_at if self.first_token_at else 0.0
        log.info(
            "chat_completion",
            id=self.id,
            status=self.status,
            stream=self.request.stream,
            finish_reason=c.finish_reason,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            queue_ms=round((started - self.ticket.submitted) * 1000, 1),
            ttft_ms=round((self.first_token_at - started) * 1000, 1)
            if self.first_token_at
            else None,
            total_ms=round((now - self.ticket.submitted) * 1000, 1),
            tokens_per_s=round((c.completion_tokens - 1) / decode_s, 1) if decode_s > 0 else None,
            confidence=round_confidence(c.confidence),
        )
