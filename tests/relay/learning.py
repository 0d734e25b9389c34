"""The learn loop's test skill and its cases, logged as the relay logs them, and a
second encoder."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cloud_relay.learn import SkillResult, TextEncoder, Vectors, held_out
from cloud_relay.store import Final, LabelledCase, NewEscalation, RelayStore
from edge_slm.contract import Outcome, SkillSpec

SKILL = "lights"
SPEC = SkillSpec.model_validate(
    {
        "labels": {
            "lights_on": {"description": "switch lights on", "exemplars": ["lights on"]},
            "lights_off": {"description": "switch lights off", "exemplars": ["lights off"]},
        }
    }
)
#: Each label's opposite: cases the cloud labelled backwards.
FLIP = {"lights_on": "lights_off", "lights_off": "lights_on"}
ROOMS = ["kitchen", "bedroom", "hall", "garage", "office", "bathroom", "attic", "porch"]
ON = ["turn on the {} light", "switch the {} lamp on", "{} is too dark, light it up"]
OFF = ["turn off the {} light", "switch the {} lamp off", "kill the lights in the {}"]


def cases() -> list[tuple[str, str]]:
    out = [(t.format(r), "lights_on") for t in ON for r in ROOMS]
    return out + [(t.format(r), "lights_off") for t in OFF for r in ROOMS]


def log_case(
    store: RelayStore,
    i: int,
    text: str,
    label: str,
    *,
    skill: str | None = SKILL,
    labels: Sequence[str] = tuple(SPEC.labels),
) -> None:
    """Case ``i`` as the relay logs an escalation the cloud answered with ``label``
    (``skill`` None: a request that listed its own ``labels``)."""
    store.claim(
        NewEscalation(
            device_id=f"dev-{i % 3}",
            request_id=f"r{i}",
            relay_id="r",
            received_at=time.time(),
            task="classify",
            reason="low_confidence",
            text=text,
            labels=list(labels),
            skill=skill,
        ),
        stale_before=0,
    )
    store.finalize(
        f"dev-{i % 3}",
        f"r{i}",
        Final(
            outcome=Outcome.OK,
            answered_at=time.time(),
            reply="{}",
            latency_ms=1.0,
            cloud_label=label,
        ),
    )


def is_held_out(i: int, holdout: float) -> bool:
    """Whether case ``i`` (as ``log_case`` logs it) is in the learn loop's held-out share."""
    case = LabelledCase(f"dev-{i % 3}", f"r{i}", 0.0, "", "", shadow=False)
    return held_out(case, holdout)


def assert_kept_as_worse(result: SkillResult, why: str) -> None:
    """A head the held-out check refused: kept, both accuracies reported, the new one
    lower, and the reason naming ``why`` (the head in use, or what it was checked on)."""
    # A helper module's asserts are not rewritten by pytest: each names what it saw.
    assert result.action == "kept", result
    assert result.accuracy_new is not None, result
    assert result.accuracy_old is not None, result
    assert result.accuracy_new < result.accuracy_old, result
    assert why in result.reason, result


class RotatedEncoder:
    """A second encoder for the per-encoder tests: the real encoder's vectors turned by a
    fixed random rotation, under another name. Another vector space of the same size, as
    a second model would give (a head fitted on one reads the other wrongly), while the
    CI machine carries one encoder only."""

    def __init__(self, base: TextEncoder, name: str = "rotated-minilm") -> None:
        self.name = name
        self._base = base
        dim = base.embed(["x"]).shape[1]
        q, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(dim, dim)))
        self._turn = q.astype(np.float32)

    def embed(self, texts: Sequence[str]) -> Vectors:
        return self._base.embed(texts) @ self._turn


def skills_dir(root: Path) -> Path:
    """``root/skills`` holding the test skill as a TOML file (``learn.skills_dir``)."""
    folder = root / "skills"
    folder.mkdir(exist_ok=True)
    (folder / f"{SKILL}.toml").write_text(
        "\n".join(
            f'[labels.{name}]\ndescription = "{label.description}"\n'
            f"exemplars = {json.dumps(label.exemplars)}"
            for name, label in SPEC.labels.items()
        )
    )
    return folder
