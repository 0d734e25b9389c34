"""Engine events to OpenAI content: stop cuts, logprob entries, counts, confidence."""

from __future__ import annotations

import pytest

from agent.engine.confidence import text_confidence
from agent.engine.engine import Prefilled, StreamEnd, TokenEvent
from agent.serve.completion import Collector, token_logprob


def _tok(i: int, text: str, logprob: float = -0.1) -> TokenEvent:
    return TokenEvent(token_id=i, text=text, token=text, logprob=logprob, margin=0.5)


def _end(reason: str = "length", n: int = 0) -> StreamEnd:
    return StreamEnd(
        finish_reason=reason,  # type: ignore[arg-type]
        confidence=0.0,
        prompt_tokens=9,
        completion_tokens=n,
        ttft_s=0.0,
        total_s=0.0,
    )


def _feed(c: Collector, events: list[object]) -> tuple[str, list[int]]:
    text, ids = "", []
    for e in events:
        r = c.feed(e)  # type: ignore[arg-type]
        text += r.text
        ids += [t.token_id for t in r.tokens]
    return text, ids


def test_plain_run_releases_every_token() -> None:
    c = Collector([])
    text, ids = _feed(c, [Prefilled(9, 0.0), _tok(1, "Hel"), _tok(2, "lo"), _end("stop", 2)])
    assert (text, ids) == ("Hello", [1, 2])
    assert (c.prompt_tokens, c.completion_tokens, c.finish_reason) == (9, 2, "stop")
    assert c.confidence == pytest.approx(text_confidence([_tok(0, "").stat()] * 2))


def test_stop_drops_tokens_inside_the_stop_sequence() -> None:
    c = Collector(["\nEND"])
    events = [Prefilled(3, 0.0), _tok(1, "ok"), _tok(2, "\n"), _tok(3, "END"), _tok(4, "x")]
    text, ids = _feed(c, events)
    assert text == "ok"
    assert ids == [1]  # "\n" starts inside the cut, "x" comes after it
    assert c.done
    assert c.finish_reason == "stop"
    assert c.completion_tokens == 3  # generated, even if cut off
    assert [t.token_id for t in c.kept] == [1]


def test_held_back_tokens_wait_for_their_text() -> None:
    c = Collector(["ab"])
    r1 = c.feed(_tok(1, "xa"))
    assert (r1.text, [t.token_id for t in r1.tokens]) == ("x", [1])
    r2 = c.feed(_tok(2, "c"))
    assert (r2.text, [t.token_id for t in r2.tokens]) == ("ac", [2])


def test_incomplete_character_token_is_released_with_the_next() -> None:
    c = Collector([])
    r1 = c.feed(_tok(1, ""))  # first byte of a two-byte character
    assert r1.tokens == []
    r2 = c.feed(_tok(2, "é"))
    assert [t.token_id for t in r2.tokens] == [1, 2]


def test_logprob_entry_shape() -> None:
    entry = token_logprob(_tok(5, "é", -0.25))
    assert (entry.token, entry.bytes) == ("é", [0xC3, 0xA9])
    assert entry.logprob == -0.25
    assert entry.top_logprobs == []
