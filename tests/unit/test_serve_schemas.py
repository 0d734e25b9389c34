"""The chat completions request subset, its errors, and SSE framing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from agent.engine.sampling import GREEDY, Sampling
from agent.serve.errors import from_validation
from agent.serve.schemas import ChatCompletionRequest
from agent.serve.sse import DONE, sse_data

USER = [{"role": "user", "content": "hi"}]


def _req(**kw: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": USER, **kw})


def test_minimal_request_defaults() -> None:
    r = _req()
    assert not r.stream
    assert r.stop_sequences() == []
    assert r.top_k() == 0
    assert not r.include_usage()
    assert r.token_budget(512) == 512


def test_unknown_fields_are_ignored() -> None:
    assert _req(user="u", presence_penalty=0.5, logit_bias={"1": 2}).model == "m"


def test_decoding_is_greedy_unless_a_temperature_is_asked() -> None:
    assert _req().sampling() == GREEDY
    assert _req(temperature=0, top_p=0.5, seed=3).sampling().greedy
    asked = _req(temperature=0.7, top_p=0.9, seed=3).sampling()
    assert asked == Sampling(temperature=0.7, top_p=0.9, seed=3)
    assert not asked.greedy


@pytest.mark.parametrize(
    ("kw", "budget"),
    [
        ({"max_tokens": 10}, 10),
        ({"max_completion_tokens": 7, "max_tokens": 10}, 7),
        ({"max_tokens": 10_000}, 512),
    ],
)
def test_token_budget(kw: dict[str, int], budget: int) -> None:
    assert _req(**kw).token_budget(512) == budget


def test_text_parts_are_joined_and_developer_is_system() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    messages = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": parts}]
    r = ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
    assert [m.as_engine_message() for m in r.messages] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]


def test_stop_string_or_list() -> None:
    assert _req(stop="x").stop_sequences() == ["x"]
    assert _req(stop=["x", "y"]).stop_sequences() == ["x", "y"]


def test_logprobs_options() -> None:
    assert _req(logprobs=True, top_logprobs=3).top_k() == 3
    assert _req(logprobs=True).top_k() == 0
    assert _req(stream=True, stream_options={"include_usage": True}).include_usage()


@pytest.mark.parametrize(
    ("kw", "where"),
    [
        ({"n": 2}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"top_logprobs": 2}, ""),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"stream_options": {"include_usage": True}}, ""),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content",
        ),
    ],
)
def test_invalid_requests_name_the_field(kw: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as exc:
        _req(**kw)
    error = from_validation(exc.value)
    assert error.status == 400
    assert error.body().error.code == "invalid_value"
    assert error.message.startswith(where)


def test_sse_frames_one_line_per_event() -> None:
    frame = sse_data({"content": "two\nlines", "x": "é"})
    assert frame.endswith(b"\n\n")
    lines = frame.decode().split("\n")
    assert lines[0].startswith("data: ")
    assert lines[1:] == ["", ""]
    assert json.loads(lines[0].removeprefix("data: ")) == {"content": "two\nlines", "x": "é"}
    assert DONE == b"data: [DONE]\n\n"
