"""Start-up self-test: prove the model generates, measure it, and catch a silent
CPU fallback (the most common complaint about local LLM runtimes on Jetson)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.engine.engine import Engine

PROMPT = [{"role": "user", "content": "Count from one to ten."}]


@dataclass(frozen=True, slots=True)
class SelfTest:
    load_s: float
    tok_s: float | None
    ttft_ms: float
    provider: str
    requested: str

    @property
    def fell_back(self) -> bool:
        """An accelerator was asked for (or offered) but the model runs on the CPU."""
        return self.requested not in ("auto", "cpu", self.provider)


def run_self_test(engine: Engine, *, load_s: float, requested: str, tokens: int = 16) -> SelfTest:
    generation = engine.generate(PROMPT, max_tokens=tokens)
    if not generation.completion_tokens:
        raise RuntimeError("self-test: the model generated no tokens")
    decode_s = generation.total_s - generation.ttft_s
    tok_s = (generation.completion_tokens - 1) / decode_s if decode_s > 0 else None
    return SelfTest(
        load_s=load_s,
        tok_s=round(tok_s, 1) if tok_s else None,
        ttft_ms=round(generation.ttft_s * 1000, 1),
        provider=engine.provider,
        requested=requested,
    )
