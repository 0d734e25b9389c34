"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with a status.

Every failure leaves the server through :class:`ApiError`, so clients (the
official SDK maps status codes to exception classes) always get the same shape.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError
from starlette.responses import JSONResponse

from agent.serve.schemas import ErrorBody, ErrorDetail


class ApiError(Exception):
    """An error reply; raised anywhere in a handler, rendered by the app."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> ErrorBody:
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorBody(error=detail)

    def response(self) -> JSONResponse:
        return JSONResponse(
            self.body().model_dump(mode="json"), status_code=self.status, headers=self.headers
        )


def bad_request(message: str, *, code: str = "invalid_value", param: str | None = None) -> ApiError:
    return ApiError(400, message, code=code, param=param)


def from_validation(exc: ValidationError) -> ApiError:
    """The first problem of a pydantic error, named by its field path (``messages.0.role``)."""
    errors = exc.errors(include_url=False, include_context=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    message = f"{where}: {first['msg']}{more}" if where else f"{first['msg']}{more}"
    return bad_request(message, param=where or None)


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "invalid or missing API key: send 'Authorization: Bearer <key>'",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def model_not_found(asked: str, served: str) -> ApiError:
    return ApiError(
        404,
        f"the model {asked!r} does not exist here; this server serves {served!r}",
        code="model_not_found",
        param="model",
    )


def busy(retry_after_s: int) -> ApiError:
    return ApiError(
        429,
        "the model is busy and the wait queue is full; retry later",
        type_="rate_limit_error",
        code="server_busy",
        headers={"Retry-After": str(retry_after_s)},
    )


def internal(message: str = "internal error while generating") -> ApiError:
    return ApiError(500, message, type_="server_error", code="internal_error")


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, type_="server_error", code="shutting_down")
