"""Sensor bands: the contract's checks, the rule (`judge`), and that a decided request
never reaches the model."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import load_settings
from agent.engine.engine import Classification, FixedPrompt
from agent.skills import Skill, SkillRegistry
from agent.skills.bands import judge
from agent.skills.classify import classify_skill
from bench.eval_data import load_family
from edge_slm.contract import DeviceConfig, SensorBand, SensorReading, SkillSpec

TEMPERATURE = {
    "unit": "°C",
    "ranges": {
        "normal": [[16, 28]],
        "warning": [[8, 16], [28, 35]],
        "critical": [[float("-inf"), 8], [35, float("inf")]],
    },
}
SPEC = SkillSpec.model_validate(
    {
        "labels": {"normal": {}, "warning": {}, "critical": {}},
        "bands": {
            "temperature": TEMPERATURE,
            "smoke": {"states": {"Clear": "normal", "detected": "critical"}},
            "leak": {"states": {"false": "normal", "true": "critical"}},
        },
    }
)


def _r(name: str, value: Any, unit: str | None = None) -> SensorReading:
    return SensorReading(name=name, value=value, unit=unit)


def _label(*readings: SensorReading) -> str:
    verdict = judge(SPEC, readings)
    assert verdict is not None
    return verdict.label


# -- contract ----------------------------------------------------------------


def test_open_ends_travel_as_null_in_json_and_as_inf_in_toml() -> None:
    band = SensorBand.model_validate(TEMPERATURE)
    assert band.ranges["critical"] == [(None, 8.0), (35.0, None)]
    wire = band.model_dump_json()
    assert "null" in wire
    assert "Infinity" not in wire
    assert SensorBand.model_validate_json(wire) == band
    toml = 'unit = "%"\nranges = { low = [[-inf, 10]], ok = [[10, inf]] }'
    assert SensorBand.model_validate(tomllib.loads(toml)).ranges == {
        "low": [(None, 10.0)],
        "ok": [(10.0, None)],
    }


@pytest.mark.parametrize(
    ("band", "message"),
    [
        ({"ranges": {"a": [[0, 10]], "b": [[5, 20]]}}, "overlap"),
        ({"ranges": {"a": [[10, 10]]}}, "is empty"),
        ({"ranges": {"a": [[float("nan"), 1]]}}, "NaN"),
        ({"unit": "ppm"}, "needs `ranges` or `states`"),
        ({"states": {"On": "a", "on": "b"}}, "differ only in case"),
    ],
)
def test_a_bad_band_is_refused(band: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SensorBand.model_validate(band)


def test_a_band_may_only_name_the_skills_labels() -> None:
    with pytest.raises(ValidationError, match="unknown labels \\['alarm'\\]"):
        SkillSpec.model_validate(
            {
                "labels": {"normal": {}, "critical": {}},
                "bands": {"smoke": {"states": {"detected": "alarm"}}},
            }
        )


def test_bands_do_not_change_the_prompt_so_a_kept_prefix_stays() -> None:
    bare = SPEC.model_copy(update={"bands": {}})
    assert Skill.of("s", SPEC, "config").fingerprint == Skill.of("s", bare, "config").fingerprint


# -- the rule ------------------------------------------------------------------


def test_a_report_is_as_bad_as_its_worst_reading() -> None:
    verdict = judge(SPEC, [_r("hall/temperature", 21.5, "°C"), _r("attic/temperature", 31, "°C")])
    assert verdict is not None
    assert verdict.label == "warning"
    assert verdict.basis == "by the skill's bands: attic/temperature = 31 °C: warning"
    assert _label(_r("a/temperature", 21.5), _r("b/smoke", "DETECTED")) == "critical"


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (15.99, "warning"),
        (16, "normal"),
        (27.99, "normal"),
        (28, "warning"),
        (-40, "critical"),
        (" 36.5 ", "critical"),
    ],
)
def test_ranges_include_low_and_exclude_high(value: Any, label: str) -> None:
    assert _label(_r("x/temperature", value, "°C")) == label


def test_words_and_booleans_use_the_states_table() -> None:
    assert _label(_r("x/smoke", "clear")) == "normal"
    assert _label(_r("x/leak", True)) == "critical"
    assert _label(_r("x/leak", False)) == "normal"


@pytest.mark.parametrize(
    "readings",
    [
        [],
        [_r("x/temperature", 80, "°F")],  # another unit: not the band's to judge
        [_r("x/radon", 300, "Bq/m³")],  # no band
        [_r("x/smoke", "unknown")],  # a word the table lacks
        [_r("x/temperature", "warm")],  # not a number
        [_r("x/temperature", float("nan"))],
        [_r("x/temperature", 30, "°C"), _r("x/radon", 300)],  # radon could be worse
    ],
)
def test_what_the_bands_do_not_settle_goes_to_the_model(readings: list[SensorReading]) -> None:
    assert judge(SPEC, readings) is None


def test_an_open_reading_cannot_beat_the_last_label() -> None:
    assert _label(_r("x/radon", 300), _r("x/smoke", "detected")) == "critical"


def test_the_builtin_bands_are_the_eval_sets_house_rules() -> None:
    """tests/data/eval/README.md assigns sensor gold by a table of bands; the built-in
    skill carries the same table, so every report of the set is decided, and rightly."""
    skill = SkillRegistry().get("sensor_state")
    assert skill is not None
    items = load_family("sensor")
    verdicts = [judge(skill.spec, item.request.readings) for item in items]
    assert all(v is not None for v in verdicts)
    wrong = [i.id for i, v in zip(items, verdicts, strict=True) if v and v.label != i.gold["label"]]
    assert wrong == []


class _TokenizerOnly:
    """Sizes an answer (to price it); any model call fails the test."""

    skill_exemplars = True

    def __init__(self) -> None:
        self.sized: list[tuple[str, str]] = []

    def fixed_prompt_size(self, prompt: FixedPrompt, user: str, label: str) -> tuple[int, int]:
        self.sized.append((user, label))
        return 321, 2

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the model was used ({name}) for a report the bands settle")


def test_a_settled_report_never_reaches_the_model() -> None:
    skill = Skill.of("sensor_state", SPEC, "config")
    engine = _TokenizerOnly()
    got = classify_skill(
        engine,  # type: ignore[arg-type]
        skill,
        "Attic report",
        readings=[_r("attic/temperature", 40.0, "°C")],
    )
    assert isinstance(got, Classification)
    assert (got.label, got.confidence) == ("critical", 1.0)
    # Priced as if the model had read it: the telemetry's cost avoided counts it.
    assert (got.prompt_tokens, got.scored_tokens) == (321, 2)
    assert engine.sized == [("Attic report", "critical")]
    assert got.scores == {"normal": 0.0, "warning": 0.0, "critical": 1.0}
    assert got.basis is not None
    assert "attic/temperature = 40.0 °C" in got.basis


def test_bands_come_from_the_agent_toml_and_from_a_pushed_config(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(
        'device_id = "d1"\n'
        "[skills.freezer.labels.ok]\n"
        "[skills.freezer.labels.thawing]\n"
        "[skills.freezer.bands.freezer_temperature]\n"
        'unit = "°C"\n'
        "ranges = { ok = [[-inf, -15]], thawing = [[-15, inf]] }\n",
        encoding="utf-8",
    )
    spec = load_settings(toml).skills["freezer"]
    verdict = judge(spec, [_r("garage/freezer_temperature", -5.0, "°C")])
    assert verdict is not None
    assert verdict.label == "thawing"
    # The same skill pushed over MQTT: JSON carries the open ends as null.
    pushed = DeviceConfig.model_validate_json(
        DeviceConfig(device_id="d1", issued_at=1.0, skills={"freezer": spec}).model_dump_json()
    )
    assert pushed.skills is not None
    assert pushed.skills["freezer"] == spec
