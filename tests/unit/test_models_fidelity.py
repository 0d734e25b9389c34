"""The fidelity metric itself (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.modelbuild.fidelity import compare


def test_identical_logits_agree_fully():
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(5, 50)).astype(np.float32) for _ in range(3)]
    r = compare(logits, [x.copy() for x in logits])
    assert r.tokens == 15
    assert r.prompts == 3
    assert r.top1_agreement == 1.0
    assert r.mean_kl == pytest.approx(0.0, abs=1e-9)


def test_disagreement_lowers_agreement_and_raises_kl():
    src = np.zeros((4, 10), dtype=np.float32)
    src[np.arange(4), [1, 2, 3, 4]] = 5.0
    onnx = src.copy()
    onnx[3] = 0.0
    onnx[3, 9] = 5.0  # last position picks another token
    r = compare([src], [onnx])
    assert r.top1_agreement == 0.75
    assert r.mean_kl > 0.1


def test_extra_padded_vocab_is_ignored():
    src = np.eye(3, 8, dtype=np.float32) * 4
    onnx = np.concatenate([src, np.full((3, 2), -1e4, dtype=np.float32)], axis=1)
    assert compare([src], [onnx]).top1_agreement == 1.0
