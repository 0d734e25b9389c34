"""How the next token is chosen: greedy, or sampled at a temperature.

Everything the agent decides on decodes greedily: its confidence is defined on the
greedy choice. Sampling is for ``edge-agent serve`` when a client asks for it
(OpenAI's ``temperature``, ``top_p`` and ``seed``), as the relay's teacher does when
``learn.paraphrase_temperature`` is set: greedy decoding repeats itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: onnxruntime-genai takes a 32-bit seed; OpenAI's may be any integer.
_SEED_RANGE = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Sampling:
    """``temperature`` 0 is greedy; above it, a draw from the tokens within ``top_p``."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None  # None: a fresh random draw per request

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be within [0, 2]")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be within (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def search_options(self) -> dict[str, Any]:
        """``GeneratorParams.set_search_options`` keywords, less ``max_length``.

        Each is set explicitly, or the model's own search defaults (``genai_config.json``,
        top_k 50 for the built models) would apply. top_k 0 turns top-k off, so only
        ``top_p`` bounds the draw, as OpenAI's API defines it.
        """
        if self.greedy:
            return {"do_sample": False}
        return {
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": 0,
            "random_seed": -1 if self.seed is None else self.seed % _SEED_RANGE,
        }


GREEDY = Sampling()
