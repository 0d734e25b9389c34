"""Schema-constrained decoding's bookkeeping: forced tokens, per-field confidence.

onnxruntime-genai applies the grammar itself (``GeneratorParams.set_guidance``),
but ``Generator.get_logits`` returns the logits *before* its mask. So a mirror
llguidance matcher follows the same grammar token by token and gives, at every
step, the set of tokens the grammar allows. With it:

* a token is **forced** when the grammar allows only it, or when its bytes are
  bytes the grammar forces anyway (``compute_ff_bytes``: ``"`` opening a string,
  a key's ``":``); forced tokens say nothing about the model's belief and do not
  count;
* a **free** token's probability is renormalized over the allowed tokens: the
  model's choice among what the grammar left open.

A value's confidence is the product of the probabilities of the free tokens that
overlap its span in the output text, i.e. the probability the model gave that
value once the grammar had led it there. The overall confidence is the weakest
required field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

#: Compact JSON: no free whitespace, so a small model cannot run out of length in it.
COMPACT = {"whitespace_flexible": False}


def guided_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with llguidance's compact-JSON options (top-level ``x-guidance``)."""
    return {"x-guidance": COMPACT, **schema}


@dataclass(frozen=True, slots=True)
class Step:
    """One generated token under the grammar."""

    start: int  # character offset of the token's text in the output
    end: int
    logprob: float  # renormalized over the allowed tokens; 0.0 for a forced token
    forced: bool


class Mirror:
    """A llguidance matcher that follows a generation, to read its mask at each step."""

    def __init__(self, tokenizer: Any, schema: dict[str, Any]) -> None:
        import llguidance

        grammar = llguidance.LLMatcher.grammar_from_json_schema(guided_schema(schema))
        self._matcher = llguidance.LLMatcher(tokenizer, grammar)
        error = self._matcher.get_error()
        if error:
            raise ValueError(f"schema does not compile to a grammar: {error}")
        self.lost = False  # the mirror disagreed with the runtime: stop measuring

    def step(
        self, logits: npt.NDArray[np.floating], token: int, token_bytes: bytes
    ) -> tuple[float, bool]:
        """(renormalized log-prob, forced) of ``token`` under the current mask; then consume it."""
        if self.lost:
            return 0.0, False
        mask = np.frombuffer(self._matcher.compute_logit_bias(), dtype=np.uint8)
        row = np.asarray(logits, dtype=np.float64).reshape(-1)
        allowed = mask[: row.shape[0]] > 0
        if token >= allowed.shape[0] or not allowed[token]:
            self.lost = True
            return 0.0, False
        forced_bytes = bytes(self._matcher.compute_ff_bytes())
        forced = int(allowed.sum()) == 1 or (
            bool(token_bytes) and forced_bytes.startswith(token_bytes)
        )
        kept = row[allowed]
        top = float(kept.max())
        logz = top + math.log(float(np.exp(kept - top).sum()))
        logprob = 0.0 if forced else float(row[token]) - logz
        if not self._matcher.consume_token(token):
            self.lost = True
        return logprob, forced


def value_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character span of every value in the compact JSON ``text``, by dot path.

    ``{"a":{"b":[1,"x"]}}`` gives ``a``, ``a.b``, ``a.b.0`` and ``a.b.1``. The
    root itself is not listed.
    """
    spans: dict[str, tuple[int, int]] = {}
    decoder = json.JSONDecoder()

    def parse(pos: int, path: str) -> int:
        start = pos
        if text[pos] == "{":
            pos += 1
            while text[pos] != "}":
                key, pos = decoder.raw_decode(text, pos)
                pos += 1  # ':'
                pos = parse(pos, f"{path}.{key}" if path else str(key))
                if text[pos] == ",":
                    pos += 1
            end = pos + 1
        elif text[pos] == "[":
            pos += 1
            index = 0
            while text[pos] != "]":
                pos = parse(pos, f"{path}.{index}" if path else str(index))
                index += 1
                if text[pos] == ",":
                    pos += 1
            end = pos + 1
        else:
            _, end = decoder.raw_decode(text, pos)
        if path:
            spans[path] = (start, end)
        return end

    parse(0, "")
    return spans


def field_confidence(text: str, steps: Iterable[Step]) -> dict[str, float]:
    """Each value's confidence: the product of its overlapping free tokens' probabilities.

    Only leaf values are listed (an object's or array's members are); a value made
    of forced tokens only (a ``const``, the only allowed enum member) is 1.
    """
    spans = value_spans(text)
    leaves = {
        path: span
        for path, span in spans.items()
        if not any(other.startswith(path + ".") for other in spans)
    }
    steps = list(steps)
    result = {}
    for path, (start, end) in leaves.items():
        total = sum(s.logprob for s in steps if not s.forced and s.start < end and s.end > start)
        result[path] = math.exp(total)
    return result


def weakest(confidences: dict[str, float], required: Iterable[str]) -> float:
    """The lowest confidence among ``required`` paths and their members (all if none)."""
    wanted = list(required)
    chosen = [
        value
        for path, value in confidences.items()
        if not wanted or any(path == r or path.startswith(r + ".") for r in wanted)
    ]
    return min(chosen, default=1.0)


#: Words too common to back a value alone: as substrings, "a" and "of" were in nearly every
#: request, so a schema description copied into a field passed as backed (HWU64 slot F1).
_FILLER = frozenset(
    {"a", "an", "and", "are", "at", "be", "by", "for", "from", "i", "in", "is", "it", "me"}
    | {"my", "of", "on", "or", "please", "the", "this", "to", "with", "you"}
)


def _words(text: str) -> list[str]:
    return "".join(c if c.isalnum() else " " for c in text.lower()).split()


def grounded(value: str, source: str) -> bool:
    """Whether a free string value is backed by the request's text: one of its words, filler
    aside, is a word of the text, or one differing only in an ending ("light", "lights").

    Guards ``extract`` against invented records ("John Doe" from "x").
    """
    said = set(_words(source))
    return any(
        w in said
        or any(min(len(w), len(t)) >= 4 and (t.startswith(w) or w.startswith(t)) for t in said)
        for w in _words(value)
        if w not in _FILLER
    )


def load_tokenizer(model_dir: Path, eos_ids: Iterable[int]) -> Any:
    """llguidance's tokenizer for a model folder (its ``tokenizer.json``), EOS as the model's."""
    import llguidance

    return llguidance.LLTokenizer(str(model_dir / "tokenizer.json"), eos_token=sorted(eos_ids))
