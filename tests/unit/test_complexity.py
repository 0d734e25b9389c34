"""Pre-generation complexity score: ordering, bounds, keywords, and linear cost."""

from __future__ import annotations

import dataclasses
import random

import pytest

from agent.policy.complexity import Complexity, complexity
from edge_slm.contract import Task

SHORT_COMMAND = "turn on the kitchen lights"
PLANNING = (
    "I want to cut our heating bill this winter. First list all the rooms that stayed above "
    "22 degrees for more than 8 hours yesterday, then compare them with last week and explain "
    "why the bathroom used more energy. How do I plan a heating schedule step by step so the "
    "total cost stays under 40 euros per month? And what would happen if I lowered the "
    "thermostat by 2 degrees at night?"
)


def test_short_classify_command_is_low() -> None:
    result = complexity(SHORT_COMMAND, task="classify")
    assert result.score < 0.3, result


def test_long_multi_step_planning_question_is_high() -> None:
    result = complexity(PLANNING, task="answer")
    assert result.score > 0.7, result
    assert any(cue.startswith("long (") for cue in result.why)
    assert any(cue.startswith("multi-step") for cue in result.why)


def test_result_shape() -> None:
    result = complexity("What is the temperature?", task="answer")
    assert isinstance(result, Complexity)
    assert set(result.features) == {
        "task",
        "length",
        "structure",
        "multistep",
        "reasoning",
        "keywords",
    }
    assert all(isinstance(v, float) for v in result.features.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.score = 1.0  # type: ignore[misc]


def test_task_order() -> None:
    text = "The living room sensor reported 21 degrees at noon and 19 in the evening."
    scores = [complexity(text, task=t).score for t in ("classify", "answer", "extract")]
    scores.append(complexity(text, task="summarize").score)
    assert scores == sorted(scores)
    assert len(set(scores)) == 4


def test_task_enum_is_accepted() -> None:
    assert complexity(SHORT_COMMAND, task=Task.CLASSIFY) == complexity(
        SHORT_COMMAND, task="classify"
    )


def test_longer_is_not_lower() -> None:
    sentence = "the hallway sensor saw movement near the front door while nobody was home"
    words = sentence.split(" ")
    previous = -1.0
    for n in range(1, 200, 7):
        text = " ".join(words[i % len(words)] for i in range(n))
        score = complexity(text, task="answer").score
        assert score >= previous, (n, score, previous)
        previous = score
    assert previous > complexity(" ".join(words[:3]), task="answer").score


@pytest.mark.parametrize(
    "cue",
    [
        "and then lock the door",
        "explain it step by step",
        "first close the blinds, then dim the lights",
        "compare the two thermostats",
        "explain why it is cold",
        "how do I reset the hub",
        "plan the week",
        "list all open windows",
    ],
)
def test_multi_step_cue_raises_score(cue: str) -> None:
    base = "check the heating in the kitchen"
    plain = complexity(base, task="answer")
    with_cue = complexity(f"{base} {cue}", task="answer")
    assert with_cue.features["multistep"] > plain.features["multistep"]
    assert with_cue.score > plain.score
    assert any(c.startswith("multi-step") for c in with_cue.why)


@pytest.mark.parametrize(
    "cue",
    ["why is it 3 degrees colder", "calculate the cost", "how much power", "12 * 0.32", "if so"],
)
def test_reasoning_cue_raises_score(cue: str) -> None:
    base = "the boiler ran all night"
    assert (
        complexity(f"{base}, {cue}", task="answer").score >= complexity(base, task="answer").score
    )


def test_more_questions_raise_structure() -> None:
    one = complexity("Is the door locked?", task="answer")
    three = complexity("Is the door locked? Is the alarm on? Are the lights off?", task="answer")
    assert three.features["structure"] > one.features["structure"]
    assert three.score > one.score
    assert "3 questions" in three.why


def test_keywords_raise_score_and_are_explained() -> None:
    text = "Can you diagnose the Zigbee coordinator? It keeps dropping devices."
    plain = complexity(text, task="answer")
    keyed = complexity(text, task="answer", keywords={"diagnose": 0.2, "zigbee coordinator": 0.1})
    assert keyed.score == pytest.approx(min(1.0, plain.score + 0.3), abs=1e-3)
    assert "keyword 'diagnose'" in keyed.why
    assert "keyword 'zigbee coordinator'" in keyed.why
    assert keyed.features["keywords"] == pytest.approx(0.3)


def test_keywords_whole_word_case_insensitive_counted_once() -> None:
    once = complexity("DIAGNOSE it", task="answer", keywords={"diagnose": 0.1})
    twice = complexity("diagnose it, diagnose it", task="answer", keywords={"diagnose": 0.1})
    inside = complexity("undiagnosed it", task="answer", keywords={"diagnose": 0.1})
    assert once.features["keywords"] == pytest.approx(0.1)
    assert twice.features["keywords"] == pytest.approx(0.1)
    assert inside.features["keywords"] == 0.0
    assert not inside.why


def test_negative_keyword_lowers_but_stays_bounded() -> None:
    text = "what is the weather"
    assert complexity(text, task="answer", keywords={"weather": -5.0}).score == 0.0
    assert complexity(PLANNING, task="summarize", keywords={"heating": 5.0}).score == 1.0


def test_score_bounded_under_random_inputs() -> None:
    rng = random.Random(1234)
    vocab = [
        "why", "then", "first", "and", "step", "by", "compare", "plan", "list", "all", "how",
        "do", "I", "if", "%", "3", "+", "4", "?", ".", "!", "\n", "1.", "-", "diagnose",
        "lights", "heating", "ünïcødé", "", " ", "vs.", "average", "explain",
    ]  # fmt: skip
    tasks = ["classify", "answer", "extract", "summarize", "other"]
    for _ in range(500):
        text = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 300)))
        if rng.random() < 0.2:
            text = "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 200)))
        keywords = {rng.choice(vocab): rng.uniform(-2, 2) for _ in range(rng.randint(0, 3))}
        result = complexity(text, task=rng.choice(tasks), keywords=keywords)
        assert 0.0 <= result.score <= 1.0, (text, result)
        for name, value in result.features.items():
            if name != "keywords":
                assert 0.0 <= value <= 1.0, (name, value)


def test_empty_text() -> None:
    result = complexity("", task="classify")
    assert result.score == 0.0
    assert result.why == []


# 1000 calls on 2 KB is ~0.3 s when the cost is linear (~0.3 ms a call); the
# timeout only trips if a pattern starts backtracking (~30 ms or more a call).
@pytest.mark.timeout(30)
def test_cost_is_linear_on_2kb_inputs() -> None:
    fragments = [
        PLANNING,
        "first " * 400,
        "if " * 700,
        "how " * 500,
        "1+" * 1000,
        ("- item\n" * 300),
    ]
    for fragment in fragments:
        text = (fragment * (2048 // len(fragment) + 1))[:2048]
        for _ in range(1000 // len(fragments)):
            assert 0.0 <= complexity(text, task="answer", keywords={"item": 0.1}).score <= 1.0
