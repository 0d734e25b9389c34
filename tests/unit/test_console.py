"""Terminal output helpers: word-boundary cuts, table rows, the demo's reply lines."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from edge_slm.console import line, shorten, table
from edge_slm.rounding import confidence, usd

REASON = "confidence 0.26 < 0.40 (answer), but stays on the edge: the request said never"


def test_shorten_cuts_at_a_word_boundary() -> None:
    assert shorten(REASON, 40) == "confidence 0.26 < 0.40 (answer), but…"
    assert shorten(REASON, 30) == "confidence 0.26 < 0.40…"  # not inside "(answer)"
    assert shorten("a  b\n c", 10) == "a b c"  # one line
    assert shorten(REASON, len(REASON)) == REASON


@pytest.mark.parametrize("width", [1, 5, 16, 31, 70])
def test_shorten_never_exceeds_the_width(width: int) -> None:
    assert len(shorten(REASON, width)) <= width
    assert len(shorten("x" * 100, width)) == width  # one long word: cut inside it


def test_table_and_line_pad_and_align() -> None:
    assert table(("name", "n"), [("a", "10"), ("bbbbbb", "2")], right={1}).splitlines() == [
        "name     n",
        "a       10",
        "bbbbbb   2",
    ]
    assert line(["a", "b", ""], [3, 3, 5]) == "a    b"  # no trailing blanks


def test_rounding_for_people() -> None:
    assert usd(0.00021050000000000002) == 0.0002105
    assert usd(1234.5678912) == 1234.57
    assert confidence(0.7123456789012345) == 0.7123


def _demo() -> Any:
    return importlib.import_module("scripts.demo")


def test_demo_reason_and_error_are_cut_at_word_boundaries() -> None:
    demo = _demo()
    reason = 40
    reply = {
        "ok": True,
        "source": "cloud",
        "answer": "To bleed a radiator, follow these steps",
        "confidence": 0.51,
        "latency_ms": 2569,
        "reason": "complexity 0.55 >= 0.50 (multi-step (and then, step by step, compare)",
    }
    text = demo.row(9, "question", "Explain step by step how to bleed a radiator", reply, reason)
    assert text.endswith("  complexity 0.55 >= 0.50 (multi-step…")
    assert "To bleed a radiator, follow these…" in text
    fixed = sum(demo.COLUMNS.values()) + 2 * len(demo.COLUMNS)
    assert len(text) <= fixed + reason

    message = "request: Value error, task 'classify' requires 'labels' or 'skill'"
    bad = {"ok": False, "error": {"code": "invalid_request", "message": message}}
    text = demo.row(14, "bad input", "hi", bad, 10)
    assert len(text) <= fixed + 10
    assert text.endswith("task 'classify' requires…")  # whole words, no quote left open
