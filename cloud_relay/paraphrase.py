"""The cloud as a teacher before any request escalates: paraphrases of a skill's labels.

A freshly written skill has a handful of texts per label, too few for its head to
be sure of itself; the escalations that would teach it take weeks to come. So the
learn loop asks the cloud LLM, once per version of the skill's text, for
``learn.paraphrases`` requests per label that a user might send (one call per label
and style, each showing the whole label set so that it writes none that belong to
another), keeps them in the store, and fits every head on them beside the skill's
own texts (:mod:`cloud_relay.learn`). Only the skill's own text goes out: no request
of any device is in the prompt.

Each reply is asked for as JSON under a schema (OpenAI's structured outputs,
``response_format``) and parsed with pydantic; one that is not is logged
(``paraphrases_invalid``) and its share dropped. A failing cloud keeps nothing, and
the next run asks again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, Field, ValidationError

from cloud_relay.breaker import CircuitBreaker
from cloud_relay.config import RelaySettings
from cloud_relay.llm import ChatRequest, LlmError, OpenAiChat
from cloud_relay.store import Paraphrase
from edge_slm.contract import SkillSpec
from edge_slm.head import skill_texts
from edge_slm.logs import get_logger

log = get_logger("cloud_relay.learn")

#: Bumped when the prompt changes, so every skill's paraphrases are written again.
PROMPT_VERSION = 1
#: The longest paraphrase kept, in characters (a request, not a paragraph).
LONGEST = 120
#: Room per asked paraphrase in the reply: its longest at one token per character, and
#: its JSON quoting. With 32, a sampled small model's long items ran out of tokens
#: mid-string, and every call of a run was lost. Only escaped characters (``\u00e9``:
#: several tokens each) can still run past it; such a reply is dropped and logged
#: (``paraphrases_invalid``). A hosted API bills the tokens written, not the cap.
TOKENS_EACH = LONGEST + 8


class _Written(BaseModel):
    """The reply's shape, and (``model_json_schema``) the schema it is asked for under."""

    requests: list[str] = Field(min_length=1)


def schema(each: int) -> dict[str, Any]:
    """The reply's JSON schema with at most ``each`` requests: a bound the server's
    constrained decoding enforces, so a repetitive model cannot run out of tokens."""
    out = _Written.model_json_schema()
    out["properties"]["requests"]["maxItems"] = each
    out["properties"]["requests"]["items"]["maxLength"] = LONGEST
    return out


class TeacherUnavailable(Exception):
    """The cloud LLM failed (down, refusing, too slow): nothing is kept, the next run asks."""


class Teacher(Protocol):
    """What the learn loop needs of the cloud: paraphrases of each label of a skill."""

    model: str  # kept with the paraphrases it wrote

    def paraphrase(self, skill: str, spec: SkillSpec, each: int) -> list[Paraphrase]:
        """``each`` per label, cleaned (:func:`keep`); raises TeacherUnavailable."""
        ...


def fingerprint(spec: SkillSpec, each: int, temperature: float) -> str:
    """Paraphrases are kept per this: the skill's texts, the count asked, the temperature
    they were asked at and the prompt."""
    texts, gold = skill_texts(spec)
    key: list[Any] = [PROMPT_VERSION, each, spec.description, spec.instructions, texts, gold]
    if temperature:  # greedy keys as before sampling existed: what relays kept stays valid
        key.insert(2, temperature)
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]


def call_seed(key: str, label: str, style: str) -> int:
    """One call's sampling seed: the same skill text asks the same way, run after run
    (reproducible where the server honours seeds), and every call draws differently."""
    return int(hashlib.sha256(f"{key}:{label}:{style}".encode()).hexdigest()[:8], 16)


#: One call per label and style, each asking for its share of the paraphrases: a
#: model asked for a long list in one go repeats itself (measured with a greedy
#: 1.5B: 80 kept of 192 asked in one call per label, 134 of 240 in one per style;
#: BENCHMARKS.md). The styles are a smart-home device's: voice and app requests.
STYLES = (
    "short, blunt commands",
    "polite or longer requests, some naming a room, a device or a detail",
    "indirect ones that state a need or a problem instead of the action",
    "speech-recognition transcripts with misheard words, fillers and typos",
)


def messages(spec: SkillSpec, label: str, style: str, count: int) -> list[dict[str, str]]:
    """One call's prompt: what the skill is, every label, the label and style to write.
    The exemplars are not shown: they check the paraphrases (``cloud_relay.learn``),
    so the cloud must not have seen them."""
    lines = []
    for name, item in spec.labels.items():
        about = f": {item.description}" if item.description else ""
        lines.append(f"- {name} ({item.words(name)}{about})")
    target = spec.labels[label]
    user = (
        f"A classifier sorts requests into these labels.\n"
        f"What it is for: {spec.description or 'not said'}\n"
        f"Labels:\n{chr(10).join(lines)}\n\n"
        f"Write {count} different requests a user might send that mean "
        f"{label} ({target.words(label)}) and none of the other labels: {style}. "
        'Reply with JSON: {"requests": ["...", ...]}.'
    )
    system = "You write training data for a text classifier. Reply with JSON only."
    if spec.instructions:
        system += f" The classifier's own instructions: {spec.instructions}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def shares(each: int) -> list[tuple[str, int]]:
    """``each`` paraphrases split over the styles (the first styles get the remainder)."""
    base, extra = divmod(each, len(STYLES))
    return [(style, base + (i < extra)) for i, style in enumerate(STYLES) if base + (i < extra)]


