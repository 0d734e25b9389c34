"""A tool set's act calibration: the contract, applying it, fitting it, the CLI storing it."""

from __future__ import annotations

import argparse
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.actions import BUILTIN_DIR, answer_structured
from agent.cli import main as cli_main
from agent.config import CloudSettings, PolicySettings
from agent.engine.engine import StopWhen, Structured
from agent.policy.router import Router
from agent.toolset_fit import calibrate, cross_validated, fit_pairs
from agent.toolsets_cli import add_toolsets_commands
from bench.act_eval import escalated_exact
from edge_slm.console import run_command
from edge_slm.contract import Request, Task, decode
from edge_slm.contract.structured import PlattScaling, ToolSetFit, ToolSetSpec

HOME = BUILTIN_DIR / "home.toml"
FIT = ToolSetFit(
    calibration=PlattScaling(a=0.5, b=-1.5), items=40, auroc=0.7, ece_before=0.3, ece_after=0.1
)


def _home(**fits: ToolSetFit) -> ToolSetSpec:
    spec = ToolSetSpec.model_validate(tomllib.loads(HOME.read_text()))
    return spec.model_copy(update={"fits": fits})


class _LightsEngine:
    """Always calls set_lights(kitchen, on), unsure of the room."""

    def __init__(self, name: str) -> None:
        self.name = name

    def generate_structured(self, schema: dict[str, Any], **_: object) -> Structured:
        value = {"name": "set_lights", "arguments": {"room": "kitchen", "on": True}}
        return Structured(
            value=value,
            text="",
            field_confidence={"name": 0.9, "arguments.room": 0.6, "arguments.on": 0.8},
            prompt_tokens=10,
            completion_tokens=5,
            forced_tokens=3,
            finish_reason="stop",
            total_s=0.01,
        )


def _act(model: str, spec: ToolSetSpec, **fields: Any) -> tuple[float, dict[str, float]]:
    request = decode(Request, {"v": 1, "task": "act", "text": "lights on in the kitchen", **fields})
    reply = answer_structured(
        _LightsEngine(model),  # type: ignore[arg-type]
        request,
        max_tokens=64,
        stop=StopWhen(),
        tool_set=spec,
    )
    assert reply.confidence is not None
    assert reply.field_confidence is not None
    return reply.confidence, reply.field_confidence


