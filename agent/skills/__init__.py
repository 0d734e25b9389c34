"""Skills: named classify tasks (a label set with descriptions, verbalizers, exemplars).

A request names a skill (``"skill": "home_intents"``) instead of listing labels.
Where skills come from, later layers winning by name:

1. built-in: ``agent/skills/builtin/<name>.toml``, shipped with the package
   (off with ``builtin_skills = false``);
2. the agent's TOML config, ``[skills.<name>]``;
3. the retained ``DeviceConfig`` on the config topic (``skills``), applied live.

The wire model of one skill is :class:`edge_slm.contract.SkillSpec`; this module
turns specs into :class:`Skill` objects with their prompt, and keeps the lookup
table that the network thread reads and config pushes replace.
"""

from __future__ import annotations

import hashlib
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agent.engine.engine import FixedPrompt
from agent.engine.prompts import Message
from edge_slm.contract import SkillFit, SkillSpec

if TYPE_CHECKING:
    from edge_slm.head import Head

Origin = Literal["builtin", "config", "pushed"]

_DEFAULT_INSTRUCTIONS = "You classify requests to a smart-home device."


@dataclass(frozen=True, slots=True)
class Skill:
    name: str
    spec: SkillSpec
    origin: Origin
    fingerprint: str  # sha256 of the spec's canonical JSON, 16 hex digits

    @classmethod
    def of(cls, name: str, spec: SkillSpec, origin: Origin) -> Skill:
        # What does not change the prompt is left out, so a refit keeps kept prefixes.
        canonical = spec.model_dump_json(exclude={"fits", "embedding", "bands", "head"}).encode()
        return cls(name, spec, origin, hashlib.sha256(canonical).hexdigest()[:16])

    def fit_for(self, model: str) -> SkillFit | None:
        """The calibration fitted for edge model ``model``, if any."""
        return self.spec.fits.get(model)

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def verbalizers(self) -> dict[str, str]:
        """Label name -> the words the model is scored on."""
        return {name: label.words(name) for name, label in self.spec.labels.items()}

    def messages(self, *, exemplars: bool = True) -> list[Message]:
        """The fixed turns: a system prompt listing the answers, then exemplar turns.

        ``exemplars=False`` gives the system prompt alone: the prompt of a model tuned
        on the skill (``edge-agent models tune``), which has the examples in its weights.

        Exemplars are user/assistant pairs whose reply is the label's verbalizer, the
        same words scored for a request, so the examples show the model the answer
        format. They are interleaved label by label (first exemplar of every label,
        then the second, ...) so that no label is only near the end of the prompt.
        """
        words = self.verbalizers
        lines = [
            f"- {words[name]}" + (f": {label.description}" if label.description else "")
            for name, label in self.spec.labels.items()
        ]
        system = (
            (self.spec.instructions or _DEFAULT_INSTRUCTIONS).strip()
            + "\n\nPossible answers:\n"
            + "\n".join(lines)
            + "\n\nReply with one answer only, exactly as written."
        )
        turns: list[Message] = [{"role": "system", "content": system}]
        rounds = (
            max((len(label.exemplars) for label in self.spec.labels.values()), default=0)
            if exemplars
            else 0
        )
        for i in range(rounds):
            for name, label in self.spec.labels.items():
                if i < len(label.exemplars):
                    turns.append({"role": "user", "content": label.exemplars[i]})
                    turns.append({"role": "assistant", "content": words[name]})
        return turns

    def prompt(self, *, exemplars: bool = True) -> FixedPrompt:
        """The kept prefix; ``exemplars=False`` for a model tuned on the skill."""
        return FixedPrompt(
            name=self.name,
            key=self.fingerprint if exemplars else f"{self.fingerprint}:bare",
            messages=tuple(self.messages(exemplars=exemplars)),
            choices=self.verbalizers,
            calibrate=self.spec.calibrate,
        )


def parse_skill(text: str) -> SkillSpec:
    """One skill from TOML text (the format of ``builtin/*.toml``)."""
    return SkillSpec.model_validate(tomllib.loads(text))


def builtin_path(name: str) -> Path:
    """The file of built-in skill ``name`` (where ``edge-agent skills fit`` writes its fit)."""
    return Path(str(resources.files(__package__).joinpath("builtin", f"{name}.toml")))


def builtin_specs() -> dict[str, SkillSpec]:
    """The skills shipped in ``agent/skills/builtin/``, by file stem."""
    folder = resources.files(__package__).joinpath("builtin")
    specs = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            try:
                specs[entry.name.removesuffix(".toml")] = parse_skill(entry.read_text("utf-8"))
            except ValueError as exc:  # tomllib and pydantic errors; a packaging bug
                raise ValueError(f"built-in skill {entry.name}: {exc}") from exc
    return specs


class SkillRegistry:
    """Skills by name, read from any thread; the pushed layer is replaced atomically."""

    def __init__(
        self,
        configured: Mapping[str, SkillSpec] | None = None,
        *,
        builtin: bool = True,
    ) -> None:
        self._base: dict[str, Skill] = {}
        if builtin:
            self._base |= {n: Skill.of(n, s, "builtin") for n, s in builtin_specs().items()}
        self._base |= {n: Skill.of(n, s, "config") for n, s in (configured or {}).items()}
        self._lock = threading.Lock()
        self._skills = dict(self._base)
        #: Heads pushed by the relays (``cloud-relay learn``): skill -> (head, version).
        self._heads: dict[str, tuple[Head, int]] = {}

    def get(self, name: str) -> Skill | None:
        return self._skills.get(name)

    def names(self) -> list[str]:
        return sorted(self._skills)

    def all(self) -> list[Skill]:
        skills = self._skills
        return [skills[name] for name in sorted(skills)]

    def set_head(self, name: str, head: Head, version: int) -> None:
        """Use ``head`` for skill ``name`` from now on; HeadRejected when it does not fit."""
        from edge_slm.head import HeadRejected

        skill = self._skills.get(name)
        if skill is None:
            raise HeadRejected(f"no skill {name!r} on this device")
        if tuple(skill.labels) != head.labels:
            raise HeadRejected(f"labels {list(head.labels)} are not the skill's {skill.labels}")
        with self._lock:
            current = self._heads.get(name)
            if current is not None and current[1] >= version:
                raise HeadRejected(f"version {version} is not newer than {current[1]}")
            self._heads[name] = (head, version)

    def head(self, name: str) -> tuple[Head, int] | None:
        """The pushed head of skill ``name`` and its version, if one fits the skill now
        (a config push may have changed its labels since)."""
        found = self._heads.get(name)
        skill = self._skills.get(name)
        if found is None or skill is None or tuple(skill.labels) != found[0].labels:
            return None
        return found

    def head_version(self, name: str) -> int:
        """The version of the head skill ``name`` answers with: the pushed one's, 0 for none
        (the head fitted from its own text)."""
        return (self.head(name) or (None, 0))[1]

    def head_versions(self) -> dict[str, int]:
        """The head version in use per skill."""
        return {name: self.head_version(name) for name in sorted(self._skills)}

    def set_pushed(self, specs: Mapping[str, SkillSpec]) -> list[str]:
        """Replace the pushed layer; returns the names whose content changed."""
        pushed = {n: Skill.of(n, s, "pushed") for n, s in specs.items()}
        with self._lock:
            before = self._skills
            after = self._base | pushed
            self._skills = after  # one reference swap: readers see old or new, never half
        return sorted(
            n
            for n in before.keys() | after.keys()
            if (before.get(n) and before[n].fingerprint) != (after.get(n) and after[n].fingerprint)
        )
