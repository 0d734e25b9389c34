"""The routing-quality eval set (tests/data/eval) is well-formed and big enough."""

import json
from collections import Counter

import numpy as np
import pytest

from bench.eval_data import (
    EVAL_DIR,
    FAMILIES,
    answer_correct,
    load_all,
    load_family,
    normalize,
)
from bench.routing import auroc, escalation_curve, rate_reaching
from edge_slm.contract import Kind, Request, Task

MIN_COUNTS = {"voice": 100, "sensor": 60, "question": 40}
INTENTS = 12


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_line_is_a_contract_request_with_gold(family: str) -> None:
    lines = (EVAL_DIR / FAMILIES[family]).read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, 1):
        raw = json.loads(line)
        assert set(raw) == {"request", "gold"}, f"{family}:{lineno}"
        request = Request.model_validate(raw["request"])
        gold = raw["gold"]
        if request.task is Task.CLASSIFY:
            assert request.labels is not None
            assert gold["label"] in request.labels, f"{family}:{lineno}"
        else:
            answers = gold["answers"]
            assert answers, f"{family}:{lineno}"
            assert all(normalize(a) for a in answers), f"{family}:{lineno}: empty after normalize"


def test_family_counts_and_total() -> None:
    counts = Counter(item.family for item in load_all())
    for family, minimum in MIN_COUNTS.items():
        assert counts[family] >= minimum, counts
    assert sum(counts.values()) >= 200


def test_families_have_the_expected_shape() -> None:
    voice = load_family("voice")
    assert {i.request.kind for i in voice} == {Kind.VOICE}
    assert len({tuple(i.request.labels or ()) for i in voice}) == 1  # one fixed intent set
    intents = Counter(i.gold["label"] for i in voice)
    assert len(intents) == INTENTS
    assert min(intents.values()) >= 5, intents

    sensor = load_family("sensor")
    assert all(i.request.kind is Kind.SENSOR and i.request.readings for i in sensor)
    assert {tuple(i.request.labels or ()) for i in sensor} == {("normal", "warning", "critical")}
    states = Counter(i.gold["label"] for i in sensor)
    assert min(states.values()) >= 15, states

    questions = load_family("question")
    assert all(i.request.task is Task.ANSWER and i.request.max_tokens for i in questions)


def test_no_duplicate_texts_or_ids() -> None:
    items = load_all()
    texts = Counter(normalize(i.request.text) for i in items)
    assert [t for t, n in texts.items() if n > 1] == []
    ids = Counter(i.id for i in items)
    assert [i for i, n in ids.items() if n > 1] == []


@pytest.mark.parametrize(
    ("output", "answers", "expected"),
    [
        ("The capital of France is Paris.", ["paris"], True),
        ("A kilogram has 1,000 grams.", ["1000"], True),
        ("It boils at 1000 degrees.", ["100"], False),  # whole words only
        ("Carbon monoxide.", ["carbon monoxide", "co"], True),
        ("I am not sure.", ["paris"], False),
        ("wash for twenty seconds", ["twenty seconds"], True),
    ],
)
def test_answer_rule(output: str, answers: list[str], expected: bool) -> None:
    assert answer_correct(output, answers) is expected


def test_auroc_uses_ranks_and_counts_ties_half() -> None:
    correct = np.array([False, False, True, True])
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), correct) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), correct) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5, 0.5]), correct) == 0.5
    assert auroc(np.array([0.1, 0.5, 0.5, 0.9]), correct) == 0.875


def test_escalation_curve_sends_least_confident_first() -> None:
    conf = np.array([0.9, 0.1, 0.5, 0.3])
    edge = np.array([True, False, True, False])
    cloud = np.array([True, True, False, True])
    curve = escalation_curve(conf, edge, cloud)
    # order of escalation: 0.1 (wrong->right), 0.3 (wrong->right), 0.5 (right->wrong), 0.9
    assert curve.tolist() == [0.5, 0.75, 1.0, 0.75, 0.75]
    assert rate_reaching(curve, 1.0) == 0.5
    assert rate_reaching(curve, 1.01) is None