def parse(text: str) -> list[str]:
    """The requests of one reply; raises ValueError when it is not the asked JSON."""
    try:
        written = _Written.model_validate_json(text)
    except ValidationError as exc:
        raise ValueError(f"not the asked JSON: {exc.errors()[0]['msg']}") from exc
    return written.requests


def keep(
    spec: SkillSpec, written: Mapping[str, Sequence[str]], *, longest: int = LONGEST
) -> list[Paraphrase]:
    """Clean paraphrases: whitespace collapsed, blank and over-long ones dropped, and any
    that repeat the skill's own texts, another paraphrase, or appear under two labels."""
    own = {_key(t) for t in skill_texts(spec)[0]}
    first: dict[str, str] = {}  # key -> label it was first written for
    shared: set[str] = set()
    out: list[Paraphrase] = []
    for label, texts in written.items():
        for raw in texts:
            text = " ".join(raw.split())
            key = _key(text)
            if not key or len(text) > longest or key in own:
                continue
            if key in first:
                if first[key] != label:
                    shared.add(key)
                continue
            first[key] = label
            out.append(Paraphrase(label, text))
    return [p for p in out if _key(p.text) not in shared]


def _key(text: str) -> str:
    return " ".join(text.lower().strip(" .!?\"'").split())


class CloudTeacher:
    """:class:`Teacher` over the relay's OpenAI-compatible LLM (its ``llm`` settings).

    Called on the learn thread: each skill's calls run on an event loop of their own,
    so they never wait behind, nor hold up, the escalations on the relay's loop."""

    def __init__(self, settings: RelaySettings) -> None:
        self._s = settings
        self.model = settings.llm.model or ""

    def paraphrase(self, skill: str, spec: SkillSpec, each: int) -> list[Paraphrase]:
        started = time.monotonic()
        written = asyncio.run(self._ask_all(skill, spec, each))
        kept = keep(spec, written)
        log.info(
            "paraphrases_written",
            skill=skill,
            model=self.model,
            asked=each * len(spec.labels),
            labels_answered=len(written),
            kept=len(kept),
            seconds=round(time.monotonic() - started, 1),
        )
        return kept

    async def _ask_all(self, skill: str, spec: SkillSpec, each: int) -> dict[str, list[str]]:
        s = self._s
        breaker = CircuitBreaker(s.breaker.failure_threshold, s.breaker.open_s)
        llm = OpenAiChat(s.llm, model=self.model, breaker=breaker, max_concurrency=1)
        key = fingerprint(spec, each, s.learn.paraphrase_temperature)
        written: dict[str, list[str]] = {}
        try:
            # One call at a time: background work, which must not crowd out escalations
            # on a self-hosted server; each call gets the whole `total_timeout_s`.
            for label in spec.labels:
                for style, count in shares(each):
                    sampling = self._sampling(call_seed(key, label, style))
                    texts = await self._ask(
                        llm, skill, spec, label, style=style, count=count, sampling=sampling
                    )
                    written.setdefault(label, []).extend(texts)
        finally:
            await llm.aclose()
        return {label: texts for label, texts in written.items() if texts}

    def _sampling(self, seed: int) -> dict[str, Any]:
        temperature = self._s.learn.paraphrase_temperature
        return {"temperature": temperature, "seed": seed} if temperature else {"temperature": 0}

    async def _ask(
        self,
        llm: OpenAiChat,
        skill: str,
        spec: SkillSpec,
        label: str,
        *,
        style: str,
        count: int,
        sampling: dict[str, Any],
    ) -> list[str]:
        request = ChatRequest(
            messages=messages(spec, label, style, count),
            max_tokens=TOKENS_EACH * count + 16,
            extra={
                **sampling,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "requests", "schema": schema(count), "strict": False},
                },
            },
        )
        deadline = time.monotonic() + self._s.llm.total_timeout_s
        try:
            reply = await llm.complete(request, deadline=deadline)
        except LlmError as exc:
            raise TeacherUnavailable(f"{exc.failure}: {exc}") from exc
        try:
            return parse(reply.text)
        except ValueError as exc:  # this call's reply only: the others may be fine
            log.warning("paraphrases_invalid", skill=skill, label=label, error=str(exc))
            return []


def teacher_for(settings: RelaySettings) -> Teacher | None:
    """The relay's LLM as the teacher, or None when ``learn.paraphrases`` is 0."""
    if not settings.learn.paraphrases or not settings.llm.model:
        return None
    return CloudTeacher(settings)