# -- contract --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "calibration",
    [{"a": 0.0, "b": 0.0}, {"a": -1.0, "b": 0.0}, {"a": 1.0, "b": 500.0}, {"a": math.nan, "b": 0}],
)
def test_a_calibration_that_reverses_or_explodes_is_refused(calibration: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        ToolSetFit.model_validate({"calibration": calibration, "items": 10})


def test_a_fit_round_trips_inside_a_tool_set() -> None:
    spec = _home(m=FIT)
    again = ToolSetSpec.model_validate(spec.model_dump(mode="json"))
    assert again.fits == {"m": FIT}
    assert _home().fits == {}  # a set without fits: every model raw
    with pytest.raises(ValidationError):
        ToolSetFit.model_validate({**FIT.model_dump(), "ece_after": 1.5})


# -- applying a fit ----------------------------------------------------------------------


def test_the_fit_of_the_engines_model_calibrates_the_act_confidence() -> None:
    fitted, fields = _act("m", _home(m=FIT), tool_set="home")
    assert fitted == pytest.approx(calibrate(0.6, FIT), abs=1e-4)  # the weakest: the room
    assert fitted < 0.6  # this fit says a raw 0.6 is right far less often
    assert fields["arguments.room"] == 0.6  # field_confidence stays raw


def test_without_a_fit_for_the_model_or_a_tool_set_the_confidence_stays_raw() -> None:
    other, _ = _act("other-model", _home(m=FIT), tool_set="home")
    assert other == 0.6
    inline, _ = _act("m", _home(m=FIT), tools=[t.model_dump() for t in _home().tools])
    assert inline == 0.6  # inline tools: no tool set, no fit


def test_calibration_is_monotone_and_keeps_0_and_1_finite() -> None:
    values = [calibrate(raw, FIT) for raw in (0.0, 0.2, 0.5, 0.8, 1.0)]
    assert values == sorted(values)
    assert 0 < values[0] < values[-1] < 1


# -- fitting -----------------------------------------------------------------------------

# An overconfident model: raw 0.95 is right half the time, raw 0.5 one time in ten.
PAIRS = [(0.95, i % 2 == 0) for i in range(20)] + [(0.5, i % 10 == 0) for i in range(30)]


def test_fit_pairs_learns_an_honest_probability_with_held_out_figures() -> None:
    fit = fit_pairs(PAIRS)
    assert fit.items == len(PAIRS)
    assert calibrate(0.95, fit) == pytest.approx(0.5, abs=0.1)
    assert calibrate(0.5, fit) == pytest.approx(0.1, abs=0.1)
    assert fit.ece_before is not None
    assert fit.ece_after is not None
    assert fit.ece_after < fit.ece_before
    assert fit.auroc is not None
    assert fit.auroc > 0.5
    assert len(cross_validated(PAIRS)) == len(PAIRS)


@pytest.mark.parametrize(
    ("pairs", "why"),
    [
        (PAIRS[:6], "need at least"),
        ([(0.9, True)] * 20, "all of the 20"),
        ([(0.9, False)] * 10 + [(0.2, True)] * 10, "does not rank"),
    ],
)
def test_fit_pairs_refuses_what_it_cannot_learn_from(
    pairs: list[tuple[float, bool]], why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        fit_pairs(pairs)


# -- the CLI -----------------------------------------------------------------------------


def test_toolsets_fit_writes_a_toml_that_parses_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import agent.daemon
    import agent.engine.engine
    import agent.toolset_fit
    from agent.engine.holder import ModelSpec

    seen: list[str] = []

    def observe(_engine: object, _name: str, _spec: object, items: list[Any]) -> tuple[Any, int]:
        seen.extend(request.id for request, _ in items)
        return PAIRS, 0

    monkeypatch.setattr(agent.toolset_fit, "observe", observe)
    monkeypatch.setattr(agent.engine.engine, "Engine", lambda *a, **k: object())
    monkeypatch.setattr(
        agent.daemon, "resolve_model", lambda _s: ModelSpec(name="tiny-model", path=tmp_path)
    )
    target = tmp_path / "home.toml"
    target.write_text(HOME.read_text())
    data = Path(__file__).parents[1] / "data" / "eval" / "home_actions.jsonl"
    parser = argparse.ArgumentParser()
    add_toolsets_commands(parser.add_subparsers(dest="command", required=True))
    argv = ["toolsets", "fit", "--tool-set", "home", "--data", str(data), "--write", str(target)]
    assert run_command(parser, [*argv, "--model", "tiny-model"]) == 0
    spec = ToolSetSpec.model_validate(tomllib.loads(target.read_text()))
    fit = spec.fits["tiny-model"]
    assert fit.items == len(PAIRS)
    assert fit.calibration.a == pytest.approx(fit_pairs(PAIRS).calibration.a, abs=1e-5)
    assert spec.tools == _home().tools  # the rest of the file is kept
    assert "ece" in capsys.readouterr().out.lower()
    from agent.modelbuild.tune_data import eval_split_of

    assert seen
    assert all(eval_split_of(i) == "dev" for i in seen)  # never a held-out item


def test_escalating_the_least_confident_share_to_a_perfect_cloud() -> None:
    confidences = [0.9, 0.1, 0.8, 0.2]
    corrects = [True, False, False, True]
    assert escalated_exact(confidences, corrects, 0.0) == 0.5
    assert escalated_exact(confidences, corrects, 0.25) == 0.75  # the 0.1 one
    assert escalated_exact(confidences, corrects, 0.5) == 0.75  # 0.1 and the right 0.2


def test_act_has_its_own_default_threshold_a_calibrated_probability() -> None:
    thresholds = PolicySettings().thresholds
    assert thresholds[Task.ACT] == 0.6
    router = Router(PolicySettings(), CloudSettings(), budget_left=lambda: True)
    assert router.threshold(Task.ACT) == 0.6  # not the router's 0.5 fallback


def test_edge_agent_lists_the_tool_sets(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["toolsets", "list"]) == 0
    assert "home: 6 tools" in capsys.readouterr().out
