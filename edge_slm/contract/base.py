"""What every message family shares: the version, error codes, model bases, decoding.

:func:`decode` is the one way a received payload becomes a model: every intake
(agent requests, cloud replies, config, desired model; relay escalations,
status, telemetry) goes through it, so all of them check ``v`` the same way
and refuse with the same typed error, :class:`WireError`.
"""

from __future__ import annotations

import json
import reprlib
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: The contract's major version. A payload whose ``v`` differs, or that has none,
#: is refused by :func:`decode`.
WIRE_VERSION: Final = 1
#: The type of every ``v`` field. Literal types cannot name a constant, so this
#: repeats :data:`WIRE_VERSION` once (a unit test checks that they agree).
WireVersion = Literal[1]


class ErrorCode(StrEnum):
    """Typed error codes carried in ``Response.error.code``."""

    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_REQUEST = "invalid_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_VERSION = "unsupported_version"
    MAX_TOKENS_EXCEEDED = "max_tokens_exceeded"
    BUSY = "busy"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    SHUTTING_DOWN = "shutting_down"
    CLOUD_EXPIRED = "cloud_expired"
    CLOUD_FAILED = "cloud_failed"
    UNKNOWN_SKILL = "unknown_skill"
    UNKNOWN_TOOL_SET = "unknown_tool_set"
    UNSUPPORTED_SCHEMA = "unsupported_schema"
    SCHEMA_TOO_LARGE = "schema_too_large"
    SCHEMA_MISMATCH = "schema_mismatch"
    INTERNAL = "internal"


class InboundModel(BaseModel):
    """Received only: tolerant, unknown fields are ignored (newer minor revisions parse)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class OutboundModel(BaseModel):
    """Sent only: strict, so that no undocumented field reaches the wire by accident."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Fields published even when null (``id`` of an unreadable request).
    _keep_null: ClassVar[frozenset[str]] = frozenset()

    def to_wire(self) -> bytes:
        """JSON for the wire: unset optional fields are left out, required ones kept."""
        data = self.model_dump(mode="json", exclude_none=True)
        for name in self._keep_null:
            data.setdefault(name, None)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


class PeerModel(BaseModel):
    """Agent <-> relay messages: strict fields by construction, tolerant when parsed."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    def to_wire(self) -> bytes:
        return self.model_dump_json(exclude_none=True, by_alias=True).encode()


class TokenUsage(OutboundModel):
    prompt: int = Field(ge=0, description="Prompt tokens.")
    completion: int = Field(ge=0, description="Generated (or scored) tokens.")


class ErrorInfo(OutboundModel):
    code: ErrorCode = Field(description="Machine-readable error code.")
    message: str = Field(description="Human-readable explanation.")
    retry_after_ms: int | None = Field(
        default=None, description="For `busy`: when a retry is likely to be accepted."
    )


class Versioned(BaseModel):
    """A top-level message: it carries the contract's major version first.

    Built in code it defaults to :data:`WIRE_VERSION`; received, :func:`decode`
    requires it.
    """

    v: WireVersion = Field(
        default=WIRE_VERSION, description=f"Contract major version; must be {WIRE_VERSION}."
    )


def new_request_id() -> str:
    return uuid.uuid4().hex


class WireError(ValueError):
    """A received payload that is refused; ``code`` goes in the error reply or the log."""

    code: ErrorCode = ErrorCode.INVALID_REQUEST

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UnsupportedVersion(WireError):
    """A payload of another major version (``v`` other than :data:`WIRE_VERSION`)."""

    code = ErrorCode.UNSUPPORTED_VERSION


M = TypeVar("M", bound=BaseModel)


def load_object(payload: bytes) -> dict[str, Any]:
    """The JSON object in ``payload``, or :class:`WireError` with the matching code."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(
            f"payload is not UTF-8: {exc.reason}", code=ErrorCode.INVALID_UTF8
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WireError(f"payload is not JSON: {exc}", code=ErrorCode.INVALID_JSON) from None
    except (RecursionError, ValueError) as exc:
        # Absurd nesting, or integers past Python's digit limit: still the sender's JSON.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise WireError(
            f"payload is not usable JSON: {reason}", code=ErrorCode.INVALID_JSON
        ) from None
    if not isinstance(data, dict):
        raise WireError("payload must be a JSON object")
    try:
        # JSON may escape lone UTF-16 surrogates ("\ud800"), which no UTF-8 reply,
        # topic or log can carry; refuse them here rather than fail later.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise WireError("payload contains unpaired UTF-16 surrogates") from None
    return data


def check_version(data: Mapping[str, Any]) -> None:
    """Refuse a message without ``v`` or of another major version.

    A missing ``v`` is refused rather than read as the current version: every
    sender of ours and every documented example sets it, and a message that
    omits it could be of any version.
    """
    if "v" not in data:
        raise WireError("v: field required")
    version = data["v"]
    if type(version) is not int or version != WIRE_VERSION:  # `true == 1` must not pass
        raise UnsupportedVersion(
            f"contract version {reprlib.repr(version)} is not supported; "
            f"this side speaks v{WIRE_VERSION}"
        )


def validation_summary(exc: ValidationError, root: str, limit: int = 5) -> str:
    """``where: what`` for the first ``limit`` problems, for a log line or an error reply.

    ``root`` names a problem of the whole message (``request``).
    """
    parts = []
    for err in exc.errors(include_url=False)[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or root
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def decode(model: type[M], payload: bytes | Mapping[str, Any]) -> M:
    """Parse a received message (raw bytes or an already loaded JSON object).

    Raises :class:`WireError` (:class:`UnsupportedVersion` for a version problem).
    Unknown top-level fields are dropped first, so that a receiver tolerates them
    even for models that forbid extras when sending.
    """
    data = payload if isinstance(payload, Mapping) else load_object(payload)
    check_version(data)
    names = {field.alias or name for name, field in model.model_fields.items()}
    known = {key: value for key, value in data.items() if key in names}
    try:
        return model.model_validate(known)
    except ValidationError as exc:
        # A validator that raised a PydanticCustomError named after an error code
        # (an unsupported schema) gives that code instead of invalid_request.
        codes = {e.value for e in ErrorCode}
        typed = [err["type"] for err in exc.errors(include_url=False) if err["type"] in codes]
        code = ErrorCode(typed[0]) if typed else None
        raise WireError(validation_summary(exc, model.__name__.lower()), code=code) from None
