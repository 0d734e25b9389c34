"""Tool sets for act: built-in TOML, pushed sets first, prompt keys that follow content."""

from __future__ import annotations

from pathlib import Path

from agent.actions import NO_TOOL_REASON, ToolSets, act_prompt, tool_threshold
from agent.config import AgentSettings
from edge_slm.contract import Request, Response, ToolCall, ToolSetSpec

_LIGHTS = {"type": "function", "function": {"name": "set_lights", "description": "Lights"}}


def test_builtin_home_set_has_six_tools_two_high_risk() -> None:
    home = ToolSets().get("home")
    assert home is not None
    assert len(home.tools) >= 6
    assert {t.name for t in home.tools if t.risk == "high"} == {"lock_door", "set_alarm"}


def test_pushed_sets_take_precedence_and_can_be_cleared() -> None:
    sets = ToolSets()
    mine = ToolSetSpec.model_validate({"tools": [_LIGHTS]})
    assert sets.set_pushed({"home": mine}) == ["home"]
    assert sets.get("home") == mine
    sets.set_pushed({})
    home = sets.get("home")
    assert home is not None
    assert home != mine
    assert sets.get("nothing") is None


def test_the_agent_config_registers_sets_between_built_in_and_pushed(tmp_path: Path) -> None:
    """``[tool_sets.<name>]`` in the agent's TOML: a new set, or one replacing a built-in
    set of its name; a set pushed in DeviceConfig still replaces it."""
    config = tmp_path / "agent.toml"
    config.write_text(
        'device_id = "kitchen"\n'
        "[tool_sets.garden]\n"
        'description = "Garden"\n'
        "[[tool_sets.garden.tools]]\n"
        'type = "function"\n'
        'function = { name = "water", description = "Water the garden" }\n'
        "[tool_sets.home]\n"
        "[[tool_sets.home.tools]]\n"
        'type = "function"\n'
        'function = { name = "set_lights", description = "Lights" }\n'
    )
    settings = AgentSettings.load(config)
    sets = ToolSets()
    assert sets.set_configured(settings.tool_sets) == ["garden", "home"]
    garden = sets.get("garden")
    assert garden is not None
    assert [t.name for t in garden.tools] == ["water"]
    home = sets.get("home")
    assert home is not None
    assert [t.name for t in home.tools] == ["set_lights"]  # the built-in set is replaced
    pushed = ToolSetSpec.model_validate({"tools": [{**_LIGHTS, "function": {"name": "dim"}}]})
    sets.set_pushed({"home": pushed})
    assert sets.get("home") == pushed
    sets.set_pushed({})
    assert sets.get("home") == home


def test_act_prompt_lists_tools_and_exemplars_and_its_key_follows_content() -> None:
    home = ToolSets().get("home")
    assert home is not None
    prompt = act_prompt(list(home.tools), home, "home")
    system = prompt.messages[0]["content"]
    assert "set_temperature(room, celsius)" in system
    assert '{"name":"none"}' in system
    assert len(prompt.messages) == 1 + 2 * len(home.exemplars)
    other = act_prompt(list(home.tools[:2]), home, "home")
    assert other.key != prompt.key  # a changed set is prefilled anew


def test_tool_threshold_reads_risk_from_the_request_tools() -> None:
    request = Request.model_validate(
        {
            "v": 1,
            "text": "unlock the door",
            "task": "act",
            "tools": [_LIGHTS, {**_LIGHTS, "function": {"name": "lock_door"}, "risk": "high"}],
        }
    )
    call = Response(id="x", ok=True, tool_call=ToolCall(name="lock_door"), confidence=0.5)
    assert tool_threshold(request, call, 0.9) == 0.9
    lights = Response(id="x", ok=True, tool_call=ToolCall(name="set_lights"), confidence=0.5)
    assert tool_threshold(request, lights, 0.9) is None
    none = Response(id="x", ok=True, confidence=0.0, reason=NO_TOOL_REASON)
    assert tool_threshold(request, none, 0.9) is None
