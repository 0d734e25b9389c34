"""extract with a schema and act on the real model: constrained, valid, per-field confidence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.actions import NO_TOOL_REASON, TOOL_SETS, act_prompt, answer_structured
from agent.engine.engine import Engine
from agent.models import DEFAULT_MODEL, ModelCache, default_cache_dir, get_entry
from agent.models.catalog import HubSource
from agent.profiles import load_profiles
from agent.toolset_fit import calibrate
from edge_slm.contract import Request, Task, decode, tool_call_schema, validation_errors

pytestmark = pytest.mark.model

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": ["string", "null"]},
        "age": {"type": ["integer", "null"]},
        "skills": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "skills"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Engine:
    return Engine(model_dir, name="smollm2-135m-instruct", provider="cpu", threads=2)


def _request(**fields: Any) -> Request:
    return decode(Request, {"v": 1, **fields})


@pytest.mark.parametrize(
    "text",
    ["x", "My name is Alice, I am 31 and I can weld.", "Bob (42) knows Python and Rust and Go."],
)
def test_extract_is_always_valid_under_the_schema(engine: Engine, text: str) -> None:
    reply = answer_structured(
        engine, _request(task="extract", text=text, schema=PERSON), max_tokens=64, stop=_never()
    )
    assert reply.ok
    if reply.data is None:  # out of length: no object, confidence 0, never an invented one
        assert reply.confidence == 0.0
    else:
        assert validation_errors(PERSON, reply.data) == []
        assert json.loads(reply.answer or "") == reply.data
        assert set(reply.field_confidence or {}) >= {"name", "age"}


def test_nothing_to_extract_is_not_a_confident_record(engine: Engine) -> None:
    """Issue #17: extract on "x" used to return a made-up person at confidence 0.65."""
    reply = answer_structured(
        engine, _request(task="extract", text="x", schema=PERSON), max_tokens=64, stop=_never()
    )
    invented = reply.data is not None and (reply.data["name"] not in (None, "x"))
    assert not invented or (reply.confidence or 0) < 0.4, reply  # 0.4: the extract threshold


def test_forced_tokens_do_not_count(engine: Engine) -> None:
    """A const value is forced by the grammar token by token: confidence 1, however unlikely."""
    schema = {
        "type": "object",
        "properties": {
            "kind": {"const": "zqxj-unlikely-marker"},
            "only": {"enum": ["solitary"]},
            "room": {"type": "string"},
        },
        "required": ["kind", "only", "room"],
        "additionalProperties": False,
    }
    messages = [
        {"role": "system", "content": "Reply with JSON."},
        {"role": "user", "content": "the bedroom"},
    ]
    result = engine.generate_structured(schema, messages=messages, max_tokens=48)
    assert result.value is not None
    assert result.value["kind"] == "zqxj-unlikely-marker"
    assert result.field_confidence["kind"] == 1.0
    assert result.field_confidence["only"] == 1.0
    assert result.field_confidence["room"] < 1.0  # the model chose it: a real probability
    assert result.forced_tokens >= 10  # the keys, the const, the punctuation


def test_act_calls_a_tool_or_none_always_valid(engine: Engine) -> None:
    home = TOOL_SETS.get("home")
    assert home is not None
    for text in ["set the bedroom to 21 degrees", "lights off in the kitchen", "tell me a joke"]:
        request = _request(task="act", text=text, tool_set="home")
        request = request.model_copy(update={"tools": list(home.tools)})
        reply = answer_structured(engine, request, max_tokens=64, stop=_never())
        assert reply.ok
        assert reply.field_confidence is not None
        assert "name" in reply.field_confidence
        if reply.tool_call is None:
            assert reply.confidence == 0.0  # no tool fits: routes like low confidence
        else:
            call = {"name": reply.tool_call.name, "arguments": reply.tool_call.arguments}
            assert validation_errors(tool_call_schema(list(home.tools)), call) == []
            raw = min(
                v
                for k, v in reply.field_confidence.items()
                if k == "name" or k.removeprefix("arguments.") in _required(home, call["name"])
            )
            fit = home.fits.get(engine.name)  # the set's calibration for this model, if fitted
            assert reply.confidence == pytest.approx(calibrate(raw, fit) if fit else raw, abs=1e-3)


def test_tool_set_prompt_is_prefilled_once_and_reused(engine: Engine) -> None:
    home = TOOL_SETS.get("home")
    assert home is not None
    prompt = act_prompt(list(home.tools), home, "home")
    schema = tool_call_schema(list(home.tools))
    kept = engine.generate_structured(schema, fixed=prompt, user="lights on", max_tokens=48)
    assert f"{prompt.name}@{prompt.key}" in engine.kept_prefixes
    again = engine.generate_structured(schema, fixed=prompt, user="lights on", max_tokens=48)
    fresh = engine.generate_structured(
        schema,
        messages=[*prompt.messages, {"role": "user", "content": "lights on"}],
        max_tokens=48,
    )
    assert kept.text == again.text == fresh.text
    assert kept.prompt_tokens == fresh.prompt_tokens
    # How much faster the kept prefix is: `python -m bench.skills`, not a timed assert.


def _required(home: Any, name: str) -> list[str]:
    tool = next(t for t in home.tools if t.name == name)
    return list(tool.function.parameters.get("required", []))


def _never() -> Any:
    from agent.engine.engine import StopWhen

    return StopWhen()


def test_task_act_is_a_task() -> None:
    assert Task("act") is Task.ACT


def _portfolio() -> list[str]:
    """The models a device profile names (``deploy/profiles.toml``) besides the default
    one, whose validity the tests above check."""
    return sorted({p.model for p in load_profiles().values()} - {DEFAULT_MODEL})


@pytest.mark.slow  # a larger model each: with scripts/test.sh --full
@pytest.mark.parametrize("model", _portfolio())
def test_every_portfolio_model_stays_valid_under_guidance(model: str) -> None:
    """Constrained decoding holds for each model a profile ships: every act reply is a
    valid call or ``none``, every extract a valid object (or, out of length, no object at
    confidence 0). Models this machine has not installed are skipped."""
    cache = ModelCache(default_cache_dir())
    if cache.is_current(model):
        path = cache.require(model)
    else:
        how = "download" if isinstance(get_entry(model).source, HubSource) else "build"
        pytest.skip(f"{model} is not installed here (edge-agent models {how} {model})")
    engine = Engine(path, name=model, provider="cpu", threads=2)
    home = TOOL_SETS.get("home")
    assert home is not None
    schema = tool_call_schema(list(home.tools))
    for text in [
        "set the living room to 19.5 degrees",
        "unlock the front door",
        "remind me to call mum in 20 minutes",
        "what's the capital of France",
    ]:
        request = _request(task="act", text=text, tool_set="home")
        request = request.model_copy(update={"tools": list(home.tools)})
        reply = answer_structured(engine, request, max_tokens=64, stop=_never())
        if reply.tool_call is None:
            assert reply.reason == NO_TOOL_REASON, (model, text, reply)
        else:
            call = {"name": reply.tool_call.name, "arguments": reply.tool_call.arguments}
            assert validation_errors(schema, call) == [], (model, text, call)
    for text in ["x", "My name is Alice, I am 31 and I can weld."]:
        reply = answer_structured(
            engine, _request(task="extract", text=text, schema=PERSON), max_tokens=64, stop=_never()
        )
        if reply.data is None:
            assert reply.finish_reason == "length", (model, reply)
            assert reply.confidence == 0.0, (model, reply)
        else:
            assert validation_errors(PERSON, reply.data) == [], (model, text, reply.data)
