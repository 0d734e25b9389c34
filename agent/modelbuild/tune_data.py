"""Training data of ``edge-agent models tune``: JSONL in, typed classify and act examples out.

Three line forms are accepted, told apart by their keys:

* ``eval``: the labelled set of ``tests/data/eval``,
  ``{"request": <Request>, "gold": {"label": ...}}``;
* ``pair``: ``{"request": <Request>, "answer": "..."}``, the answer being a label's
  name or its verbalizer (the words scored for it);
* ``relay``: a line of ``cloud-relay export``, ``{"device_id", "request_id", "kind",
  "task", "text", "labels", "sensor", "tools", "schema", "outcome", "cloud": {"label",
  "answer", "tool_call", ...}}``; the cloud model is the teacher.

Classify and act requests are examples: the tune teaches the model to pick labels and
to call tools. An act line names its call instead of a label: ``gold: {"call": ...}``
(eval), ``answer: {"name", "arguments"}`` (pair), or the export's ``cloud.tool_call``
(relay); a null call means no tool fits. Lines that are well formed but teach nothing
(another task, a failed escalation, a cloud answer that is none of the labels, a call
that does not validate against the tools) are *skipped* and counted; lines that are
malformed raise :class:`TuneDataError` with ``file:line``.

Each example's prompt is the one the agent gives the tuned model: a skill's system
prompt *without* its exemplars (the tuned weights carry them), or the bare
inline-labels prompt (``build_messages``). The target is the label's verbalizer,
followed by the end-of-turn token: what ``Engine.classify`` scores. An act example's
prompt is the act prompt the agent sends (``agent.actions.act_prompt``: the tool set's
instructions, tools and exemplars, found by name or, for a relay line, by its tools),
and its target is the call as compact JSON, what constrained decoding produces.

Splits: an example is held out by a hash of its key (never by position or seed), so
the split is stable when lines are added, reordered or re-exported. Items of the
project's eval set whose official split is ``heldout`` (``eval_split_of``, the rule of
``bench/eval_data.py``) are never trained on, matched by id *or* by their user turn.

Pure Python and pydantic: importable without torch or onnxruntime-genai.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import agent
from agent.actions import TOOL_SETS, act_prompt
from agent.engine.prompts import Message, build_messages, user_content
from agent.models.errors import ModelError
from agent.skills import SkillRegistry
from edge_slm.contract import (
    NO_TOOL,
    Request,
    Task,
    ToolSetSpec,
    ToolSpec,
    tool_call_schema,
    validation_errors,
)

Form = Literal["eval", "pair", "relay"]
#: The project's labelled eval set, present in a source checkout only.
EVAL_DIR = Path(next(iter(agent.__path__))).parent / "tests" / "data" / "eval"
_SPLIT_SALT = "edge-slm-tune-heldout:"


class TuneDataError(ModelError):
    """A malformed line (or file) of tuning data."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class Example:
    """One classify (or act) request with its teacher (or gold) answer, ready to prompt."""

    key: str  # unique in its file: the request id (relay: device_id/request_id)
    request: Request
    label: str
    form: Form
    line: int
    prompt_name: str  # "inline" or the skill's name
    fixed: tuple[Message, ...]  # the turns before the request's own user turn
    choices: Mapping[str, str]  # label -> the words scored for it
    calibrate: bool  # the skill's contextual-calibration setting (inline: unused)
    #: act only: the call ``{"name", "arguments"}``, or ``{"name": "none"}`` (no tool fits).
    call: dict[str, Any] | None = None
    tools: tuple[ToolSpec, ...] = ()  # act only: the tools it may call

    @property
    def user(self) -> str:
        """The request's user turn, as the agent writes it."""
        return user_content(self.request)

    @property
    def target(self) -> str:
        """What the tuned model must answer: the label's verbalizer, or the call as JSON."""
        if self.call is not None:
            return json.dumps(self.call, separators=(",", ":"), ensure_ascii=False)
        return self.choices[self.label]

    def chat(self) -> list[Message]:
        """The full prompt: the fixed turns, then the user turn."""
        return [*self.fixed, {"role": "user", "content": self.user}]

    def prompted_as(self, other: Example) -> Example:
        """This example with ``other``'s prompt (same label set): an eval item listing
        its labels inline, measured the way the data names its skill."""
        if self.label not in other.choices:
            return self
        skill = None if other.prompt_name == "inline" else other.prompt_name
        request = self.request.model_copy(update={"skill": skill, "labels": other.request.labels})
        return replace(
            self,
            request=request,
            prompt_name=other.prompt_name,
            fixed=other.fixed,
            choices=other.choices,
            calibrate=other.calibrate,
        )


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a data file holds: its examples, and why the other lines were skipped."""

    path: Path
    sha256: str
    examples: list[Example]
    skipped: Counter[str] = field(default_factory=Counter)


class _Skip(Exception):
    """A well-formed line that teaches nothing; its message is the reason."""


def _label_key(text: str) -> str:
    """Case, spacing, ``_``/``-`` and a final full stop ignored: ``Play music.`` is
    ``play_music``."""
    return " ".join(text.strip().rstrip(".").lower().replace("_", " ").replace("-", " ").split())


def _listing(choices: Mapping[str, str]) -> str:
    """The labels as an error message lists them, with their words where those differ."""
    return ", ".join(
        label if words == label else f"{label} ({words!r})" for label, words in choices.items()
    )


def _match_label(answer: str, choices: Mapping[str, str]) -> str | None:
    """The label whose name or verbalizer the answer is (case and spacing ignored)."""
    key = _label_key(answer)
    for label, words in choices.items():
        if key in (_label_key(label), _label_key(words)):
            return label
    return None


def _prompt(
    request: Request, skills: SkillRegistry
) -> tuple[str, tuple[Message, ...], dict[str, str], bool]:
    if request.skill is not None:
        skill = skills.get(request.skill)
        if skill is None:
            known = ", ".join(skills.names()) or "none"
            raise ValueError(f"unknown skill {request.skill!r} (known: {known})")
        fixed = tuple(skill.messages(exemplars=False))
        return skill.name, fixed, skill.verbalizers, skill.spec.calibrate
    labels = request.labels or []
    return "inline", tuple(build_messages(request)[:-1]), {x: x for x in labels}, True


def _relay_request(raw: dict[str, Any]) -> dict[str, Any]:
    # tools and schema too: an act or extract line is then a valid request, skipped by task.
    keys = ("kind", "task", "text", "labels", "sensor", "tools", "schema")
    fields = {k: raw.get(k) for k in keys}
    return {
        "v": 1,
        "id": str(raw.get("request_id") or ""),
        **{k: v for k, v in fields.items() if v is not None},
    }


def _form(raw: Any) -> Form:
    if not isinstance(raw, dict):
        raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
    if "request" in raw and "gold" in raw:
        return "eval"
    if "request" in raw and "answer" in raw:
        return "pair"
    if "request_id" in raw and "cloud" in raw:
        return "relay"
    raise ValueError(
        "unrecognized line: expected {'request', 'gold'} (eval set), "
        "{'request', 'answer'} (pairs) or a `cloud-relay export` record "
        f"{{'request_id', 'cloud', ...}}; got keys {sorted(raw)}"
    )


def _label(form: Form, raw: dict[str, Any], choices: Mapping[str, str]) -> str:
    """The example's label: the gold one, the pair's answer, or the cloud teacher's.

    Raises ValueError for a malformed line, :class:`_Skip` for a useless one.
    """
    if form == "eval":
        gold = raw["gold"]
        label = gold.get("label") if isinstance(gold, dict) else None
        if not isinstance(label, str) or label not in choices:
            raise ValueError(f"gold label {label!r} is none of the labels: {_listing(choices)}")
        return label
    if form == "pair":
        answer = raw["answer"]
        found = _match_label(answer, choices) if isinstance(answer, str) else None
        if found is None:
            raise ValueError(f"answer {answer!r} is none of the labels: {_listing(choices)}")
        return found
    if raw.get("outcome") not in (None, "ok"):
        raise _Skip(f"relay outcome {raw.get('outcome')}")
    cloud = raw["cloud"]
    if not isinstance(cloud, dict):
        raise TypeError("'cloud' must be an object")
    for said in (cloud.get("label"), cloud.get("answer")):
        if isinstance(said, str) and (hit := _match_label(said, choices)) is not None:
            return hit
    raise _Skip("cloud answer is none of the labels")


def _example(raw: Any, lineno: int, skills: SkillRegistry) -> Example:
    form = _form(raw)
    request = Request.model_validate(_relay_request(raw) if form == "relay" else raw["request"])
    key = (
        f"{raw['device_id']}/{request.id}"
        if form == "relay" and raw.get("device_id")
        else request.id
    )
    if request.task is Task.ACT:
        return _act_example(form, raw, request, key, lineno)
    if request.task is not Task.CLASSIFY:
        raise _Skip(f"task {request.task.value} (tune trains classify and act)")
    prompt_name, fixed, choices, calibrate = _prompt(request, skills)
    label = _label(form, raw, choices)
    return Example(
        key=key,
        request=request,
        label=label,
        form=form,
        line=lineno,
        prompt_name=prompt_name,
        fixed=fixed,
        choices=choices,
        calibrate=calibrate,
    )


def _tool_set_of(request: Request) -> tuple[str | None, ToolSetSpec | None, list[ToolSpec]]:
    """The request's tool set (named, or the built-in one with exactly its tools) and tools."""
    if request.tool_set is not None:
        spec = TOOL_SETS.get(request.tool_set)
        if spec is None:
            raise ValueError(f"unknown tool set {request.tool_set!r}")
        return request.tool_set, spec, list(request.tools or spec.tools)
    tools = list(request.tools or [])
    if not tools:
        raise ValueError("an act request needs tools or a tool_set")
    names = [t.name for t in tools]
    for name in TOOL_SETS.names():
        spec = TOOL_SETS.get(name)
        if spec is not None and [t.name for t in spec.tools] == names:
            return name, spec, tools
    return None, None, tools


