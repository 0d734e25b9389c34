"""Skill heads pushed by the relays (``cloud-relay learn``), taken in and applied live.

Retained on ``<prefix>/_skills/<skill>/head/<encoder>``, one topic per skill and
sentence encoder for the whole fleet; only relays may publish there (broker ACL).
An agent subscribes to its own encoder's heads only, and none without an encoder
(no embedding stage: nothing to run a head on). The network thread only decodes
(the one version check) and checks that the payload names the skill and encoder of
its topic; a head for a skill this device does not have is ignored. The rest
runs on a thread of its own: turning the wire message into a head, and handing
it to the skill registry (``SkillRegistry.set_head``), which refuses a head
whose labels or encoder do not match the skill's. A head learned for a label set
that requests list themselves (named ``_labels-...``, whose name the wire check
ties to its labels) goes to :class:`agent.skills.label_heads.LabelHeads` instead:
any device may see such requests next, so none is ignored. Every refusal is logged
(``head_rejected``) and the skill keeps the head it had. A head no newer than
the one in use (the retained copy again after a reconnect) is skipped.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.inbound import decode_or_log
from agent.skills.label_heads import KEPT
from edge_slm.contract.skills import SkillHead, is_label_set
from edge_slm.logs import get_logger
from edge_slm.queues import stop_consumer
from edge_slm.topics import matches, skill_head, skill_head_filter

if TYPE_CHECKING:
    from agent.skills import SkillRegistry
    from agent.skills.label_heads import LabelHeads
    from edge_slm.mqtt import Inbound

log = get_logger("agent.heads")

#: Heads waiting to be applied; beyond it the newest is dropped (the retained copy
#: comes again on the next connect). A connect delivers every retained head at once:
#: the skills' and up to ``label_heads.KEPT`` label sets'.
QUEUE_SIZE = 64 + KEPT


class HeadIntake:
    """Validates pushed heads on the network thread and applies them on its own thread."""

    def __init__(
        self,
        skills: SkillRegistry,
        labels: LabelHeads,
        *,
        prefix: str,
        embedder: str | None,
        on_applied: Callable[[], None] = lambda: None,
    ) -> None:
        self._skills = skills
        self._labels = labels
        self._prefix = prefix
        self._embedder = embedder  # the loaded encoder's name; None: no embedding stage
        self._on_applied = on_applied
        self._queue: queue.Queue[SkillHead | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="heads", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def subscription(self) -> str | None:
        """The heads this agent takes: its encoder's; None without an encoder."""
        if self._embedder is None:
            return None
        return skill_head_filter(self._prefix, self._embedder)

    def takes(self, topic: str) -> bool:
        """Whether ``topic`` is one of this agent's heads (``on_message`` handles it)."""
        subscription = self.subscription
        return subscription is not None and matches(subscription, topic)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        stop_consumer(self._queue, None, self._thread, timeout_s)

    # -- network thread: cheap only ------------------------------------------------

    def on_message(self, msg: Inbound) -> None:
        if not msg.payload:
            return  # a cleared retained head: keep the one in use
        head = decode_or_log(SkillHead, msg.payload, rejected="head_rejected", topic=msg.topic)
        if head is None:
            return
        mine = self._embedder
        if mine is None or msg.topic != skill_head(self._prefix, head.skill, mine):
            log.warning("head_rejected", topic=msg.topic, skill=head.skill, error="topic mismatch")
            return
        if not is_label_set(head.skill) and self._skills.get(head.skill) is None:
            log.info("head_ignored", skill=head.skill, version=head.version, why="no such skill")
            return
        try:
            self._queue.put_nowait(head)
        except queue.Full:
            log.warning("head_dropped", skill=head.skill, version=head.version, why="queue full")

    # -- the heads thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            head = self._queue.get()
            if head is None:
                return
            try:
                applied = self.apply(head)
            except Exception:  # a bad head must never end the thread
                log.exception("head_rejected", skill=head.skill, version=head.version)
                continue
            if applied:
                self._on_applied()

    def apply(self, wire: SkillHead) -> bool:
        """Apply one decoded head; whether the skill's head changed."""
        from edge_slm.head import Head, HeadRejected

        ad_hoc = is_label_set(wire.skill)
        if ad_hoc:
            current = self._labels.version(wire.skill)
        else:
            current = self._skills.head_versions().get(wire.skill, 0)
        if wire.version <= current:
            log.info("head_current", skill=wire.skill, version=wire.version, in_use=current)
            return False
        if wire.embedder != self._embedder:
            log.warning(
                "head_rejected",
                skill=wire.skill,
                version=wire.version,
                error=f"made for encoder {wire.embedder!r}, this device has {self._embedder!r}",
            )
            return False
        try:
            target = self._labels if ad_hoc else self._skills
            target.set_head(wire.skill, Head.from_wire(wire), wire.version)
        except (HeadRejected, ValueError) as exc:
            log.warning("head_rejected", skill=wire.skill, version=wire.version, error=str(exc))
            return False
        log.info(
            "head_applied",
            skill=wire.skill,
            version=wire.version,
            previous=current,
            embedder=wire.embedder,
        )
        return True
