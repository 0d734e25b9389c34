"""The cloud's paraphrases of a skill's labels: the prompt, the reply's schema and parsing,
and what is kept (``cloud_relay.paraphrase``). The calls themselves, against a real
OpenAI-compatible server, are in ``tests/relay/test_learn.py``."""

from __future__ import annotations

import pytest

from cloud_relay.paraphrase import (
    STYLES,
    call_seed,
    fingerprint,
    keep,
    messages,
    parse,
    schema,
    shares,
)
from cloud_relay.store import Paraphrase
from edge_slm.contract import SkillSpec

SPEC = SkillSpec.model_validate(
    {
        "description": "Lights in a home.",
        "labels": {
            "lights_on": {"description": "switch lights on", "exemplars": ["lights on"]},
            "lights_off": {"description": "switch lights off", "exemplars": ["kill the lights"]},
        },
    }
)


def test_the_prompt_names_every_label_and_the_one_to_write_but_no_exemplar() -> None:
    system, user = messages(SPEC, "lights_off", STYLES[0], 5)
    text = system["content"] + user["content"]
    assert "lights_on (lights on: switch lights on)" in text
    assert "Write 5 different requests" in text
    assert "mean lights_off" in text
    assert STYLES[0] in text
    # The exemplars check the paraphrases: the cloud must not see them.
    assert "kill the lights" not in text


@pytest.mark.parametrize("each", [1, 3, 4, 7, 20])
def test_each_label_is_asked_for_its_count_split_over_the_styles(each: int) -> None:
    split = shares(each)
    assert sum(n for _, n in split) == each
    assert all(n > 0 for _, n in split)
    assert [style for style, _ in split] == list(STYLES[: len(split)])


def test_the_schema_bounds_the_reply() -> None:
    got = schema(6)["properties"]["requests"]
    assert got["maxItems"] == 6
    assert got["items"]["maxLength"] == 120


def test_a_reply_is_parsed_only_when_it_is_the_asked_json() -> None:
    assert parse('{"requests": ["a", "b"]}') == ["a", "b"]
    for bad in ('["a"]', '{"requests": []}', '{"requests": "a"}', "lights on\nlights up", ""):
        with pytest.raises(ValueError, match="not the asked JSON"):
            parse(bad)


def test_kept_paraphrases_are_clean_new_and_belong_to_one_label() -> None:
    kept = keep(
        SPEC,
        {
            "lights_on": [
                "  light   it up ",  # spaces collapsed
                "Light it up!",  # the same request again
                "Lights on.",  # one of the skill's own texts
                "",
                "x" * 121,  # too long
                "toggle the lights",  # written for both labels: ambiguous
            ],
            "lights_off": ["darkness please", "toggle the lights"],
        },
    )
    assert kept == [
        Paraphrase("lights_on", "light it up"),
        Paraphrase("lights_off", "darkness please"),
    ]


def test_the_fingerprint_follows_the_skill_text_the_count_and_the_temperature() -> None:
    base = fingerprint(SPEC, 20, 1.0)
    assert fingerprint(SPEC, 20, 1.0) == base
    assert fingerprint(SPEC, 10, 1.0) != base
    assert fingerprint(SPEC, 20, 0.0) != base
    changed = SPEC.model_copy(deep=True)
    changed.labels["lights_on"].exemplars.append("brighten up")
    assert fingerprint(changed, 20, 1.0) != base


def test_a_greedy_fingerprint_is_the_one_kept_before_sampling_existed() -> None:
    # What relays keep in their stores under this key must not be asked for again.
    assert fingerprint(SPEC, 20, 0.0) == "da4e9e512ac48169754e1e019fea0d3a"


def test_each_call_has_a_seed_of_its_own_that_the_same_text_repeats() -> None:
    key = fingerprint(SPEC, 20, 1.0)
    seeds = {call_seed(key, label, style) for label in SPEC.labels for style in STYLES}
    assert len(seeds) == len(SPEC.labels) * len(STYLES)
    assert call_seed(key, "lights_on", STYLES[0]) == call_seed(key, "lights_on", STYLES[0])
    assert call_seed(fingerprint(SPEC, 10, 1.0), "lights_on", STYLES[0]) not in seeds
