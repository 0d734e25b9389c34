"""The values a request carries through the pipeline: its routing decision and its job.

Kept low (no threads, no model) so intake, the router, the escalator and the
worker can all name them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.routing import ReplyRoute
from edge_slm.contract import EscalationReason, Request

if TYPE_CHECKING:
    from agent.skills import Skill


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """A routing decision, before generation or once the edge answer exists."""

    escalate: bool  # send it to the cloud
    allowed: bool  # may the request leave the device at all
    reason: EscalationReason | None  # why it escalates (None when it does not)
    text: str  # human-readable; becomes Response.reason


@dataclass(frozen=True, slots=True)
class Job:
    request: Request
    route: ReplyRoute
    received_at: float  # time.monotonic() at receipt
    deadline: float | None  # absolute, time.monotonic() clock
    max_tokens: int
    decision: Decision | None = None  # the routing decision made before generation
    skill: Skill | None = None  # resolved at intake for a request naming a skill
