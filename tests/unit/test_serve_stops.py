"""Stop sequences over streamed pieces: the cut, the hold-back, nothing leaked."""

from __future__ import annotations

import pytest

from agent.serve.stops import StopMatcher


def _run(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    m = StopMatcher(stops)
    out = [m.push(p) for p in pieces]
    out.append(m.flush())
    return out, m.stopped


def test_no_stops_passes_everything_through() -> None:
    assert _run([], ["a", "b", ""]) == (["a", "b", "", ""], False)


def test_stop_inside_one_piece_cuts_there() -> None:
    out, stopped = _run(["END"], ["hello END world"])
    assert "".join(out) == "hello "
    assert stopped


def test_stop_spanning_pieces_is_never_leaked() -> None:
    out, stopped = _run(["\n\nUser:"], ["Hi", " there", "\n", "\n", "User", ":", " more"])
    assert out == ["Hi", " there", "", "", "", "", "", ""]
    assert stopped


def test_held_back_prefix_is_released_when_it_does_not_match() -> None:
    out, stopped = _run(["abc"], ["xa", "b", "d"])
    assert out == ["x", "", "abd", ""]
    assert not stopped


def test_held_back_tail_is_flushed_at_the_end() -> None:
    out, stopped = _run(["abc"], ["xyz a", "b"])
    assert out == ["xyz ", "", "ab"]
    assert not stopped


def test_earliest_stop_wins() -> None:
    out, _ = _run(["world", "lo"], ["hello world"])
    assert "".join(out) == "hel"


def test_overlapping_prefix_restarts_correctly() -> None:
    # "aab": the first "a" cannot start "ab" once the second "a" follows.
    out, stopped = _run(["ab"], ["a", "a", "b"])
    assert "".join(out) == "a"
    assert stopped


def test_nothing_after_a_stop() -> None:
    m = StopMatcher(["x"])
    assert m.push("1x2") == "1"
    assert m.push("3") == ""
    assert m.flush() == ""


def test_empty_stop_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        StopMatcher([""])
