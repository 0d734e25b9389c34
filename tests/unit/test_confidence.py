import math

import numpy as np
import pytest

from agent.engine.confidence import (
    TokenStat,
    label_distribution,
    log_softmax,
    text_confidence,
    token_stat,
)


def test_log_softmax_normalizes() -> None:
    logp = log_softmax(np.array([[[1.0, 2.0, 3.0]]], dtype=np.float32))
    assert logp.shape == (3,)
    assert float(np.exp(logp).sum()) == pytest.approx(1.0)
    assert logp.argmax() == 2


def test_log_softmax_is_stable_for_huge_logits() -> None:
    logp = log_softmax(np.array([1e4, 1e4 - 1.0, -1e4]))
    assert np.isfinite(logp).all()
    assert math.exp(logp[0]) == pytest.approx(1 / (1 + math.exp(-1)))


def test_token_stat_reads_chosen_probability_and_margin() -> None:
    probs = np.array([0.7, 0.2, 0.1])
    stat = token_stat(np.log(probs), chosen=1)
    assert math.exp(stat.logprob) == pytest.approx(0.2)
    assert stat.margin == pytest.approx(0.5)


def test_text_confidence_is_one_for_certain_tokens() -> None:
    stats = [TokenStat(logprob=0.0, margin=1.0)] * 5
    assert text_confidence(stats) == pytest.approx(1.0)


def test_text_confidence_blend_matches_documented_formula() -> None:
    stats = [TokenStat(math.log(0.9), 0.8), TokenStat(math.log(0.5), 0.1)]
    p_geo = math.sqrt(0.9 * 0.5)
    expected = 0.5 * p_geo + 0.2 * 0.5 + 0.3 * 0.45
    assert text_confidence(stats) == pytest.approx(expected)


def test_one_shaky_token_lowers_confidence() -> None:
    sure = [TokenStat(math.log(0.95), 0.9)] * 10
    shaky = [*sure[:9], TokenStat(math.log(0.05), 0.0)]
    assert text_confidence(shaky) < text_confidence(sure) - 0.15


def test_text_confidence_empty_is_zero_and_bounded() -> None:
    assert text_confidence([]) == 0.0
    assert 0.0 <= text_confidence([TokenStat(-50.0, 0.0)]) <= 1.0


def test_label_distribution_is_softmax_of_sequence_logprobs() -> None:
    dist = label_distribution({"on": math.log(0.3), "off": math.log(0.1)})
    assert dist["on"] == pytest.approx(0.75)
    assert dist["off"] == pytest.approx(0.25)
    assert sum(dist.values()) == pytest.approx(1.0)


def test_label_distribution_handles_very_unlikely_labels() -> None:
    dist = label_distribution({"a": -1000.0, "b": -1001.0})
    assert dist["a"] > dist["b"] > 0


def test_label_distribution_needs_labels() -> None:
    with pytest.raises(ValueError, match="no labels"):
        label_distribution({})
