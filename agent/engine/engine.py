"""The on-device inference engine: onnxruntime-genai behind a small API.

One :class:`Engine` owns one loaded model and is used from one thread (the
inference worker). It picks the execution provider, sets the thread count
deliberately (the builder's default config runs on one core and halves decode
speed), applies the model's chat template, decodes greedily while reading the
logits of every step for confidence (streaming each token as it is chosen),
and scores classification labels without
free generation.

Classify scores each label in one multi-token ``append_tokens``: the model's
``logits`` output holds one row per appended token (``Generator.get_output``),
so a label costs one forward pass, then ``rewind_to`` back to the prompt. A
:class:`FixedPrompt` (a skill's instructions and exemplars) is prefilled once
into a kept generator; each request appends only its own turn, scores, and
rewinds to the end of the fixed part, so few-shot costs no per-request prefill.

Two scoring rules. ``full``: a label's score is the log-likelihood of all its
tokens and the end-of-turn token (inline labels; the routing thresholds were
fitted on it). ``prefix`` (skills): the log-likelihood of its *distinguishing
prefix*, the shortest start of its tokens (end-of-turn included) that no other
label shares, i.e. the probability that the model's reply commits to that label.
The events are disjoint, so their softmax is a distribution over the labels, and
a label whose first token is its own costs no forward pass at all.
"""

from __future__ import annotations

import json
import math
import os
import platform
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.engine.confidence import (
    TokenStat,
    label_distribution,
    log_softmax,
    text_confidence,
    token_stat,
)
from agent.engine.guided import Mirror, Step, field_confidence, guided_schema, load_tokenizer
from agent.engine.prompts import Message
from agent.engine.sampling import GREEDY, Sampling
from agent.models.manifest import tuned_without_exemplars
from edge_slm.contract import Scoring
from edge_slm.logs import get_logger

log = get_logger("agent.engine")

PROVIDERS = ("cpu", "cuda", "qnn", "dml")


class EngineError(Exception):
    """Base class of engine failures that map to an error reply."""


class DeadlineExceeded(EngineError):
    pass


class Cancelled(EngineError):
    pass


class PromptTooLong(EngineError):
    pass


class ProviderUnavailable(EngineError):
    pass


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    confidence: float
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    ttft_s: float
    total_s: float


@dataclass(frozen=True, slots=True)
class TopToken:
    """One of the most likely tokens at a step."""

    token_id: int
    text: str  # the token decoded on its own (see Engine.token_text)
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token, as :meth:`Engine.stream` yields it."""

    token_id: int
    text: str  # the new text; "" while a multi-byte character is incomplete
    token: str | None  # the token decoded on its own; only with logprobs=True
    logprob: float  # natural log of the chosen token's probability, <= 0
    margin: float  # p(top1) - p(top2) at this step; with logprob, a TokenStat
    top: tuple[TopToken, ...] = ()  # most likely first; empty unless asked for

    def stat(self) -> TokenStat:
        return TokenStat(logprob=self.logprob, margin=self.margin)


@dataclass(frozen=True, slots=True)
class Prefilled:
    """The first event of a stream: the prompt fits and has been prefilled.

    A consumer that stops early (a stop string, a client gone) sees no
    :class:`StreamEnd`, so what it must report about the prompt comes here.
    """

    prompt_tokens: int
    prefill_s: float


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of a stream. EOS is not counted in ``completion_tokens``."""

    finish_reason: Literal["stop", "length"]
    confidence: float
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    total_s: float


StreamEvent = Prefilled | TokenEvent | StreamEnd


@dataclass(frozen=True, slots=True)
class Structured:
    """A JSON value decoded under a schema, with each value's confidence."""

    value: Any  # the parsed JSON; None when generation ran out of length first
    text: str
    field_confidence: dict[str, float]  # leaf values by dot path (agent.engine.guided)
    prompt_tokens: int
    completion_tokens: int
    forced_tokens: int  # tokens the grammar chose, not the model
    finish_reason: Literal["stop", "length"]
    total_s: float


