"""The on-device inference engine: onnxruntime-genai behind a small API.

One :class:`Engine` owns one loaded model and is used from one thread (the
inference worker). It picks the execution provider, sets the thread count
deliberately (the builder's default config runs on one core and halves decode
speed), applies the model's chat template, decodes greedily while reading the
logits of every step for confidence (streaming each token as it is chosen),
and scores classification labels without
free generation.
"""

from __future__ import annotations

import json
import math
import os
import platform
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
from agent.engine.prompts import Message
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
class Classification:
    label: str
    confidence: float
    scores: dict[str, float]
    prompt_tokens: int
    scored_tokens: int
    total_s: float


@dataclass
class _Trie:
    """Label token sequences sharing prefixes, so shared tokens are decoded once."""

    children: dict[int, _Trie] = field(default_factory=dict)
    labels: list[tuple[int, str]] = field(default_factory=list)  # (final token, label)


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
        self, model_dir: Path, *, name: str, provider: str = "auto", threads: int = 0
    ) -> None:
        import onnxruntime_genai as og

        self._og = og
        self.name = name
        self.model_dir = model_dir
        self.threads = threads or len(os.sched_getaffinity(0))
        genai_config = json.loads((model_dir / "genai_config.json").read_text())
        self.context_length = int(genai_config["model"]["context_length"])
        eos = genai_config["model"]["eos_token_id"]
        self._eos_ids = frozenset(eos if isinstance(eos, list) else [eos])
        # The token that ends an assistant turn; a label must be followed by it.
        self._end_id = eos[0] if isinstance(eos, list) else eos
        self.provider, self._model = self._load(provider)
        self._tokenizer = og.Tokenizer(self._model)
        #: Decode speed of the latest free-text generation (telemetry reads it).
        self.last_decode_tok_s: float | None = None

    def _load(self, requested: str) -> tuple[str, Any]:
        og = self._og
        candidates = _candidates(requested, og)
        errors: dict[str, str] = {}
        for provider in candidates:
            config = og.Config(str(self.model_dir))
            config.clear_providers()
            if provider != "cpu":
                config.append_provider(provider)
            threads = {"intra_op_num_threads": self.threads, "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": threads}}}))
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
            log.info("model_loaded", model=self.name, provider=in_use, threads=self.threads)
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

    def _generator(self, prompt_ids: list[int], budget: int) -> Any:
        if len(prompt_ids) + budget > self.context_length:
            raise PromptTooLong(
                f"prompt of {len(prompt_ids)} tokens plus {budget} new tokens exceeds the "
                f"model's context of {self.context_length}"
            )
        og = self._og
        params = og.GeneratorParams(self._model)
        params.set_search_options(do_sample=False, max_length=len(prompt_ids) + budget)
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
    ) -> Iterator[StreamEvent]:
        """Greedy decoding as events: :class:`Prefilled`, a :class:`TokenEvent` per token,
        then :class:`StreamEnd`.

        This is the only decode loop: :meth:`generate` drains it. The consumer may
        stop early by closing the iterator (``break``); nothing is decoded after
        that. ``logprobs`` adds each token decoded on its own (``TokenEvent.token``,
        about 20 us a token); ``top_logprobs`` > 0 adds that many most likely
        alternatives (an ``argpartition`` of the step's log-probs, O(vocab)).
        """
        start = time.perf_counter()
        stop.check()
        ids = self.encode_chat(messages)
        gen = self._generator(ids, max_tokens)
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

    def classify(
        self, messages: Sequence[Message], labels: Sequence[str], *, stop: StopWhen = _NEVER
    ) -> Classification:
        """Score every label's likelihood as the reply; no free generation.

        The prompt is prefilled once; labels are walked as a token trie with
        ``rewind_to`` between branches, so shared prefixes cost one step.
        """
        start = time.perf_counter()
        stop.check()
        ids = self.encode_chat(messages)
        trie = _Trie()
        depth = 0
        for label in labels:
            tokens = [int(t) for t in self._tokenizer.encode(label)] + [self._end_id]
            depth = max(depth, len(tokens))
            node = trie
            for token in tokens[:-1]:
                node = node.children.setdefault(token, _Trie())
            node.labels.append((tokens[-1], label))
        gen = self._generator(ids, depth + 1)
        gen.append_tokens(ids)
        scores: dict[str, float] = {}
        steps = self._walk(
            gen,
            trie,
            logp=log_softmax(gen.get_logits()),
            acc=0.0,
            length=len(ids),
            scores=scores,
            stop=stop,
        )
        dist = label_distribution(scores)
        best = max(dist, key=dist.__getitem__)
        return Classification(
            label=best,
            confidence=dist[best],
            scores=dist,
            prompt_tokens=len(ids),
            scored_tokens=steps,
            total_s=time.perf_counter() - start,
        )

    def _walk(
        self,
        gen: Any,
        node: _Trie,
        *,
        logp: Any,
        acc: float,
        length: int,
        scores: dict[str, float],
        stop: StopWhen,
    ) -> int:
        for final, label in node.labels:
            scores[label] = acc + float(logp[final])
        steps = 0
        for token, child in node.children.items():
            stop.check()
            gen.append_tokens([token])
            steps += 1
            child_logp = log_softmax(gen.get_logits())
            steps += self._walk(
                gen,
                child,
                logp=child_logp,
                acc=acc + float(logp[token]),
                length=length + 1,
                scores=scores,
                stop=stop,
            )
            gen.rewind_to(length)
        return steps
