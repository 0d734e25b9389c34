"""The embedding stage of skills: nearest-exemplar scores over the sentence encoder.

The encoder itself is ``edge_slm/encoder.py``. A skill's label vectors are its
exemplars plus one "verbalizer: description" line per label, encoded once per skill
content (fingerprint) and kept. A request's score for a label is the cosine to that
label's nearest vector (1-NN per label): a few exemplars spread over a label's
phrasings are matched on the closest one rather than blurred into a centroid.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edge_slm.encoder import BATCH, MAX_TOKENS, ONNX_FILE, TOKENIZER_FILE, Encoded, Encoder, Vectors

if TYPE_CHECKING:
    from agent.skills import Skill

__all__ = [
    "BATCH",
    "MAX_TOKENS",
    "ONNX_FILE",
    "TOKENIZER_FILE",
    "Embedder",
    "Encoded",
    "LabelIndex",
    "Vectors",
]

KEPT_SKILLS = 16


class Embedder(Encoder):
    """The encoder plus each skill's label vectors (guarded: any thread)."""

    def __init__(self, folder: Path, *, name: str = "", threads: int = 0) -> None:
        super().__init__(folder, name=name, threads=threads)
        self._index: OrderedDict[str, LabelIndex] = OrderedDict()
        self._lock = threading.Lock()

    def index(self, skill: Skill) -> LabelIndex:
        """The skill's label vectors, encoded on first use and kept per content."""
        key = f"{skill.name}@{skill.fingerprint}"
        with self._lock:
            found = self._index.get(key)
            if found is not None:
                self._index.move_to_end(key)
                return found
        built = LabelIndex.of(self, skill)
        with self._lock:
            self._index[key] = built
            while len(self._index) > KEPT_SKILLS:
                self._index.popitem(last=False)
        return built

    def similarities(self, skill: Skill, text: str) -> dict[str, float]:
        return self.index(skill).similarities(self.embed([text])[0])


@dataclass(frozen=True, slots=True)
class LabelIndex:
    labels: tuple[str, ...]
    owner: npt.NDArray[np.intp]  # row -> label position
    vectors: Vectors

    @classmethod
    def of(cls, embedder: Embedder, skill: Skill) -> LabelIndex:
        texts: list[str] = []
        owner: list[int] = []
        words = skill.verbalizers
        for pos, (name, label) in enumerate(skill.spec.labels.items()):
            line = words[name] + (f": {label.description}" if label.description else "")
            for text in (line, *label.exemplars):
                texts.append(text)
                owner.append(pos)
        return cls(tuple(skill.labels), np.array(owner, dtype=np.intp), embedder.embed(texts))

    def similarities(self, query: Vectors) -> dict[str, float]:
        """Label -> cosine to its nearest vector."""
        cos = self.vectors @ query
        best = np.full(len(self.labels), -1.0)
        np.maximum.at(best, self.owner, cos)
        return {label: float(best[i]) for i, label in enumerate(self.labels)}
