"""The on-device inference engine: onnxruntime-genai behind a small API.

One :class:`Engine` owns one loaded model and is used from one thread (the
inference worker). It picks the execution provider, sets the thread count
deliberately (the builder's default config runs on one core and halves decode
speed), applies the model's chat template, decodes greedily while reading the
logits of every step for confidence, and scores classification labels without
free generation.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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

    def generate(
        self, messages: Sequence[Message], *, max_tokens: int, stop: StopWhen = _NEVER
    ) -> Generation:
        """Greedy decoding with per-token confidence; stops at EOS or ``max_tokens``."""
        start = time.perf_counter()
        stop.check()
        ids = self.encode_chat(messages)
        gen = self._generator(ids, max_tokens)
        gen.append_tokens(ids)  # prefill
        stats: list[TokenStat] = []
        out: list[int] = []
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
            stats.append(token_stat(logits, token))
            out.append(token)
        text = str(self._tokenizer.decode(out)).strip() if out else ""
        return Generation(
            text=text,
            confidence=text_confidence(stats),
            prompt_tokens=len(ids),
            completion_tokens=len(out),
            finish_reason=finish,
            ttft_s=ttft,
            total_s=time.perf_counter() - start,
        )

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
