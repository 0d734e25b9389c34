"""Grounding: a free string value counts as backed only by a content word of the request."""

from __future__ import annotations

import pytest

from agent.engine.guided import grounded


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("bedroom", "set the bedroom to 21"),
        ("the living room", "lights off in the Living-Room please"),
        ("light", "turn off the lights"),  # an ending apart
        ("21", "set it to 21 degrees"),
        ("seven am", "wake me up at seven"),
    ],
)
def test_a_value_with_a_content_word_of_the_text_is_grounded(value: str, text: str) -> None:
    assert grounded(value, text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("John Doe", "x"),
        # A schema description copied into a field: before, "a" (in "wake") and "of" were
        # enough to back it, as substrings.
        ("A time of day", "wake me at seven often"),
        ("the", "the kitchen"),  # filler alone backs nothing
        ("", "anything"),
        ("ham", "i am home"),  # a short word is backed by the same word, not a fragment
    ],
)
def test_filler_and_fragments_back_nothing(value: str, text: str) -> None:
    assert not grounded(value, text)
