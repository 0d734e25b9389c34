"""Where the learn loop gets skills: the agent's built-in TOMLs (read as files, without
importing the agent's runtime) and a configured folder that wins by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from cloud_relay.config import load_settings
from cloud_relay.learn_skills import SkillFileError, builtin_dir, load_skills

GARAGE = """
description = "garage door"
[labels.door_open]
exemplars = ["open the garage"]
[labels.door_close]
exemplars = ["close the garage"]
"""


def test_builtin_skills_are_the_agents_files() -> None:
    folder = builtin_dir()
    assert folder is not None
    assert (folder / "home_intents.toml").is_file()
    skills = load_skills(None)
    assert {"home_intents", "sensor_state"} <= set(skills)
    assert "lights_off" in skills["home_intents"].labels


def test_a_folder_adds_skills_and_wins_by_name(tmp_path: Path) -> None:
    (tmp_path / "garage.toml").write_text(GARAGE)
    (tmp_path / "home_intents.toml").write_text(GARAGE)  # replaces the built-in one
    skills = load_skills(tmp_path)
    assert list(skills["garage"].labels) == ["door_open", "door_close"]
    assert list(skills["home_intents"].labels) == ["door_open", "door_close"]
    assert "sensor_state" in skills


@pytest.mark.parametrize("text", ["labels = 3", "not toml ["])
def test_a_bad_skill_file_is_named(tmp_path: Path, text: str) -> None:
    (tmp_path / "broken.toml").write_text(text)
    with pytest.raises(SkillFileError, match=r"broken\.toml"):
        load_skills(tmp_path)
    with pytest.raises(SkillFileError, match="not a folder"):
        load_skills(tmp_path / "missing")


def test_reading_skills_does_not_import_the_agent_runtime() -> None:
    code = (
        "import sys; from cloud_relay.learn_skills import load_skills; load_skills(None); "
        "print(sorted(m for m in sys.modules if m.startswith('agent')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # located by its spec, never imported


def test_learn_settings_defaults() -> None:
    learn = load_settings().learn
    assert learn.interval_s == 3600
    assert 0 < learn.holdout < 1
    assert learn.encoders == ["minilm-l6-v2-int8"]  # the agents' default model.embedder


def test_learn_encoders_are_a_list_of_plain_distinct_names() -> None:
    # `encoder = "<name>"` (one encoder) is read as a list of it.
    assert load_settings(**{"learn.encoder": "mpnet-base-v2-int8"}).learn.encoders == [
        "mpnet-base-v2-int8"
    ]
    both = ["minilm-l6-v2-int8", "mpnet-base-v2-int8"]
    assert load_settings(**{"learn.encoders": both}).learn.encoders == both
    for bad, why in (([], "at least 1"), (["a", "a"], "twice"), (["a/b"], "plain name")):
        with pytest.raises(ValidationError, match=why):
            load_settings(**{"learn.encoders": bad})
