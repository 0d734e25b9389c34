"""Routing policy: may a request leave the device, and should it?

``before`` runs on the dispatch thread before generation and must stay cheap
(no model, a few regexes): local-only rules, ``cloud: always``, and a
complexity score that sends very complex requests straight to the cloud.
``after`` runs on the worker once the edge answer exists: escalate when its
confidence is under the task's threshold.
"""

from __future__ import annotations

import fnmatch
import random
import threading
from collections.abc import Callable, Mapping

from agent.actions import HIGH_RISK_THRESHOLD, NO_TOOL_REASON, tool_threshold
from agent.config import CloudSettings, PolicySettings
from agent.jobs import Decision
from agent.policy.complexity import complexity
from edge_slm.contract import CloudPolicy, EscalationReason, Privacy, Request, Response, Task
from edge_slm.topics import matches


class Router:
    def __init__(
        self,
        policy: PolicySettings,
        cloud: CloudSettings,
        *,
        budget_left: Callable[[], bool],
    ) -> None:
        self._policy = policy
        self._cloud = cloud
        self._budget_left = budget_left
        # Live settings: a retained DeviceConfig may change them at run time.
        self._lock = threading.Lock()
        self._thresholds: dict[Task, float] = dict(policy.thresholds)
        self._shadow_rate = policy.shadow_rate
        self._learning_shadow_rate = policy.learning_shadow_rate

    def update(
        self,
        *,
        thresholds: Mapping[Task, float] | None,
        shadow_rate: float | None,
        learning_shadow_rate: float | None = None,
    ) -> dict[str, object]:
        """Apply new live settings; return what changed (old -> new) for the log."""
        changes: dict[str, object] = {}
        with self._lock:
            if thresholds is not None:
                for task, value in thresholds.items():
                    old = self._thresholds.get(task)
                    if old != value:
                        changes[f"threshold.{task.value}"] = [old, value]
                        self._thresholds[task] = value
            if shadow_rate is not None and shadow_rate != self._shadow_rate:
                changes["shadow_rate"] = [self._shadow_rate, shadow_rate]
                self._shadow_rate = shadow_rate
            learning = learning_shadow_rate
            if learning is not None and learning != self._learning_shadow_rate:
                changes["learning_shadow_rate"] = [self._learning_shadow_rate, learning]
                self._learning_shadow_rate = learning
        return changes

    def threshold(self, task: Task) -> float:
        with self._lock:
            return self._thresholds.get(task, 0.5)

    def shadow_rate(self, head_version: int | None = None) -> float:
        """The share of confident answers sampled for the cloud: the device's rate, or for a
        skill's answer whose head is at ``head_version``, the learning rate halved per version
        when that is higher (a young head's confident errors reach the cloud only this way)."""
        with self._lock:
            rate, learning = self._shadow_rate, self._learning_shadow_rate
        if head_version is not None and learning > 0:
            rate = max(rate, learning * 0.5**head_version)
        return rate

    def sample_shadow(self, head_version: int | None = None) -> bool:
        """Whether this confident edge answer also goes to the cloud for comparison."""
        rate = self.shadow_rate(head_version)
        return rate > 0 and random.random() < rate  # noqa: S311 - sampling, not security

    def blocked(self, request: Request, topic: str) -> str | None:  # noqa: PLR0911 - a rule each
        """Why ``request`` must stay on the device, or None."""
        p = self._policy
        if not self._cloud.enabled:
            return "cloud fallback is disabled"
        if request.cloud is CloudPolicy.NEVER:
            return "the request said cloud: never"
        if request.privacy is Privacy.LOCAL:
            return "the request is privacy: local"
        if request.kind in p.local_only_kinds:
            return f"kind {request.kind.value} is local-only"
        for reading in request.readings:
            if any(fnmatch.fnmatchcase(reading.name, pat) for pat in p.local_only_sensors):
                return f"sensor {reading.name} is local-only"
        if any(matches(pat, topic) for pat in p.local_only_topics):
            return f"topic {topic} is local-only"
        if not self._budget_left():
            return "the device's daily cloud budget is spent"
        return None

    def before(self, request: Request, topic: str) -> Decision:
        why_local = self.blocked(request, topic)
        if why_local is not None:
            return Decision(
                escalate=False, allowed=False, reason=None, text=f"stays on the edge: {why_local}"
            )
        if request.cloud is CloudPolicy.ALWAYS:
            return Decision(
                escalate=True,
                allowed=True,
                reason=EscalationReason.CLOUD_ALWAYS,
                text="the request said cloud: always",
            )
        score = complexity(request.text, task=request.task.value, keywords=self._policy.keywords)
        direct = self._policy.complexity_direct
        if score.score >= direct:
            cues = ", ".join(score.why) or "complex"
            return Decision(
                escalate=True,
                allowed=True,
                reason=EscalationReason.COMPLEX,
                text=f"complexity {score.score:.2f} >= {direct:.2f} ({cues})",
            )
        return Decision(escalate=False, allowed=True, reason=None, text="")

    def after(self, request: Request, edge: Response, before: Decision) -> Decision:
        if not edge.ok or edge.confidence is None:
            return Decision(
                escalate=False,
                allowed=before.allowed,
                reason=None,
                text=before.text or "edge error",
            )
        threshold = self.threshold(request.task)
        task = request.task.value
        strict = tool_threshold(request, edge, HIGH_RISK_THRESHOLD)
        if strict is not None and strict > threshold and edge.tool_call is not None:
            threshold, task = strict, f"{task}: {edge.tool_call.name} is high-risk"
        elif edge.reason == NO_TOOL_REASON:
            task = f"{task}: {NO_TOOL_REASON}"
        if edge.confidence >= threshold:
            return Decision(
                escalate=False,
                allowed=before.allowed,
                reason=None,
                text=f"confidence {edge.confidence:.2f} >= {threshold:.2f} ({task})",
            )
        under = f"confidence {edge.confidence:.2f} < {threshold:.2f} ({task})"
        if not before.allowed:
            return Decision(
                escalate=False,
                allowed=False,
                reason=None,
                text=f"{under}, but {before.text}",
            )
        return Decision(
            escalate=True,
            allowed=True,
            reason=EscalationReason.LOW_CONFIDENCE,
            text=under,
        )
