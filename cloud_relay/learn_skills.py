"""Where the relay's learn loop gets skill definitions: the built-in skills, then a folder.

The built-in skills are the TOML files the agent ships (``agent/skills/builtin``,
package data of the same distribution). They are read as files, found through the
``agent`` package's location without importing ``agent.skills``, whose import pulls
in the device's inference engine. ``learn.skills_dir`` adds ``<name>.toml`` files
of the same format; one wins over a built-in skill of its name. Both are parsed
into the shared wire model, :class:`edge_slm.contract.SkillSpec`.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

from pydantic import ValidationError

from edge_slm.contract import SkillSpec


class SkillFileError(ValueError):
    """A skill file that cannot be read or is not a valid skill."""


def builtin_dir() -> Path | None:
    """The agent's built-in skill folder, or None where the agent package is absent."""
    spec = importlib.util.find_spec("agent")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "skills" / "builtin"
    return folder if folder.is_dir() else None


def read_folder(folder: Path) -> dict[str, SkillSpec]:
    """Every ``<name>.toml`` in ``folder`` as a skill named by the file's stem."""
    specs: dict[str, SkillSpec] = {}
    for path in sorted(folder.glob("*.toml")):
        try:
            specs[path.stem] = SkillSpec.model_validate(tomllib.loads(path.read_text("utf-8")))
        except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
            raise SkillFileError(f"skill file {path}: {exc}") from exc
    return specs


def load_skills(skills_dir: Path | None) -> dict[str, SkillSpec]:
    """The built-in skills, then those of ``skills_dir`` (winning by name)."""
    builtin = builtin_dir()
    specs = read_folder(builtin) if builtin is not None else {}
    if skills_dir is not None:
        if not skills_dir.is_dir():
            raise SkillFileError(f"learn.skills_dir {str(skills_dir)!r} is not a folder")
        specs |= read_folder(skills_dir)
    return specs