@dataclass(frozen=True, slots=True)
class Classification:
    label: str
    confidence: float
    scores: dict[str, float]
    prompt_tokens: int
    scored_tokens: int
    total_s: float
    basis: str | None = None  # why, when a rule decided instead of the model


@dataclass(frozen=True, slots=True)
class FixedPrompt:
    """The fixed part of a classify prompt (a skill's), prefilled once and kept.

    ``messages`` are the turns before the request's own user turn (system prompt,
    exemplar turns); ``choices`` maps each label to the words scored for it (its
    verbalizer). ``key`` identifies the content: a changed prompt needs a new key,
    and a new key under the same ``name`` replaces the kept state of the old one.
    """

    name: str
    key: str
    messages: tuple[Message, ...]
    choices: Mapping[str, str]
    calibrate: bool = True  # the default of ``Engine.classify_fixed(calibrate=...)``


@dataclass(slots=True)
class _Prefix:
    """A generator holding a fixed prompt's KV cache, and what a request needs with it."""

    key: str
    gen: Any
    length: int  # tokens of the fixed part; every request rewinds to here
    tail: str  # chat-template text after the user content (end of turn, assistant header)
    capacity: int  # the generator's max_length


#: Stands in for the request's text when a chat template is split around it.
_SLOT = "@@EDGE_SLM_REQUEST_SLOT@@"
#: Room for the request's own turn in a kept generator (longer ones take the fresh path).
PREFIX_ROOM = 256
#: The content-free request whose label distribution calibrates a fixed prompt.
CONTENT_FREE = "N/A"


def distinguishing_prefixes(choices: Mapping[str, list[int]]) -> dict[str, list[int]]:
    """Each choice cut to the shortest start that no other choice begins with.

    Choices are token lists ending in the end-of-turn token, so one that is a
    prefix of another keeps its end token and stays distinguishable.
    """

    def common(a: list[int], b: list[int]) -> int:
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return n

    cut = {}
    for label, tokens in choices.items():
        shared = max((common(tokens, t) for o, t in choices.items() if o != label), default=0)
        cut[label] = tokens[: min(len(tokens), shared + 1)]
    return cut


def _candidates(requested: str, og: Any) -> list[str]:
    if requested != "auto":
        return [requested]
    found = []
    if og.is_cuda_available():
        found.append("cuda")
    if og.is_dml_available():
        found.append("dml")
    # The QNN EP ships in x86 wheels too, but only Snapdragon (arm64) has the NPU.
    if og.is_qnn_available() and platform.machine().lower() in ("aarch64", "arm64"):
        found.append("qnn")
    return [*found, "cpu"]


@dataclass(frozen=True, slots=True)
class StopWhen:
    """When a running generation must give up: a deadline or a cancel event."""

    deadline: float | None = None  # time.monotonic() clock
    cancel: threading.Event | None = None

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("generation cancelled: the agent is shutting down")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded("deadline passed during generation")


_NEVER = StopWhen()


