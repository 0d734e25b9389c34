"""Decoding options: greedy by default, sampling spelled out for the runtime."""

from __future__ import annotations

import pytest

from agent.engine.sampling import GREEDY, Sampling


def test_greedy_sets_no_sampling_option() -> None:
    assert GREEDY.greedy
    assert GREEDY.search_options() == {"do_sample": False}


def test_sampling_sets_every_option_the_runtime_would_default() -> None:
    opts = Sampling(temperature=0.8, top_p=0.95, seed=7).search_options()
    assert opts == {
        "do_sample": True,
        "temperature": 0.8,
        "top_p": 0.95,
        "top_k": 0,
        "random_seed": 7,
    }


def test_a_seed_outside_the_runtime_range_is_folded_into_it() -> None:
    assert Sampling(temperature=1.0, seed=2**40 + 5).search_options()["random_seed"] == (
        (2**40 + 5) % (2**31 - 1)
    )
    assert Sampling(temperature=1.0, seed=-3).search_options()["random_seed"] >= 0
    assert Sampling(temperature=1.0).search_options()["random_seed"] == -1


@pytest.mark.parametrize(("temperature", "top_p"), [(-0.1, 1.0), (2.5, 1.0), (1.0, 0.0)])
def test_out_of_range_options_are_refused(temperature: float, top_p: float) -> None:
    with pytest.raises(ValueError, match="must be within"):
        Sampling(temperature=temperature, top_p=top_p)