def _taught_call(form: Form, raw: dict[str, Any]) -> Any:
    """The call a line teaches, as written: gold, the pair's answer, or the cloud's."""
    if form == "eval":
        gold = raw["gold"]
        if not isinstance(gold, dict) or "call" not in gold:
            raise ValueError("an act line's gold must be {'call': {...} or null}")
        return gold["call"]
    if form == "pair":
        return raw["answer"]
    if raw.get("outcome") not in (None, "ok"):
        raise _Skip(f"relay outcome {raw.get('outcome')}")
    cloud = raw["cloud"]
    if not isinstance(cloud, dict):
        raise TypeError("'cloud' must be an object")
    if cloud.get("tool_call") is None:
        raise _Skip("no cloud tool call")
    return cloud["tool_call"]


def _act_example(
    form: Form, raw: dict[str, Any], request: Request, key: str, lineno: int
) -> Example:
    set_name, spec, tools = _tool_set_of(request)
    call = _taught_call(form, raw)
    call = {"name": NO_TOOL} if call is None else call
    errors = validation_errors(tool_call_schema(tools), call)
    if errors:
        if form == "relay":  # the relay validated it against the tools it was sent
            raise _Skip("cloud call does not validate against the tools")
        raise ValueError(f"call {json.dumps(call)[:200]} is not valid: {'; '.join(errors)}")
    prompt = act_prompt(tools, spec, set_name or "inline")
    return Example(
        key=key,
        request=request,
        label=call["name"],
        form=form,
        line=lineno,
        prompt_name=prompt.name,
        fixed=prompt.messages,
        choices={},
        calibrate=False,
        call=call,
        tools=tuple(tools),
    )


