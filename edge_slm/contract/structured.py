"""Structured outputs: the JSON Schema subset of ``extract``, tools and tool sets of ``act``.

An ``extract`` request carries ``schema``; an ``act`` request carries ``tools``
(OpenAI's function-tool format) or names a ``tool_set`` registered on the
device. The device decodes under the schema (llguidance), the relay forwards it
to the cloud as OpenAI structured outputs, and both sides validate the answer
with the ``jsonschema`` library, so every reply either matches or is a typed
error.

The supported subset (what both llguidance and OpenAI's strict mode accept,
kept small so that a device can check it cheaply):

* the root is ``{"type": "object", "properties": {...}}``;
* ``type`` (one name, or a list of names, e.g. ``["string", "null"]``) of
  ``object``, ``array``, ``string``, ``number``, ``integer``, ``boolean``, ``null``;
* objects: ``properties``, ``required``, ``additionalProperties: false``;
* arrays: ``items`` (one schema), ``minItems``, ``maxItems``;
* strings: ``enum``, ``const``, ``minLength``, ``maxLength``;
* numbers: ``enum``, ``const``, ``minimum``, ``maximum``;
* ``anyOf`` of subset schemas;
* annotations: ``title``, ``description``, ``default``, ``examples``.

Anything else (``$ref``, ``oneOf``, ``allOf``, ``not``, ``pattern``, ``format``,
``patternProperties``, ``if``...) is refused with ``unsupported_schema``; a
schema over :data:`MAX_SCHEMA_BYTES` serialized, :data:`MAX_SCHEMA_DEPTH` deep or
with more than :data:`MAX_SCHEMA_PROPERTIES` properties in all is refused with
``schema_too_large``. The schema itself is first checked against JSON Schema
2020-12's metaschema.

``jsonschema`` is imported lazily, inside the checks: importing the contract
stays cheap.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from edge_slm.contract.base import ErrorCode

#: Serialized size cap of one schema (compact JSON, UTF-8 bytes).
MAX_SCHEMA_BYTES: Final = 8192
#: Nesting cap: the root object is depth 1.
MAX_SCHEMA_DEPTH: Final = 5
#: Properties over all objects of one schema.
MAX_SCHEMA_PROPERTIES: Final = 64
#: Tools of one request or tool set.
MAX_TOOLS: Final = 32

#: The tool name that means "no tool fits" (reserved: no tool may take it).
NO_TOOL: Final = "none"

_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_ANNOTATIONS = frozenset({"title", "description", "default", "examples"})
_KEYWORDS = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "minItems", "maxItems"}),
    "string": frozenset({"enum", "const", "minLength", "maxLength"}),
    "number": frozenset({"enum", "const", "minimum", "maximum"}),
    "integer": frozenset({"enum", "const", "minimum", "maximum"}),
    "boolean": frozenset({"enum", "const"}),
    "null": frozenset(),
}
_TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class SchemaError(ValueError):
    """A schema outside the subset (``unsupported_schema``) or over a cap (``schema_too_large``)."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.UNSUPPORTED_SCHEMA) -> None:
        super().__init__(message)
        self.code = code


def check_schema(schema: Any, *, where: str = "schema") -> dict[str, Any]:
    """Return ``schema`` if it is a valid JSON Schema in the subset, else :class:`SchemaError`."""
    if not isinstance(schema, dict):
        raise SchemaError(f"{where} must be a JSON object")
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_SCHEMA_BYTES:
        raise SchemaError(
            f"{where} is {size} bytes; at most {MAX_SCHEMA_BYTES}", ErrorCode.SCHEMA_TOO_LARGE
        )
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError as MetaschemaError

    try:
        Draft202012Validator.check_schema(schema)
    except MetaschemaError as exc:
        raise SchemaError(f"{where} is not a valid JSON Schema: {exc.message}") from None
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise SchemaError(f"{where} must be an object schema with `properties`")
    count = [0]
    _check_node(schema, where, 1, count)
    return schema


