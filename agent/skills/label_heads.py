"""Heads the relays learned for requests' own label sets (``labels``, no skill).

An app that lists its labels per request has no skill to learn for, but its
escalations are labelled examples all the same: ``cloud-relay learn`` fits a head
per label set (named by :func:`edge_slm.contract.skills.label_set_name`, whatever
the order of the labels) and pushes it like a skill's. Until one arrives, such a
request gets the zero-shot head from the label names (``head_stage.zero_shot_head``).

The heads are kept in memory, at most ``KEPT``: a fleet may see many label sets, and
the retained copies come back on every connect. Beyond it the least recently used is
dropped (logged); its requests go back to the zero-shot head until the next connect.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from edge_slm.contract.skills import label_set_name
from edge_slm.head import Head, HeadRejected
from edge_slm.logs import get_logger

log = get_logger("agent.label_heads")

#: Label sets whose pushed head is kept; a head is a few KB (K x 384 float32).
KEPT = 256


class LabelHeads:
    """Pushed heads by label-set name, least recently used dropped beyond ``KEPT``; any
    thread (set by the heads thread, read by the worker)."""

    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._lock = threading.Lock()
        self._heads: OrderedDict[str, tuple[Head, int]] = OrderedDict()

    def set_head(self, name: str, head: Head, version: int) -> None:
        """Use ``head`` for the label set ``name`` from now on; HeadRejected when its
        labels are not that set's, or it is not newer than the one in use."""
        if label_set_name(head.labels) != name:
            raise HeadRejected(f"labels {list(head.labels)} are not the label set {name}")
        with self._lock:
            current = self._heads.get(name)
            if current is not None and current[1] >= version:
                raise HeadRejected(f"version {version} is not newer than {current[1]}")
            self._heads[name] = (head, version)
            self._heads.move_to_end(name)
            while len(self._heads) > self._kept:
                dropped, (_, was) = self._heads.popitem(last=False)
                log.info("label_head_dropped", label_set=dropped, version=was, kept=self._kept)

    def head(self, name: str) -> tuple[Head, int] | None:
        """The pushed head of label set ``name`` and its version, if any."""
        with self._lock:
            found = self._heads.get(name)
            if found is not None:
                self._heads.move_to_end(name)
            return found

    def for_labels(self, labels: Sequence[str]) -> tuple[Head, int] | None:
        return self.head(label_set_name(labels))

    def version(self, name: str) -> int:
        """The pushed version in use for ``name``; 0 for none (the zero-shot head)."""
        with self._lock:
            found = self._heads.get(name)
        return found[1] if found is not None else 0

    def versions(self) -> dict[str, int]:
        """The version in use per label set that has a pushed head."""
        with self._lock:
            return {name: version for name, (_, version) in sorted(self._heads.items())}
