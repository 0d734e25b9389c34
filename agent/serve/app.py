"""The Starlette app: routes, API key, validation, admission, OpenAI-shaped errors.

``GET /health`` (never needs the key), ``GET /v1/models``,
``GET /v1/models/{id}``, ``POST /v1/chat/completions``. Inference runs on the
:class:`EngineRunner`'s thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.serve.chat import ChatSession, engine_error, new_completion_id
from agent.serve.errors import (
    ApiError,
    bad_request,
    busy,
    from_validation,
    internal,
    model_not_found,
    unauthorized,
    unavailable,
)
from agent.serve.runner import Busy, Closed, EngineRunner, StreamingEngine
from agent.serve.schemas import ChatCompletionRequest, ModelCard, ModelList
from agent.serve.sse import ClientGone, SSEResponse, unless_disconnected
from agent.serve.structured import structured_completion
from edge_slm.contract import ToolSpec
from edge_slm.logs import get_logger

log = get_logger("agent.serve")


def _parse(body: bytes) -> ChatCompletionRequest:
    try:
        payload = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise bad_request(
            f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc
    if not isinstance(payload, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        raise from_validation(exc) from exc


class _Api:
    """The handlers, sharing one engine runner and the server's settings."""

    def __init__(
        self,
        engine: StreamingEngine,
        *,
        model_name: str,
        max_tokens_cap: int,
        queue_size: int,
        api_key: str | None,
    ) -> None:
        if max_tokens_cap < 1:
            raise ValueError("max_tokens_cap must be >= 1")
        self.engine = engine
        self.runner = EngineRunner(engine, queue_size=queue_size)
        self.model_name = model_name
        self.max_tokens_cap = max_tokens_cap
        self.started = int(time.time())
        self._key = api_key.encode() if api_key else None

    def authorize(self, request: Request) -> None:
        if self._key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not reveal how much of the key matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._key):
            raise unauthorized()

    async def health(self, _: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": self.model_name,
                "provider": self.engine.provider,
                "in_flight": self.runner.in_flight,
                "capacity": self.runner.capacity,
            }
        )

    async def models(self, request: Request) -> Response:
        self.authorize(request)
        listing = ModelList(data=[ModelCard(id=self.model_name, created=self.started)])
        return JSONResponse(listing.model_dump(mode="json"))

    async def model(self, request: Request) -> Response:
        self.authorize(request)
        asked = request.path_params["model"]
        if asked != self.model_name:
            raise model_not_found(asked, self.model_name)
        card = ModelCard(id=self.model_name, created=self.started)
        return JSONResponse(card.model_dump(mode="json"))

    async def chat_completions(self, request: Request) -> Response:
        self.authorize(request)
        req = _parse(await request.body())
        if req.model != self.model_name:
            raise model_not_found(req.model, self.model_name)
        messages = [m.as_engine_message() for m in req.messages]
        try:
            structured = req.structured()
        except ValueError as exc:
            raise bad_request(str(exc), param="tool_choice") from exc
        if structured is not None:
            return await self._structured(request, messages, req, *structured)
        try:
            ticket = self.runner.submit(
                messages,
                max_tokens=req.token_budget(self.max_tokens_cap),
                logprobs=req.logprobs,
                top_logprobs=req.top_k(),
                sampling=req.sampling(),
            )
        except Busy as exc:
            raise busy(exc.retry_after_s) from exc
        except Closed as exc:
            raise unavailable(str(exc)) from exc
        session = ChatSession(req, ticket, model=self.model_name, completion_id=new_completion_id())
        log.debug("chat_request", id=session.id, messages=messages)  # prompt text: debug only
        headers = {"x-request-id": session.id}
        try:
            if not req.stream:
                reply = await unless_disconnected(request, session.collect, ticket.cancel.set)
                return JSONResponse(reply, headers=headers)
            await unless_disconnected(request, session.prime, ticket.cancel.set)
        except ClientGone:
            if req.stream:
                session.log()  # collect() logs for itself
            return Response(status_code=499)  # nobody reads it; keeps the ASGI cycle whole
        except BaseException:
            ticket.cancel.set()
            raise
        response = SSEResponse(session.chunks(), on_close=ticket.cancel.set)
        response.headers.update(headers)
        return response

    async def _structured(
        self,
        request: Request,
        messages: list[dict[str, str]],
        req: ChatCompletionRequest,
        schema: dict[str, Any],
        tools: list[ToolSpec],
    ) -> Response:
        try:
            ticket = self.runner.submit(
                messages,
                max_tokens=req.token_budget(self.max_tokens_cap),
                logprobs=False,
                top_logprobs=0,
                schema=schema,
                sampling=req.sampling(),
            )
        except Busy as exc:
            raise busy(exc.retry_after_s) from exc
        except Closed as exc:
            raise unavailable(str(exc)) from exc
        completion_id = new_completion_id()
        try:
            result = await unless_disconnected(request, ticket.result, ticket.cancel.set)
        except ClientGone:
            return Response(status_code=499)
        except Exception as exc:
            raise engine_error(exc) from exc
        log.info(
            "chat_completion_structured",
            id=completion_id,
            tools=len(tools),
            finish_reason=result.finish_reason,
            completion_tokens=result.completion_tokens,
            forced_tokens=result.forced_tokens,
            total_ms=round(result.total_s * 1000, 1),
        )
        body = structured_completion(
            result, tools, model=self.model_name, completion_id=completion_id
        )
        return JSONResponse(body, headers={"x-request-id": completion_id})

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        self.runner.start()
        log.info(
            "serve_ready",
            model=self.model_name,
            provider=self.engine.provider,
            max_tokens_cap=self.max_tokens_cap,
            queue_size=self.runner.capacity - 1,
            auth=self._key is not None,
        )
        try:
            yield
        finally:
            self.runner.close()
            log.info("serve_stopped")


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)  # noqa: S101 - registered for ApiError only
    level = log.error if exc.status >= 500 else log.info
    level("request_failed", path=request.url.path, status=exc.status, code=exc.code, error=str(exc))
    return exc.response()


async def _on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no such route) and 405, in OpenAI's error shape."""
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for HTTPException only
    code = "method_not_allowed" if exc.status_code == 405 else "not_found"
    error = ApiError(exc.status_code, exc.detail, code=code, headers=exc.headers)
    return await _on_api_error(request, error)


async def _on_crash(request: Request, exc: Exception) -> Response:
    log.error("request_crashed", path=request.url.path, exc_info=exc)
    return internal().response()


def create_app(
    engine: StreamingEngine,
    *,
    model_name: str,
    max_tokens_cap: int = 512,
    queue_size: int = 4,
    api_key: str | None = None,
) -> Starlette:
    """An app serving ``engine`` as ``model_name``.

    ``max_tokens_cap`` bounds every reply (a larger ``max_tokens`` is lowered to
    it; it is the default when none is asked); ``queue_size`` requests may wait
    while one runs; ``api_key``, when set, is required as a bearer token on ``/v1``.
    """
    api = _Api(
        engine,
        model_name=model_name,
        max_tokens_cap=max_tokens_cap,
        queue_size=queue_size,
        api_key=api_key,
    )
    return Starlette(
        routes=[
            Route("/health", api.health, methods=["GET"]),
            Route("/v1/models", api.models, methods=["GET"]),
            Route("/v1/models/{model:path}", api.model, methods=["GET"]),
            Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        ],
        exception_handlers={
            ApiError: _on_api_error,
            HTTPException: _on_http_error,
            Exception: _on_crash,
        },
        lifespan=api.lifespan,
    )