def _types_of(node: dict[str, Any], where: str) -> list[str]:
    kind = node.get("type")
    names = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for name in names:
        if name not in _TYPES:
            raise SchemaError(f"{where}: type {name!r} is not supported")
    return names


def _check_node(node: Any, where: str, depth: int, count: list[int]) -> None:
    if node is True:
        return  # "anything": llguidance and jsonschema both take it
    if not isinstance(node, dict):
        raise SchemaError(f"{where}: a subschema must be an object")
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaError(
            f"{where}: nested deeper than {MAX_SCHEMA_DEPTH}", ErrorCode.SCHEMA_TOO_LARGE
        )
    known = set(_ANNOTATIONS) | {"type", "anyOf"}.union(*_KEYWORDS.values())
    unknown = sorted(set(node) - known)
    if unknown:
        raise SchemaError(f"{where}: keyword(s) {unknown} are not supported")
    if "anyOf" in node:
        rest = set(node) - _ANNOTATIONS - {"anyOf"}
        if rest:
            raise SchemaError(f"{where}: anyOf takes no sibling keywords ({sorted(rest)})")
        for i, branch in enumerate(node["anyOf"]):
            _check_node(branch, f"{where}.anyOf.{i}", depth, count)
        return
    _check_typed(node, where, depth, count)


def _check_typed(node: dict[str, Any], where: str, depth: int, count: list[int]) -> None:
    types = _types_of(node, where)
    if not types and "enum" not in node and "const" not in node:
        raise SchemaError(f"{where}: give `type`, `enum`, `const` or `anyOf`")
    allowed = set(_ANNOTATIONS) | {"type"}
    for name in types or ["string", "number", "boolean", "null"]:
        allowed |= _KEYWORDS[name]
    unknown = sorted(set(node) - allowed)
    if unknown:
        raise SchemaError(f"{where}: keyword(s) {unknown} are not supported")
    if node.get("additionalProperties", False) is not False:
        raise SchemaError(f"{where}: additionalProperties must be false when given")
    for name, sub in node.get("properties", {}).items():
        count[0] += 1
        if count[0] > MAX_SCHEMA_PROPERTIES:
            raise SchemaError(
                f"more than {MAX_SCHEMA_PROPERTIES} properties", ErrorCode.SCHEMA_TOO_LARGE
            )
        _check_node(sub, f"{where}.{name}", depth + 1, count)
    missing = [r for r in node.get("required", []) if r not in node.get("properties", {})]
    if missing:
        raise SchemaError(f"{where}: required names unknown properties {missing}")
    if "items" in node:
        _check_node(node["items"], f"{where}.items", depth + 1, count)


def validation_errors(schema: dict[str, Any], value: Any, limit: int = 3) -> list[str]:
    """Where ``value`` breaks ``schema`` (``jsonschema``), as ``path: message``; [] if valid."""
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: e.path)
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:limit]
    ]


def schema_problem(exc: SchemaError) -> PydanticCustomError:
    """``exc`` as the pydantic error that ``decode`` maps to its error code."""
    return PydanticCustomError(exc.code.value, "{message}", {"message": str(exc)})


class FunctionSpec(BaseModel):
    """OpenAI's ``function`` object of a tool."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(pattern=_TOOL_NAME, description="Tool name (OpenAI's rule); not `none`.")
    description: str = Field(default="", max_length=1024, description="What the tool does.")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="The arguments, as a JSON Schema object in the documented subset.",
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == NO_TOOL:
            raise ValueError(f"tool name {NO_TOOL!r} is reserved for 'no tool fits'")
        return value

    @field_validator("parameters")
    @classmethod
    def _subset(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            return check_schema(value, where="parameters")
        except SchemaError as exc:
            raise schema_problem(exc) from None


class ToolSpec(BaseModel):
    """One tool in OpenAI's function-tool format, plus edge-slm's routing fields.

    ``risk`` and ``threshold`` stay on the device: they are not sent to the cloud.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["function"] = Field(default="function", description="Always `function`.")
    function: FunctionSpec = Field(description="Name, description and parameters.")
    risk: Literal["normal", "high"] = Field(
        default="normal",
        description="`high` (unlock a door, disarm an alarm): an edge call of this tool "
        "escalates unless its confidence reaches `threshold`.",
    )
    threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="The confidence an edge call of this tool needs to stand; default: the "
        "act threshold, or the agent's high-risk threshold for `risk: high`.",
    )

    @property
    def name(self) -> str:
        return self.function.name

    def openai(self) -> dict[str, Any]:
        """The tool as OpenAI's API takes it (no edge-slm fields)."""
        return {"type": "function", "function": self.function.model_dump(mode="json")}


