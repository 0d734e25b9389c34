"""The head stage of classify: a logistic-regression head over the encoder's vectors,
which answers first; the SLM runs only where it is unsure.

A skill without a pushed head gets one fitted from its own texts (per label: the
"verbalizer: description" line and the exemplars; ``edge_slm.head.skill_texts``),
on the device, the first time the skill is used with this encoder (a few hundred ms
with scikit-learn), and kept per skill content: version 0. A head the relays push
(``cloud-relay learn``) replaces it (``SkillRegistry.set_head``).

A request that lists its own ``labels`` gets a zero-shot head from the label names
(``edge_slm.head.zero_shot``), kept per label set (LRU), until the relays push a head
learned for that label set from the cloud's answers (``agent/skills/label_heads.py``).

Both confidences are calibrated probabilities that the label is right, so one
threshold (``ACCEPT``) says when the head answers alone, and the router's classify
threshold says when the cloud gets it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from edge_slm.encoder import BATCH
from edge_slm.head import (
    MAX_CONFIDENCE,
    Head,
    HeadOutput,
    fit_head,
    label_texts,
    skill_texts,
    zero_shot,
)

if TYPE_CHECKING:
    from agent.skills import Skill
    from edge_slm.encoder import Encoder

#: The head answers alone at or above this calibrated P(correct); below it the SLM runs.
#: Chosen on the dev split of the voice set (bench/head_stage.py): it keeps the head's
#: own answers about as accurate as the cascade's, and answers most requests.
ACCEPT = 0.75
KEPT = 32


class _Kept:
    """Heads by key, least recently used dropped beyond ``KEPT``; any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heads: OrderedDict[object, Head] = OrderedDict()

    def get(self, key: object) -> Head | None:
        with self._lock:
            found = self._heads.get(key)
            if found is not None:
                self._heads.move_to_end(key)
            return found

    def put(self, key: object, head: Head) -> None:
        with self._lock:
            self._heads[key] = head
            while len(self._heads) > KEPT:
                self._heads.popitem(last=False)


_skill_heads = _Kept()
_label_heads = _Kept()


def skill_head(embedder: Encoder, skill: Skill) -> Head:
    """The head fitted from ``skill``'s own texts with ``embedder`` (kept per content)."""
    head = _skill_head(embedder, skill, stop=None)
    assert head is not None  # noqa: S101 - only a stop leaves it unfitted
    return head


def _skill_head(embedder: Encoder, skill: Skill, stop: threading.Event | None) -> Head | None:
    """``skill_head``, given up (None) between two batches of texts once ``stop`` is set."""
    key = (embedder.name, skill.name, skill.fingerprint)
    found = _skill_heads.get(key)
    if found is not None:
        return found
    texts, gold = skill_texts(skill.spec)
    batches = []
    for i in range(0, len(texts), BATCH):
        if stop is not None and stop.is_set():
            return None
        batches.append(embedder.embed(texts[i : i + BATCH]))
    head = fit_head(np.concatenate(batches), gold, skill.labels)
    _skill_heads.put(key, head)
    return head


def zero_shot_head(embedder: Encoder, labels: Sequence[str]) -> Head:
    """A head from the label names alone (``lights_on`` reads ``lights on``)."""
    key = (embedder.name, tuple(labels))
    found = _label_heads.get(key)
    if found is not None:
        return found
    head = zero_shot(labels, embedder.embed(label_texts(labels)))
    _label_heads.put(key, head)
    return head


def combine(
    head: HeadOutput, slm: str, slm_confidence: float, *, calibrated: bool = True
) -> tuple[str, float]:
    """Head and SLM evidence when the SLM ran (the head was unsure). Both confidences
    are calibrated P(correct). When they agree, either being right makes the label
    right: ``1 - (1 - c_head)(1 - c_slm)``; when they disagree, the more confident one
    answers, discounted by the other's confidence, so a disagreement goes to the cloud.
    Chosen on the dev split (bench/head_stage.py, ``cascade_product``): the same
    accuracy as taking the more confident one, and a better ranking of right/wrong.

    An SLM the skill has no fit for (``calibrated`` false) gives its raw top share,
    which is not a P(correct): it moves the confidence the same way, but never takes
    the label from the head. On HWU64 ``train.jsonl`` items (BENCHMARKS.md, "A skill
    with no fit"), letting it outbid the head cost a fresh 5-label skill 9 points of
    edge accuracy and a 64-label one 34; keeping the head's label cost nothing."""
    if slm == head.label:
        return slm, min(1 - (1 - head.confidence) * (1 - slm_confidence), MAX_CONFIDENCE)
    low = min(head.confidence, slm_confidence)
    if calibrated and slm_confidence > head.confidence:
        return slm, slm_confidence * (1 - low)
    return head.label, head.confidence * (1 - low)


def warm(skills: Iterable[Skill], embedder: Encoder, *, stop: threading.Event | None = None) -> int:
    """Fit the heads of ``skills`` now (at load, off the request path), so that the
    first request of a skill does not pay for scikit-learn's import and the fit.
    Once ``stop`` is set it gives up at the next batch of texts: a shutdown then waits
    for one encoder run, not for every skill's texts (minutes on an emulated board).
    Returns how many were fitted."""
    done = 0
    for skill in skills:
        if skill.spec.embedding and skill.spec.head:
            if _skill_head(embedder, skill, stop) is None:
                break
            done += 1
    return done
