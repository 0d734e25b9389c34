"""The wire contract (v1) shared by the edge agent and the cloud relay.

Pydantic only: this package must never import paho, onnxruntime or anything
heavy, so that apps and the relay can depend on it cheaply (a test checks).
One module per message family:

- :mod:`~edge_slm.contract.base`: the version, error codes, model bases and
  :func:`decode`, the one way every intake turns a payload into a model;
- :mod:`~edge_slm.contract.request`: ``Request`` and ``Response``;
- :mod:`~edge_slm.contract.escalation`: ``Escalation`` and ``CloudReply``;
- :mod:`~edge_slm.contract.status`: ``Status``, ``Telemetry`` and ``RelayStatus``;
- :mod:`~edge_slm.contract.config`: ``DeviceConfig`` and ``DesiredModel``;
- :mod:`~edge_slm.contract.skills`: skills, carried inside ``DeviceConfig``;
- :mod:`~edge_slm.contract.structured`: the schema subset of ``extract``, the
  tools and tool sets of ``act``.

Received models are tolerant (unknown fields are ignored, so newer minor
revisions of a sender still parse); sent models are strict (``extra=forbid``)
so that we never put an undocumented field on the wire by accident.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from edge_slm.contract.base import (
    WIRE_VERSION,
    ErrorCode,
    ErrorInfo,
    TokenUsage,
    UnsupportedVersion,
    WireError,
    WireVersion,
    decode,
    load_object,
    new_request_id,
)
from edge_slm.contract.config import DesiredModel, DeviceConfig
from edge_slm.contract.escalation import (
    CloudReply,
    EdgeAnswer,
    Escalation,
    EscalationReason,
    Outcome,
)
from edge_slm.contract.request import (
    CloudPolicy,
    Kind,
    Privacy,
    Request,
    Response,
    SensorReading,
    Source,
    Task,
    TopicName,
)
from edge_slm.contract.skills import (
    Bound,
    HeadProvenance,
    LabelName,
    Scoring,
    SensorBand,
    SkillCalibrator,
    SkillFit,
    SkillHead,
    SkillLabel,
    SkillName,
    SkillSpec,
    default_verbalizer,
)
from edge_slm.contract.status import (
    LatencySummary,
    ModelState,
    ModelUpdate,
    ModelUpdateState,
    RelayStatus,
    Status,
    Telemetry,
)
from edge_slm.contract.structured import (
    NO_TOOL,
    SchemaError,
    ToolCall,
    ToolExemplar,
    ToolSetName,
    ToolSetSpec,
    ToolSpec,
    check_schema,
    tool_call_schema,
    validation_errors,
)

__all__ = [
    "NO_TOOL",
    "WIRE_MODELS",
    "WIRE_VERSION",
    "Bound",
    "CloudPolicy",
    "CloudReply",
    "DesiredModel",
    "DeviceConfig",
    "EdgeAnswer",
    "ErrorCode",
    "ErrorInfo",
    "Escalation",
    "EscalationReason",
    "HeadProvenance",
    "Kind",
    "LabelName",
    "LatencySummary",
    "ModelState",
    "ModelUpdate",
    "ModelUpdateState",
    "Outcome",
    "Privacy",
    "RelayStatus",
    "Request",
    "Response",
    "SchemaError",
    "Scoring",
    "SensorBand",
    "SensorReading",
    "SkillCalibrator",
    "SkillFit",
    "SkillHead",
    "SkillLabel",
    "SkillName",
    "SkillSpec",
    "Source",
    "Status",
    "Task",
    "Telemetry",
    "TokenUsage",
    "ToolCall",
    "ToolExemplar",
    "ToolSetName",
    "ToolSetSpec",
    "ToolSpec",
    "TopicName",
    "UnsupportedVersion",
    "WireError",
    "WireVersion",
    "check_schema",
    "decode",
    "default_verbalizer",
    "json_schemas",
    "load_object",
    "new_request_id",
    "tool_call_schema",
    "validation_errors",
]

#: Every model that travels on a topic, for schema export and the AsyncAPI check.
WIRE_MODELS: dict[str, type[BaseModel]] = {
    "Request": Request,
    "Response": Response,
    "Status": Status,
    "Escalation": Escalation,
    "CloudReply": CloudReply,
    "Telemetry": Telemetry,
    "DeviceConfig": DeviceConfig,
    "DesiredModel": DesiredModel,
    "RelayStatus": RelayStatus,
    "SkillHead": SkillHead,
}

#: Models whose receivers validate them (schemas exported in validation mode).
_RECEIVED = (Request, Escalation, CloudReply, DeviceConfig, DesiredModel, SkillHead)


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every wire model (validation mode for received ones).

    ``v`` is required and has no default on the wire: every sender sets it and
    :func:`decode` refuses a message without it (only models built in code
    default it).
    """
    schemas: dict[str, dict[str, Any]] = {}
    for name, model in WIRE_MODELS.items():
        schema = model.model_json_schema(
            mode="validation" if model in _RECEIVED else "serialization"
        )
        schema["properties"]["v"].pop("default", None)
        schema["required"] = ["v", *(f for f in schema.get("required", []) if f != "v")]
        schemas[name] = schema
    return schemas
