"""Free-text sensor reports: readings read from the words and judged by the skill's bands."""

import pytest

from agent.skills import SkillRegistry
from agent.skills.bands import judge_text
from agent.skills.report_text import UNREAD, readings_in
from bench.eval_data import load_family, split
from edge_slm.contract import SkillSpec


def _spec() -> SkillSpec:
    skill = SkillRegistry().get("sensor_state")
    assert skill is not None
    return skill.spec


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Kitchen smoke detector: smoke detected", "critical"),
        ("Gas leak detected in the utility room", "critical"),
        ("The intruder alarm has tripped", "critical"),
        ("Water on the bathroom floor", "critical"),
        ("No smoke, leak sensor dry, 21 °C", "normal"),
        ("Freezer at -18 °C, kitchen 22 °C", "normal"),  # the kitchen is a room
        ("Hall CO2: 2,600 ppm", "critical"),  # a thousands separator is one number
        ("Bedroom at 31 degrees", "warning"),
        ("Smoke detector battery at 18 %", "warning"),  # the hazard word names the device
    ],
)
def test_reports_in_words_are_judged_by_the_bands(text: str, label: str) -> None:
    verdict = judge_text(_spec(), text)
    assert verdict is not None, readings_in(text)
    assert verdict.label == label, verdict.basis


def test_what_cannot_be_read_stays_open_for_the_model() -> None:
    assert judge_text(_spec(), "It feels a bit stuffy in here") is None
    # An unread number could be worse than the normal temperature beside it.
    assert judge_text(_spec(), "Kitchen 22 °C, meter shows 7") is None
    assert any(r.name == UNREAD for r in readings_in("meter shows 7"))


def test_no_danger_report_of_the_eval_set_is_judged_normal() -> None:
    """Reports that state a danger in words (gold.danger) are never answered normal by
    rule; what the rules leave open goes to the model and its calibrated confidence
    (bench/sensor_reports.py measures that path end to end)."""
    reports = load_family("report")
    danger = [i for i in reports if i.gold.get("danger")]
    assert len(danger) >= 15
    for item in danger:
        verdict = judge_text(_spec(), item.request.text)
        assert verdict is None or verdict.label != "normal", item.request.text


def test_rule_answers_on_held_out_reports_are_right() -> None:
    held = split(load_family("report"), "heldout")
    verdicts = [(judge_text(_spec(), i.request.text), i.gold["label"]) for i in held]
    decided = [(v.label, gold) for v, gold in verdicts if v is not None]
    assert len(decided) >= len(held) // 2
    wrong = [(label, gold) for label, gold in decided if label != gold]
    assert len(wrong) <= len(decided) // 20, wrong
