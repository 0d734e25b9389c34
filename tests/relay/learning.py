"""The learn loop's test skill and its cases, logged as the relay logs them."""

from __future__ import annotations

import time

from cloud_relay.store import Final, NewEscalation, RelayStore
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
ROOMS = ["kitchen", "bedroom", "hall", "garage", "office", "bathroom", "attic", "porch"]
ON = ["turn on the {} light", "switch the {} lamp on", "{} is too dark, light it up"]
OFF = ["turn off the {} light", "switch the {} lamp off", "kill the lights in the {}"]


def cases() -> list[tuple[str, str]]:
    out = [(t.format(r), "lights_on") for t in ON for r in ROOMS]
    return out + [(t.format(r), "lights_off") for t in OFF for r in ROOMS]


def log_case(store: RelayStore, i: int, text: str, label: str) -> None:
    store.claim(
        NewEscalation(
            device_id=f"dev-{i % 3}",
            request_id=f"r{i}",
            relay_id="r",
            received_at=time.time(),
            task="classify",
            reason="low_confidence",
            text=text,
            labels=list(SPEC.labels),
            skill=SKILL,
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
