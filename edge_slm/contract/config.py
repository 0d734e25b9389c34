"""Config and desired model: what the relay pushes, retained, for one device."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edge_slm.contract.base import PeerModel, Versioned
from edge_slm.contract.request import Task
from edge_slm.contract.skills import SkillName, SkillSpec
from edge_slm.contract.structured import ToolSetName, ToolSetSpec

_LEARNING = (
    "Shadow rate of a skill whose head is still young: this share at head version 0, halved "
    "with each pushed version, never below `shadow_rate`."
)


class DeviceConfig(Versioned, PeerModel):
    """Relay -> agent, retained on ``<prefix>/<device_id>/config``: run-time settings.

    Only the relay identity may publish it (broker ACL). The agent validates it
    and applies it without a restart; fields left out keep their current value.
    """

    device_id: str = Field(min_length=1, max_length=64, description="The device it is for.")
    thresholds: dict[Task, Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(
        default=None, description="Escalation thresholds by task, e.g. from `calibrate`."
    )
    shadow_rate: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Share of confident edge answers also sent to the cloud for comparison.",
    )
    learning_shadow_rate: float | None = Field(default=None, ge=0.0, le=1.0, description=_LEARNING)
    skills: dict[SkillName, SkillSpec] | None = Field(
        default=None,
        max_length=32,
        description="Skills pushed to the device, by name. They replace the previously "
        "pushed set (`{}` clears it) and take precedence over built-in and configured "
        "skills of the same name.",
    )
    tool_sets: dict[ToolSetName, ToolSetSpec] | None = Field(
        default=None,
        max_length=32,
        description="Tool sets for `act` pushed to the device, by name; like `skills`, they "
        "replace the previously pushed set and take precedence over built-in and "
        "configured sets of the same name.",
    )
    issued_at: float = Field(description="Epoch seconds when the operator issued it.")
    issued_by: str | None = Field(default=None, max_length=128, description="Who or what.")


_SHA256 = r"^[0-9a-f]{64}$"
_MODEL_NAME = r"^[a-z0-9][a-z0-9._-]*$"


class DesiredModel(Versioned, PeerModel):
    """Relay -> agent, retained on ``<prefix>/<device_id>/model``: the model to run.

    Only the relay identity may publish it (broker ACL), e.g. with ``cloud-relay
    models push``. The agent downloads the archive, verifies its size and sha256,
    unpacks and imports it, loads and self-tests it, then swaps it in between two
    requests; any failed step leaves the previous model serving (see
    ``Status.model_update``).
    """

    device_id: str = Field(min_length=1, max_length=64, description="The device it is for.")
    name: str = Field(
        min_length=1, max_length=64, pattern=_MODEL_NAME, description="Model name on the device."
    )
    url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^https?://",
        description="Where the archive is served (http or https; the sha256 pins the content).",
    )
    sha256: str = Field(pattern=_SHA256, description="sha256 of the archive, lowercase hex.")
    size: int | None = Field(default=None, gt=0, description="Size of the archive in bytes.")
    format: Literal["tar", "zip"] = Field(
        default="tar",
        description="An onnxruntime-genai model folder packed as a tar (optionally gzip, bzip2 "
        "or xz compressed) or a zip archive; its genai_config.json may sit at the top or in "
        "one top-level folder.",
    )
    pin: bool | None = Field(
        default=None, description="Keep the model loaded (no idle unload); absent: unchanged."
    )
    issued_at: float = Field(description="Epoch seconds when the operator issued it.")
    issued_by: str | None = Field(default=None, max_length=128, description="Who or what.")