def load_examples(path: Path, skills: SkillRegistry | None = None) -> Loaded:
    """Every classify and act example of a JSONL file; raises :class:`TuneDataError`."""
    path = Path(path)
    skills = skills or SkillRegistry()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TuneDataError(path, None, f"cannot read: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TuneDataError(path, None, f"not UTF-8 ({exc.reason})") from exc
    examples: list[Example] = []
    skipped: Counter[str] = Counter()
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            example = _example(json.loads(line), lineno, skills)
        except _Skip as skip:
            skipped[str(skip)] += 1
            continue
        except (ValueError, TypeError) as exc:  # json and pydantic errors are ValueErrors
            raise TuneDataError(path, lineno, _one_line(exc)) from exc
        if example.key in first_line:
            raise TuneDataError(
                path,
                lineno,
                f"duplicate request id {example.key!r} (first at line {first_line[example.key]})",
            )
        first_line[example.key] = lineno
        examples.append(example)
    return Loaded(path, hashlib.sha256(data).hexdigest(), examples, skipped)


def _one_line(exc: Exception) -> str:
    """A pydantic or json error as one readable line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for err in errors()[:3]:
            loc = ".".join(str(p) for p in err.get("loc", ())) or "request"
            parts.append(f"{loc}: {err.get('msg')}")
        return "invalid request: " + "; ".join(parts)
    return " ".join(str(exc).split())


# -- splits -------------------------------------------------------------------


def eval_split_of(item_id: str) -> Literal["dev", "heldout"]:
    """The official split of an eval-set item: ``bench.eval_data.split_of``, restated
    here because ``bench/`` is not installed with the package (a test keeps them equal).
    """
    return "heldout" if hashlib.sha256(item_id.encode()).digest()[0] % 2 == 0 else "dev"


def held_out(key: str, fraction: float) -> bool:
    """Whether an example of the user's data is held out: sha256 of its key, so the
    split never depends on line order or the seed."""
    digest = hashlib.sha256((_SPLIT_SALT + key).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True, slots=True)
class EvalSet:
    """The project's labelled eval set: classify items by family (file stem)."""

    families: dict[str, list[Example]]

    def heldout(self, families: Iterable[str]) -> list[Example]:
        return [
            e
            for fam in sorted(families)
            for e in self.families.get(fam, [])
            if eval_split_of(e.key) == "heldout"
        ]


def load_eval_set(root: Path = EVAL_DIR, skills: SkillRegistry | None = None) -> EvalSet | None:
    """The eval set under ``root``; None when there is none (an installed package)."""
    if not root.is_dir():
        return None
    skills = skills or SkillRegistry()
    families = {p.stem: load_examples(p, skills).examples for p in sorted(root.glob("*.jsonl"))}
    return EvalSet({f: items for f, items in families.items() if items})


@dataclass(frozen=True, slots=True)
class Plan:
    """Which examples train, which measure, and why."""

    train: list[Example]
    heldout: list[Example]  # the data's own held-out split
    official: list[Example]  # the eval set's held-out items of the families the data touches
    protected: int  # data examples dropped from training as official held-out items
    capped: int  # training examples left out by --max-examples


def _turn(example: Example) -> tuple[Task, str]:
    """An utterance as a task sees it: the same words are another item for another task."""
    return example.request.task, example.user


def plan(
    examples: Sequence[Example],
    *,
    heldout_fraction: float,
    eval_set: EvalSet | None,
    max_examples: int | None = None,
    seed: int = 0,
) -> Plan:
    """Split the data: held-out by hash, official held-out items never trained.

    ``max_examples`` caps the training examples, picked by a seeded shuffle.
    """
    if not 0 <= heldout_fraction < 1:
        raise ValueError("the held-out fraction must be in [0, 1)")
    protected_users: set[tuple[Task, str]] = set()
    protected_keys: set[str] = set()
    families: set[str] = set()
    # Per family, the data's most common prompt: the official items are measured in it.
    forms: dict[str, Counter[str]] = {}
    templates: dict[tuple[str, str], Example] = {}
    if eval_set is not None:
        official_items = eval_set.heldout(eval_set.families)
        protected_keys = {e.key for e in official_items}
        protected_users = {_turn(e) for e in official_items}
        by_key = {i.key: f for f, items in eval_set.families.items() for i in items}
        by_user = {_turn(i): f for f, items in eval_set.families.items() for i in items}
        for e in examples:
            fam = by_key.get(e.key) or by_user.get(_turn(e))
            if fam is not None:
                families.add(fam)
                forms.setdefault(fam, Counter())[e.prompt_name] += 1
                templates.setdefault((fam, e.prompt_name), e)
    train: list[Example] = []
    heldout: list[Example] = []
    protected = 0
    for e in examples:
        if e.key in protected_keys or _turn(e) in protected_users:
            protected += 1
        elif held_out(e.key, heldout_fraction):
            heldout.append(e)
        else:
            train.append(e)
    capped = 0
    if max_examples is not None and len(train) > max_examples:
        rng = random.Random(seed)  # noqa: S311 - a reproducible sample, not a secret
        keep = sorted(rng.sample(range(len(train)), max_examples))
        capped = len(train) - max_examples
        train = [train[i] for i in keep]
    official = []
    if eval_set is not None:
        for fam in sorted(families):
            template = templates[(fam, forms[fam].most_common(1)[0][0])]
            official += [e.prompted_as(template) for e in eval_set.heldout([fam])]
    return Plan(train, heldout, official, protected, capped)