ToolSetName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


def unique_tools(tools: list[ToolSpec]) -> list[ToolSpec]:
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise ValueError("tool names must be unique")
    return tools


class ToolCall(BaseModel):
    """A call of one tool: what an ``act`` reply carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, description="The tool.")
    arguments: dict[str, Any] = Field(
        default_factory=dict, description="Its arguments, valid under its `parameters`."
    )


class ToolExemplar(BaseModel):
    """An example command and the call it should give (few-shot, shown as earlier turns)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    text: str = Field(min_length=1, max_length=512, description="The command.")
    call: ToolCall | None = Field(
        default=None, description="Its call; null or absent: no tool fits."
    )


class PlattScaling(BaseModel):
    """``sigmoid(a * logit(raw) + b)``: a raw confidence mapped to a probability of being right.

    ``a`` must be positive: a calibration may stretch and shift the raw confidence but
    never reverse its order (that would escalate the surest calls first)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    a: float = Field(gt=0, le=100, description="Slope on the raw confidence's logit.")
    b: float = Field(ge=-100, le=100, description="Intercept.")


class ToolSetFit(BaseModel):
    """A tool set's calibration on one edge model, fitted on the dev split by
    ``edge-agent toolsets fit``; stored in the set under ``[fits."<model>"]``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    calibration: PlattScaling = Field(
        description="Maps an act reply's raw confidence (its weakest required field) to "
        "P(the call is exactly right: tool and every argument)."
    )
    items: int = Field(ge=0, description="Tool calls the fit was made on.")
    auroc: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="AUROC of the confidence for exact calls on those items (a monotone "
        "calibration leaves the raw one's ranking, so it is the same before and after).",
    )
    ece_before: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Expected calibration error of the raw confidence on those items.",
    )
    ece_after: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="The same with the calibration, cross-validated (each item predicted by "
        "a fit that did not see it).",
    )


class ToolSetSpec(BaseModel):
    """A named set of tools registered on the device (TOML, agent config or DeviceConfig)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    description: str = Field(default="", max_length=512, description="What the set is for.")
    instructions: str | None = Field(
        default=None,
        max_length=4096,
        description="Opening of the system prompt; default: a generic tool-call instruction.",
    )
    tools: list[ToolSpec] = Field(min_length=1, max_length=MAX_TOOLS, description="The tools.")
    exemplars: list[ToolExemplar] = Field(
        default_factory=list, max_length=32, description="Few-shot examples, in prompt order."
    )
    fits: dict[Annotated[str, Field(min_length=1, max_length=128)], ToolSetFit] = Field(
        default_factory=dict,
        max_length=16,
        description="Fitted calibration of the act confidence by edge model name "
        "(`edge-agent toolsets fit`); a model without one gets the raw confidence.",
    )

    @field_validator("tools")
    @classmethod
    def _unique(cls, value: list[ToolSpec]) -> list[ToolSpec]:
        return unique_tools(value)


def tool_call_schema(tools: list[ToolSpec], *, allow_none: bool = True) -> dict[str, Any]:
    """The JSON Schema of one call of one of ``tools``, for constrained decoding.

    ``{"name": <tool>, "arguments": {...}}`` per tool in an ``anyOf``, the name
    first so that the choice of tool is made before its arguments. ``allow_none``
    adds ``{"name": "none"}``: no tool fits.
    """
    branches: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.function.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    if allow_none:
        branches.append(
            {
                "type": "object",
                "properties": {"name": {"const": NO_TOOL}},
                "required": ["name"],
                "additionalProperties": False,
            }
        )
    return {"anyOf": branches}
