"""The sentence encoder: text to unit vectors, shared by the agent and the relay.

The encoder (all-MiniLM-L6-v2, int8 ONNX, see ``agent/models/embedders.py``) runs
on onnxruntime with the tokenizers library, mean-pools the last hidden state over
real tokens and L2-normalizes, as sentence-transformers does. The agent's skills
read it (their heads, ``edge_slm/head.py``, and the nearest-exemplar stage,
``agent/skills/embedding.py``); the relay fits heads on the same vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

#: An installed embedder's folder: the file names this loader reads (and the installer writes).
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"

Vectors = npt.NDArray[np.float32]
MAX_TOKENS = 128  # all-MiniLM-L6-v2 was trained on up to 128 tokens
BATCH = 32


@dataclass(frozen=True, slots=True)
class Encoded:
    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]


class Encoder:
    """A sentence encoder from a folder holding ``model.onnx`` and ``tokenizer.json``.

    Thread-safe for ``embed`` (onnxruntime sessions are); the agent calls it from the
    inference worker only.
    """

    def __init__(self, folder: Path, *, name: str = "", threads: int = 0) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.name = name or folder.name
        self._tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        # The file pads every input to 128 tokens; pad a batch to its longest instead.
        pad = self._tokenizer.padding or {"pad_id": 0, "pad_token": "[PAD]"}
        self._tokenizer.enable_padding(pad_id=pad["pad_id"], pad_token=pad["pad_token"])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}

    def encode(self, texts: Sequence[str]) -> Encoded:
        batch = self._tokenizer.encode_batch(list(texts))
        return Encoded(
            np.array([e.ids for e in batch], dtype=np.int64),
            np.array([e.attention_mask for e in batch], dtype=np.int64),
        )

    @staticmethod
    def pool(hidden: npt.NDArray[np.floating], mask: npt.NDArray[np.int64]) -> Vectors:
        """Mean over real tokens, then unit length."""
        weights = mask[..., None].astype(np.float32)
        summed = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(summed, axis=1, keepdims=True)
        unit: Vectors = (summed / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit vectors, one row per text."""
        out = []
        for i in range(0, len(texts), BATCH):
            enc = self.encode(texts[i : i + BATCH])
            feeds = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.zeros_like(enc.input_ids)
            (hidden,) = self._session.run(["last_hidden_state"], feeds)
            out.append(self.pool(hidden, enc.attention_mask))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