class Engine:
    """A loaded onnxruntime-genai model."""

    def __init__(
        self,
        model_dir: Path,
        *,
        name: str,
        provider: str = "auto",
        threads: int = 0,
        max_prefixes: int = 4,
        spin: bool = True,
    ) -> None:
        import onnxruntime_genai as og

        self._og = og
        self.name = name
        self.model_dir = model_dir
        self.threads = threads or len(os.sched_getaffinity(0))
        #: Whether onnxruntime's pool threads spin-wait after a run instead of sleeping.
        self.spin = spin
        genai_config = json.loads((model_dir / "genai_config.json").read_text())
        self.context_length = int(genai_config["model"]["context_length"])
        eos = genai_config["model"]["eos_token_id"]
        self._eos_ids = frozenset(eos if isinstance(eos, list) else [eos])
        # The token that ends an assistant turn; a label must be followed by it.
        self._end_id = eos[0] if isinstance(eos, list) else eos
        #: Whether skill prompts carry their exemplars: not for a model tuned on them.
        self.skill_exemplars = not tuned_without_exemplars(model_dir)
        self.provider, self._model = self._load(provider)
        self._tokenizer = og.Tokenizer(self._model)
        #: Decode speed of the latest free-text generation (telemetry reads it).
        self.last_decode_tok_s: float | None = None
        #: Fixed prompts kept prefilled, least recently used first; 0 turns reuse off.
        #: Each holds a KV cache of up to ``len(prefix) + PREFIX_ROOM`` tokens.
        self.max_prefixes = max_prefixes
        self._prefixes: OrderedDict[str, _Prefix] = OrderedDict()
        #: Content-free label distributions of fixed prompts, for calibration.
        self._priors: OrderedDict[str, dict[str, float]] = OrderedDict()
        #: (tokens, template tail) of fixed prompts' heads, for ``fixed_prompt_size``.
        self._heads: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._ll_tokenizer: Any = None  # llguidance's, built on the first structured call

    def _load(self, requested: str) -> tuple[str, Any]:
        og = self._og
        candidates = _candidates(requested, og)
        errors: dict[str, str] = {}
        for provider in candidates:
            config = og.Config(str(self.model_dir))
            config.clear_providers()
            if provider != "cpu":
                config.append_provider(provider)
            options: dict[str, int | str] = {
                "intra_op_num_threads": self.threads,
                "inter_op_num_threads": 1,
            }
            if not self.spin:  # unknown keys become session config entries in genai
                options["session.intra_op.allow_spinning"] = "0"
                options["session.inter_op.allow_spinning"] = "0"
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
            try:
                model = og.Model(config)
            except Exception as exc:  # noqa: BLE001 - the runtime raises bare RuntimeError
                errors[provider] = str(exc)
                log.warning("provider_failed", provider=provider, error=str(exc))
                continue
            in_use = str(model.device_type).lower()
            if requested == "auto" and in_use == "cpu" and errors:
                log.warning(
                    "provider_fallback_to_cpu",
                    tried=list(errors),
                    hint="accelerator runtime present but unusable; running on CPU",
                )
            log.info(
                "model_loaded",
                model=self.name,
                provider=in_use,
                threads=self.threads,
                spin=self.spin,
            )
            return in_use, model
        raise ProviderUnavailable(
            f"no execution provider could load {self.model_dir}: "
            + "; ".join(f"{p}: {e}" for p, e in errors.items())
        )

    # -- tokens ----------------------------------------------------------

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        prompt = self._tokenizer.apply_chat_template(
            json.dumps(list(messages)), add_generation_prompt=True
        )
        return [int(t) for t in self._tokenizer.encode(prompt)]

    def _generator(
        self,
        prompt_ids: list[int],
        budget: int,
        *,
        guidance: dict[str, Any] | None = None,
        sampling: Sampling = GREEDY,
    ) -> Any:
        if len(prompt_ids) + budget > self.context_length:
            raise PromptTooLong(
                f"prompt of {len(prompt_ids)} tokens plus {budget} new tokens exceeds the "
                f"model's context of {self.context_length}"
            )
        og = self._og
        params = og.GeneratorParams(self._model)
        params.set_search_options(**sampling.search_options(), max_length=len(prompt_ids) + budget)
        if guidance is not None:
            params.set_guidance("json_schema", json.dumps(guided_schema(guidance)))
        return og.Generator(self._model, params)

    # -- tasks -----------------------------------------------------------

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        stop: StopWhen = _NEVER,
        logprobs: bool = False,
        top_logprobs: int = 0,
        sampling: Sampling = GREEDY,
    ) -> Iterator[StreamEvent]:
        """Decoding (greedy unless ``sampling`` says otherwise) as events:
        :class:`Prefilled`, a :class:`TokenEvent` per token, then :class:`StreamEnd`.

        This is the only decode loop: :meth:`generate` drains it. The consumer may
        stop early by closing the iterator (``break``); nothing is decoded after
        that. ``logprobs`` adds each token decoded on its own (``TokenEvent.token``,
        about 20 us a token); ``top_logprobs`` > 0 adds that many most likely
        alternatives (an ``argpartition`` of the step's log-probs, O(vocab)).
        """
        start = time.perf_counter()
        stop.check()
        ids = self.encode_chat(messages)
        gen = self._generator(ids, max_tokens, sampling=sampling)
        gen.append_tokens(ids)  # prefill
        yield Prefilled(prompt_tokens=len(ids), prefill_s=time.perf_counter() - start)
        # The stream holds back bytes of an unfinished UTF-8 character, so pieces
        # concatenate to exactly ``decode(all tokens)``; per-token decode would not.
        pieces = self._tokenizer.create_stream()
        stats: list[TokenStat] = []
        finish: Literal["stop", "length"] = "length"
        ttft = 0.0
        while not gen.is_done():
            stop.check()
            logits = gen.get_logits()  # distribution of the token about to be chosen
            gen.generate_next_token()
            token = int(gen.get_next_tokens()[0])
            if not ttft:
                ttft = time.perf_counter() - start
            if token in self._eos_ids:
                finish = "stop"
                break
            stat, top = self._step(logits, token, top_logprobs)
            stats.append(stat)
            yield TokenEvent(
                token_id=token,
                text=str(pieces.decode(token)),
                token=self.token_text(token) if logprobs else None,
                logprob=stat.logprob,
                margin=stat.margin,
                top=top,
            )
        yield StreamEnd(
            finish_reason=finish,
            confidence=text_confidence(stats),
            prompt_tokens=len(ids),
            completion_tokens=len(stats),
            ttft_s=ttft,
            total_s=time.perf_counter() - start,
        )

    def _step(
        self, logits: Any, token: int, top_logprobs: int
    ) -> tuple[TokenStat, tuple[TopToken, ...]]:
        if top_logprobs <= 0:
            return token_stat(logits, token), ()
        logp = log_softmax(logits)  # once, for both the stat and the alternatives
        k = min(max(top_logprobs, 2), logp.shape[0])
        best = np.argpartition(logp, -k)[-k:]
        best = best[np.argsort(-logp[best], kind="stable")]
        p1, p2 = (math.exp(float(logp[i])) for i in best[:2])
        top = tuple(
            TopToken(token_id=int(i), text=self.token_text(int(i)), logprob=float(logp[i]))
            for i in best[:top_logprobs]
        )
        return TokenStat(logprob=float(logp[token]), margin=p1 - p2), top

    def token_text(self, token: int) -> str:
        """One token on its own; a piece of a multi-byte character decodes to U+FFFD."""
        return str(self._tokenizer.decode([token]))

    def generate(
        self, messages: Sequence[Message], *, max_tokens: int, stop: StopWhen = _NEVER
    ) -> Generation:
        """Greedy decoding with per-token confidence; stops at EOS or ``max_tokens``."""
        parts: list[str] = []
        for event in self.stream(messages, max_tokens=max_tokens, stop=stop):
            if isinstance(event, TokenEvent):
                parts.append(event.text)
            if not isinstance(event, StreamEnd):
                continue
            decode_s = event.total_s - event.ttft_s
            if event.completion_tokens > 1 and decode_s > 0:
                self.last_decode_tok_s = (event.completion_tokens - 1) / decode_s
            return Generation(
                text="".join(parts).strip(),
                confidence=event.confidence,
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                finish_reason=event.finish_reason,
                ttft_s=event.ttft_s,
                total_s=event.total_s,
            )
        raise AssertionError("Engine.stream ended without a StreamEnd")  # pragma: no cover

    def generate_structured(
        self,
        schema: dict[str, Any],
        *,
        messages: Sequence[Message] | None = None,
        fixed: FixedPrompt | None = None,
        user: str = "",
        max_tokens: int,
        stop: StopWhen = _NEVER,
        sampling: Sampling = GREEDY,
    ) -> Structured:
        """Decoding under ``schema`` (compact JSON), with per-value confidence; greedy
        unless ``sampling`` says otherwise.

        Either ``messages`` (prefilled afresh), or a ``fixed`` prompt and the request's
        ``user`` turn: the fixed part (a tool set's instructions and exemplars) is kept
        prefilled in a generator that carries the schema's grammar, and each request
        appends its turn, decodes and rewinds, like ``classify_fixed``. ``fixed.key``
        must change with the schema.
        """
        start = time.perf_counter()
        stop.check()
        if self._ll_tokenizer is None:
            self._ll_tokenizer = load_tokenizer(self.model_dir, self._eos_ids)
        mirror = Mirror(self._ll_tokenizer, schema)
        # A kept prefix's generator was made greedy; a sampled request prefills afresh.
        if fixed is not None and self.max_prefixes > 0 and sampling.greedy:
            entry = self._prefix(fixed, max_tokens, guidance=schema)
            suffix = self._encode(user + entry.tail)
            if entry.length + len(suffix) + max_tokens <= entry.capacity:
                try:
                    entry.gen.append_tokens(suffix)
                    return self._decode_structured(
                        entry.gen, mirror, entry.length + len(suffix), max_tokens, stop, start=start
                    )
                finally:
                    try:
                        entry.gen.rewind_to(entry.length)
                    except Exception:
                        self._prefixes.pop(entry.key, None)
                        raise
            log.info("prefix_room_exceeded", prompt=fixed.name, tokens=len(suffix))
        if fixed is not None:
            messages = [*fixed.messages, {"role": "user", "content": user}]
        ids = self.encode_chat(messages or [])
        gen = self._generator(ids, max_tokens, guidance=schema, sampling=sampling)
        gen.append_tokens(ids)
        return self._decode_structured(gen, mirror, len(ids), max_tokens, stop, start=start)

    def _decode_structured(
        self,
        gen: Any,
        mirror: Mirror,
        prompt_tokens: int,
        max_tokens: int,
        stop: StopWhen,
        *,
        start: float,
    ) -> Structured:
        pieces = self._tokenizer.create_stream()
        text = ""
        steps: list[Step] = []
        finish: Literal["stop", "length"] = "length"
        while not gen.is_done() and len(steps) < max_tokens:
            stop.check()
            logits = gen.get_logits()  # before the runtime's mask: the mirror applies it
            gen.generate_next_token()
            token = int(gen.get_next_tokens()[0])
            if token in self._eos_ids:
                finish = "stop"
                break
            piece = str(pieces.decode(token))
            alone = self.token_text(token)
            raw = b"" if "\ufffd" in alone else alone.encode()
            logprob, forced = mirror.step(logits, token, raw)
            steps.append(Step(len(text), len(text) + len(piece), logprob, forced))
            text += piece
        value: Any = None
        confidences: dict[str, float] = {}
        try:
            value = json.loads(text)
            confidences = field_confidence(text, steps)
        except (json.JSONDecodeError, IndexError):
            finish = "length"
        if mirror.lost:
            log.warning("guidance_mirror_lost", hint="per-field confidence not measured")
        return Structured(
            value=value,
            text=text,
            field_confidence=confidences,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(steps),
            forced_tokens=sum(s.forced for s in steps),
            finish_reason=finish,
            total_s=time.perf_counter() - start,
        )

    def classify(
        self, messages: Sequence[Message], labels: Sequence[str], *, stop: StopWhen = _NEVER
    ) -> Classification:
        """Score every label's likelihood as the reply; no free generation.

        The prompt is prefilled once; each label is appended in one forward pass,
        read position by position, and rewound.
        """
        start = time.perf_counter()
        stop.check()
        ids = self.encode_chat(messages)
        choices = self._choice_tokens({label: label for label in labels})
        gen = self._generator(ids, max(map(len, choices.values())))
        gen.append_tokens(ids)
        scores, steps = self._score(gen, len(ids), choices, stop)
        return self._classification(scores, len(ids), steps, start)

    def classify_fixed(
        self,
        prompt: FixedPrompt,
        user: str,
        *,
        reuse: bool = True,
        scoring: Scoring = "full",
        calibrate: bool | None = None,
        stop: StopWhen = _NEVER,
    ) -> Classification:
        """Classify ``user`` (the request's turn) after a fixed prompt, scoring its choices.

        With ``reuse`` the fixed part comes from a kept generator (prefilled on first
        use), so only the request's own tokens are run; without it, or when the
        request does not fit the kept generator's room, everything is prefilled
        afresh. Both run the same tokens, so they score the same up to float noise.
        ``scoring``: see the module docstring. ``calibrate``: divide the label
        distribution by the one the prompt gives a content-free request (``N/A``),
        then renormalize ("contextual calibration", Zhao et al. 2021): it removes the
        prompt's own bias towards some labels (the last exemplar's, a frequent first
        token). The prior costs one extra classification per prompt and is kept.
        ``None``: as the prompt says (``FixedPrompt.calibrate``).
        """
        start = time.perf_counter()
        stop.check()
        scores, prompt_tokens, steps = self._fixed_scores(prompt, user, reuse, scoring, stop)
        if prompt.calibrate if calibrate is None else calibrate:
            prior = self._prior(prompt, reuse, scoring, stop)
            scores = {
                label: math.log(p) - math.log(prior[label])
                for label, p in label_distribution(scores).items()
            }
        return self._classification(scores, prompt_tokens, steps, start)

    def fixed_prompt_size(self, prompt: FixedPrompt, user: str, label: str) -> tuple[int, int]:
        """(prompt tokens, answer tokens) of ``user`` classified as ``label``, not run.

        What ``classify_fixed`` would have read, and the label's own tokens: the size
        of an answer that a rule or the embedding stage gave instead of the model, so
        that it is priced like one the model gave. Tokenizer only: no model call.
        """
        key = f"{prompt.name}@{prompt.key}"
        head = self._heads.get(key)
        if head is None:
            text, tail = self._split_template(prompt.messages)
            head = (len(self._encode(text)), tail)
            self._heads[key] = head
            while len(self._heads) > 4 * max(1, self.max_prefixes):
                self._heads.popitem(last=False)
        answer = self._choice_tokens({label: prompt.choices[label]})[label]
        return head[0] + len(self._encode(user + head[1])), len(answer)

    def _prior(
        self,
        prompt: FixedPrompt,
        reuse: bool,
        scoring: Scoring,
        stop: StopWhen,
    ) -> dict[str, float]:
        key = f"{prompt.name}@{prompt.key}:{scoring}"
        prior = self._priors.get(key)
        if prior is None:
            raw, _, _ = self._fixed_scores(prompt, CONTENT_FREE, reuse, scoring, stop)
            prior = label_distribution(raw)
            for old in [k for k in self._priors if k.startswith(f"{prompt.name}@")]:
                if not old.startswith(f"{prompt.name}@{prompt.key}:"):
                    del self._priors[old]  # the same prompt name with older content
            self._priors[key] = prior
            while len(self._priors) > 4 * max(1, self.max_prefixes):
                self._priors.popitem(last=False)
        return prior

    def _fixed_scores(
        self,
        prompt: FixedPrompt,
        user: str,
        reuse: bool,
        scoring: Scoring,
        stop: StopWhen,
    ) -> tuple[dict[str, float], int, int]:
        """Raw label log-likelihoods, prompt tokens and scored tokens."""
        choices = self._choice_tokens(prompt.choices)
        if scoring == "prefix":
            choices = distinguishing_prefixes(choices)
        depth = max(map(len, choices.values()))
        if reuse and self.max_prefixes > 0:
            entry = self._prefix(prompt, depth)
            suffix = self._encode(user + entry.tail)
            if entry.length + len(suffix) + depth <= entry.capacity:
                return self._score_kept(entry, suffix, choices, stop)
            log.info("prefix_room_exceeded", prompt=prompt.name, tokens=len(suffix))
            head_ids, tail = self._encode(self._split_template(prompt.messages)[0]), entry.tail
        else:
            head, tail = self._split_template(prompt.messages)
            head_ids = self._encode(head)
        ids = head_ids + self._encode(user + tail)
        gen = self._generator(ids, depth)
        gen.append_tokens(ids)
        scores, steps = self._score(gen, len(ids), choices, stop)
        return scores, len(ids), steps

    def clear_prefixes(self) -> None:
        """Drop every kept prefix and prior (worker thread only, like every other call)."""
        self._prefixes.clear()
        self._priors.clear()

    @property
    def kept_prefixes(self) -> list[str]:
        """``name@key`` of the fixed prompts kept prefilled, least recently used first."""
        return list(self._prefixes)

    def _score_kept(
        self,
        entry: _Prefix,
        suffix: list[int],
        choices: dict[str, list[int]],
        stop: StopWhen,
    ) -> tuple[dict[str, float], int, int]:
        gen = entry.gen
        try:
            gen.append_tokens(suffix)
            length = entry.length + len(suffix)
            scores, steps = self._score(gen, length, choices, stop)
        finally:
            try:
                gen.rewind_to(entry.length)
            except Exception:  # a generator we cannot rewind must not serve again
                self._prefixes.pop(entry.key, None)
                raise
        return scores, length, steps

    def _prefix(
        self, prompt: FixedPrompt, depth: int, *, guidance: dict[str, Any] | None = None
    ) -> _Prefix:
        key = f"{prompt.name}@{prompt.key}"
        entry = self._prefixes.get(key)
        if entry is not None:
            self._prefixes.move_to_end(key)
            return entry
        for old in [k for k in self._prefixes if k.startswith(f"{prompt.name}@")]:
            del self._prefixes[old]  # the same prompt name with older content
        head, tail = self._split_template(prompt.messages)
        ids = self._encode(head)
        capacity = min(self.context_length, len(ids) + PREFIX_ROOM + depth)
        gen = self._generator(ids, capacity - len(ids), guidance=guidance)
        prefill = time.perf_counter()
        gen.append_tokens(ids)
        entry = _Prefix(key=key, gen=gen, length=len(ids), tail=tail, capacity=capacity)
        self._prefixes[key] = entry
        while len(self._prefixes) > self.max_prefixes:
            self._prefixes.popitem(last=False)
        log.info(
            "prefix_prefilled",
            prompt=prompt.name,
            tokens=len(ids),
            ms=round((time.perf_counter() - prefill) * 1000, 1),
            kept=len(self._prefixes),
        )
        return entry

    def _split_template(self, messages: Sequence[Message]) -> tuple[str, str]:
        """The chat template rendered around a user turn: (text before it, text after it)."""
        turns = [*messages, {"role": "user", "content": _SLOT}]
        text = str(
            self._tokenizer.apply_chat_template(json.dumps(turns), add_generation_prompt=True)
        )
        head, found, tail = text.partition(_SLOT)
        if not found or _SLOT in tail:
            raise EngineError("the model's chat template does not keep the user turn verbatim")
        return head, tail

    def _encode(self, text: str) -> list[int]:
        return [int(t) for t in self._tokenizer.encode(text)]

    def _choice_tokens(self, choices: Mapping[str, str]) -> dict[str, list[int]]:
        """Each label's scored tokens: its words, then the end-of-turn token."""
        return {label: [*self._encode(words), self._end_id] for label, words in choices.items()}

    def _score(
        self, gen: Any, length: int, choices: Mapping[str, list[int]], stop: StopWhen
    ) -> tuple[dict[str, float], int]:
        """Log-likelihood of each choice's tokens after the ``length`` tokens in ``gen``.

        A choice of one token costs nothing beyond the prompt's own logits.
        The first token is read from the prompt's last logits; the rest take one
        multi-token pass per label (one logits row per appended token), then a
        rewind. Returns the scores and the tokens run through the model.
        """
        first = log_softmax(gen.get_logits())
        scores: dict[str, float] = {}
        steps = 0
        for label, tokens in choices.items():
            total = float(first[tokens[0]])
            if len(tokens) > 1:
                stop.check()
                gen.append_tokens(tokens[:-1])
                rows = np.asarray(gen.get_output("logits")).reshape(len(tokens) - 1, -1)
                for row, token in zip(rows, tokens[1:], strict=True):
                    total += float(log_softmax(row)[token])
                gen.rewind_to(length)
                steps += len(tokens) - 1
            scores[label] = total
        return scores, steps

    @staticmethod
    def _classification(
        scores: dict[str, float], prompt_tokens: int, steps: int, start: float
    ) -> Classification:
        dist = label_distribution(scores)
        best = max(dist, key=dist.__getitem__)
        return Classification(
            label=best,
            confidence=dist[best],
            scores=dist,
            prompt_tokens=prompt_tokens,
            scored_tokens=steps,
            total_s=time.perf_counter() - start,
        )
