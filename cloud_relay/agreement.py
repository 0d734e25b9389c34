"""Whether the edge and the cloud gave the same answer (for calibration stats).

* ``classify``: the labels are equal after case/whitespace normalization. A cloud
  ``unknown`` never agrees.
* free text: the normalized texts are equal, or the Jaccard overlap of their
  word sets reaches the threshold (``agreement_threshold``, default 0.5). Crude
  on purpose: cheap, deterministic, and good enough to spot a drifting edge model.
* None when there is nothing to compare (no edge answer, or no cloud answer).
"""

from __future__ import annotations

import re

from edge_slm.contract import Task

_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    return " ".join(text.casefold().split())


def word_overlap(a: str, b: str) -> float:
    wa, wb = set(_WORD.findall(a.casefold())), set(_WORD.findall(b.casefold()))
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


def agrees(
    task: Task,
    *,
    edge_answer: str | None,
    edge_label: str | None,
    cloud_answer: str | None,
    cloud_label: str | None,
    threshold: float,
) -> bool | None:
    if task is Task.CLASSIFY:
        if edge_label is None or cloud_label is None:
            return None
        return normalize(edge_label) == normalize(cloud_label)
    if edge_answer is None or cloud_answer is None:
        return None
    if normalize(edge_answer) == normalize(cloud_answer):
        return True
    return word_overlap(edge_answer, cloud_answer) >= threshold
