"""Fidelity of a built ONNX model against the weights it was built from.

The source side (dequantized float32 torch model) runs inside the conversion
subprocess, which saves its logits; the ONNX side runs here with
onnxruntime-genai. Both are fed the *same* token ids (from the HF tokenizer),
teacher-forced one token at a time, and compared position by position:

* top-1 agreement: share of positions where both argmaxes match;
* mean KL(source || onnx), in nats, over the full vocabulary.

Heavy imports (numpy is light; torch and onnxruntime_genai are not) stay
inside functions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float32]

# Fixed chat turns: a factual answer, a home-automation judgement, some code.
# Short on purpose (~40-70 tokens each with the chat template): the check runs
# on every build, and 150 positions already separate 0.55 from 0.97 agreement.
PROMPTS: tuple[tuple[str, str], ...] = (
    (
        "What is the capital of France?",
        "The capital of France is Paris, known for the Eiffel Tower.",
    ),
    (
        "The living room is 16 degrees. Should the heating go on?",
        "Yes. 16 degrees is cool for a living room; heating to about 20 degrees is comfortable.",
    ),
    (
        "Write a Python function that adds two numbers.",
        "def add(a, b):\n    return a + b",
    ),
)
MAX_TOKENS = 80


@dataclass(frozen=True)
class FidelityResult:
    prompts: int
    tokens: int
    top1_agreement: float
    mean_kl: float


def prompt_ids(tokenizer: Any) -> list[list[int]]:
    """Token ids of each fixed chat (user + assistant turn), capped at MAX_TOKENS."""
    out = []
    for user, assistant in PROMPTS:
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append([int(t) for t in ids[:MAX_TOKENS]])
    return out


def torch_logits(model: Any, ids: list[list[int]]) -> list[FloatArray]:
    """Next-token logits at every position, from a transformers causal LM."""
    import torch

    out = []
    with torch.no_grad():
        for seq in ids:
            logits = model(input_ids=torch.tensor([seq], dtype=torch.long)).logits[0]
            out.append(logits.float().numpy())
    return out


def save_reference(path: Path, ids: list[list[int]], logits: list[FloatArray]) -> None:
    import numpy as np

    arrays: dict[str, Any] = {}
    for i, (seq, lg) in enumerate(zip(ids, logits, strict=True)):
        arrays[f"ids{i}"] = np.asarray(seq, dtype=np.int64)
        arrays[f"logits{i}"] = lg
    np.savez(path, **arrays)


def load_reference(path: Path) -> tuple[list[list[int]], list[FloatArray]]:
    import numpy as np

    with np.load(path) as data:
        n = sum(1 for k in data.files if k.startswith("ids"))
        ids = [[int(t) for t in data[f"ids{i}"]] for i in range(n)]
        logits = [data[f"logits{i}"] for i in range(n)]
    return ids, logits


def onnx_logits(
    model_dir: Path, ids: list[list[int]], threads: int | None = None
) -> list[FloatArray]:
    """Teacher-forced next-token logits from an onnxruntime-genai model folder."""
    import numpy as np
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    n = threads or os.cpu_count() or 1
    config.overlay(
        json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": n}}}})
    )
    model = og.Model(config)
    out = []
    for seq in ids:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(seq) + 8)
        gen = og.Generator(model, params)
        rows = []
        for tok in seq:
            gen.append_tokens([tok])
            rows.append(np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1))
        out.append(np.stack(rows))
        del gen
    del model
    return out


def compare(source: list[FloatArray], onnx: list[FloatArray]) -> FidelityResult:
    """Top-1 agreement and mean KL(source || onnx) over all positions."""
    import numpy as np

    agree = 0
    total = 0
    kl_sum = 0.0
    for s, o in zip(source, onnx, strict=True):
        vocab = min(s.shape[-1], o.shape[-1])
        s64 = s[:, :vocab].astype(np.float64)
        o64 = o[:, :vocab].astype(np.float64)
        ls = s64 - np.logaddexp.reduce(s64, axis=-1, keepdims=True)
        lo = o64 - np.logaddexp.reduce(o64, axis=-1, keepdims=True)
        kl_sum += float(np.sum(np.exp(ls) * (ls - lo)))
        agree += int(np.sum(np.argmax(s64, axis=-1) == np.argmax(o64, axis=-1)))
        total += s64.shape[0]
    if total == 0:
        raise ValueError("no positions to compare")
    return FidelityResult(
        prompts=len(source), tokens=total, top1_agreement=agree / total, mean_kl=kl_sum / total
    )


def measure(model_dir: Path, reference: Path) -> FidelityResult:
    """Compare the ONNX model in ``model_dir`` with the saved source logits."""
    ids, source = load_reference(reference)
    return compare(source, onnx_logits(model_dir, ids))
