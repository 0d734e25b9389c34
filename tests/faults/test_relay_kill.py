"""Fault: one of two relays is SIGKILLed mid-load.

Two ``cloud-relay`` processes in one share group (``$share/relays/...``) on one
shared store (a fresh PostgreSQL schema at 127.0.0.1:5432, as a fleet runs; a
shared SQLite file when no server answers), the real agent sending 30
``cloud: always`` requests, the real LLM server. Relay A is SIGKILLed once it
has answered a few: its queued escalations were PUBACKed and are gone with it,
and the rows it had claimed stay in flight in the store.

Recovery comes from three mechanisms, all exercised here: the broker sends the
group's new escalations to the survivor only; the agent's outbox re-sends every
unanswered escalation (``outbox.republish_s`` = 1 s); and the survivor takes
over a row claimed by the dead relay once the claim is older than
``limits.claim_ttl_s`` (40 s here, above ``llm.total_timeout_s`` = 30 s).

Pass: every app request gets exactly one in-time reply and, after an
``edge-fallback``, exactly one correction (none lost); one relay log row per
request with one LLM attempt (none double-billed). The LLM server may have
worked on the dead relay's in-flight calls (at most its concurrency, 2): that
work is lost with the process and is bounded, not billed twice in the log.
"""

from __future__ import annotations

import json
import os
import queue
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from edge_slm.contract import CloudReply, ErrorCode, ErrorInfo, Outcome
from tests.support.app import Reply
from tests.support.system import System

PG_BASE = os.environ.get("RELAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REQUESTS = 30
LABELS = ["lights_on", "lights_off", "play_music"]
CONCURRENCY = 2
RELAY_ENV = {
    "CLOUD_RELAY_LIMITS__MAX_CONCURRENCY": str(CONCURRENCY),
    "CLOUD_RELAY_LIMITS__RATE_PER_MINUTE": "0",  # 30 from one device in seconds is the point
    # The outbox re-sends every unanswered escalation each second, so the survivor's
    # queue holds hundreds of copies: a bigger queue keeps it from shedding them as
    # `busy` (see test_busy_shed_reply_keeps_the_escalation_for_its_correction), and a
    # claim TTL above the survivor's queueing delay keeps it from taking over its own
    # live claims (see test_duplicates.py::test_queued_duplicate_never_takes_over_a_live_claim).
    "CLOUD_RELAY_LIMITS__QUEUE_SIZE": "8192",
    "CLOUD_RELAY_LLM__TOTAL_TIMEOUT_S": "30",
    "CLOUD_RELAY_LIMITS__CLAIM_TTL_S": "40",
}


@pytest.fixture
def shared_db(tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL schema for this test, or a shared SQLite file without a server."""
    try:
        admin = psycopg.connect(PG_BASE, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL at {PG_BASE} unreachable ({exc}); using a shared SQLite file")
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    schema = f"faults_{uuid.uuid4().hex[:10]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def _start_subscribed_relay(s: System) -> Any:
    relay = s.start_relay(**RELAY_ENV)
    relay.wait_event("mqtt_connected")
    time.sleep(0.5)  # the SUBSCRIBE leaves from on_connect; let the SUBACK land
    return relay


def _complete(replies: dict[str, list[dict[str, Any]]], ids: list[str]) -> bool:
    """Every id has its in-time reply, and every fallback its correction."""
    for rid in ids:
        got = replies.get(rid, [])
        first = [r for r in got if not r.get("supersedes")]
        if not first:
            return False
        fallback = first[0].get("source") == "edge-fallback"
        if fallback and not [r for r in got if r.get("supersedes")]:
            return False
    return True


def _collect(s: System, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The app's replies by id, until complete (or 150 s), plus 3 s for stragglers."""
    replies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    end = time.monotonic() + 150
    while not _complete(replies, ids) and time.monotonic() < end:
        try:
            reply: Reply = s.app.replies.get(timeout=0.5)
        except queue.Empty:
            continue
        replies[reply.payload["id"]].append(reply.payload)
    time.sleep(3.0)  # outbox re-sends still in the air must not produce anything new
    while not s.app.replies.empty():
        extra = s.app.replies.get_nowait()
        replies[extra.payload["id"]].append(extra.payload)
    return replies


@pytest.mark.timeout(240)
def test_relay_sigkilled_mid_load_survivor_answers_each_request_once(
    system: System,
    shared_db: str,
) -> None:
    system.db = shared_db  # relay_rows() reads the same store
    relay_a = _start_subscribed_relay(system)
    relay_b = _start_subscribed_relay(system)
    system.start_agent()
    before = system.llm.completions
    ids = [f"rk-{k:02d}" for k in range(REQUESTS)]
    for k, rid in enumerate(ids):
        # A short answer: one LLM call per escalation (a classify reply that is not a
        # label is asked again, which would blur the count). The deadline leaves the
        # agent's queue time to make every edge answer; the cloud, behind two busy
        # relays and the dead one's claims, misses it for some: fallback + correction.
        # At 15 s a slow runner's queue (the agent also takes every re-sent cloud reply)
        # passed it for the last requests: deadline_exceeded before any edge answer.
        system.ask(
            rid, text=f"Say the number {k}.", cloud="always", max_tokens=4, deadline_ms=30_000
        )

    end = time.monotonic() + 60
    while relay_a.count("escalation_answered") < 3:  # A is now mid-call with more queued
        assert time.monotonic() < end, "relay A answered nothing"
        time.sleep(0.02)
    relay_a.kill()
    answered_by_a = relay_a.count("escalation_answered")

    replies = _collect(system, ids)

    calls = system.llm.completions - before
    rows = [r for r in system.relay_rows() if r["request_id"] in set(ids)]
    by_relay: dict[str, int] = defaultdict(int)
    for row in rows:
        by_relay[row["relay_id"]] += 1
    in_time = {rid: [r for r in got if not r.get("supersedes")] for rid, got in replies.items()}
    corrections = {rid: [r for r in got if r.get("supersedes")] for rid, got in replies.items()}
    summary = {
        "store": shared_db.split(":", 1)[0],
        "requests": REQUESTS,
        "answered_by_a_before_kill": answered_by_a,
        "answered_by_b": relay_b.count("escalation_answered"),
        "rows_by_relay": sorted(by_relay.values()),
        "llm_calls": calls,
        "first_replies": dict(Counter(g[0].get("source") for g in in_time.values() if g)),
        "corrections": sum(len(c) for c in corrections.values()),
        "in_flight_dropped_by_b": relay_b.count("escalation_duplicate_in_flight"),
        "stored_reply_resent_by_b": relay_b.count("escalation_duplicate_resent"),
    }
    print("relay-kill summary: " + json.dumps(summary))
    (system.tmp / "replies.json").write_text(json.dumps(replies, indent=1))

    lost = [rid for rid in ids if not in_time.get(rid)]
    assert lost == [], f"no reply at all: {lost}"
    assert sorted(replies) == ids
    for rid in ids:
        first, later = in_time[rid], corrections.get(rid, [])
        assert len(first) == 1, (rid, first)
        assert first[0]["ok"] is True, first[0]
        assert first[0]["source"] in ("cloud", "edge-fallback"), first[0]
        if first[0]["source"] == "edge-fallback":
            assert len(later) == 1, (rid, "fallback without exactly one correction", later)
            assert later[0]["ok"] is True, later[0]
            assert later[0]["source"] == "cloud"
        else:
            assert later == [], (rid, "a cloud answer in time needs no correction", later)
    # None double-billed: one row per request, one LLM attempt each ...
    assert sorted(r["request_id"] for r in rows) == ids
    assert all(r["attempts"] == 1 for r in rows), [r for r in rows if r["attempts"] != 1]
    assert all(r["outcome"] == "ok" for r in rows), [r for r in rows if r["outcome"] != "ok"]
    assert len(by_relay) == 2, by_relay  # both served; the survivor took the rest
    answered = Counter(
        e.get("request_id")
        for relay in (relay_a, relay_b)
        for e in relay.log_events()
        if e.get("event") == "escalation_answered"
    )
    assert [rid for rid, n in answered.items() if n > 1] == [], "an escalation answered twice"
    # ... and the LLM saw at most the dead relay's in-flight calls twice.
    assert REQUESTS <= calls <= REQUESTS + CONCURRENCY, calls


@pytest.mark.timeout(90)
def test_busy_shed_reply_keeps_the_escalation_for_its_correction(
    system: System,
) -> None:
    """What the survivor's full queue did to some requests in the run above, made exact."""
    system.start_agent()
    device_id = system.topics.device_id
    system.ask("shed-1", task="classify", labels=LABELS, cloud="always", deadline_ms=1500)
    assert system.spy.next_reply(30).payload["id"] == "shed-1"
    assert system.app.next_reply(30).payload["source"] == "edge-fallback"
    shed = CloudReply(  # exactly what RelayDaemon._shed publishes when its queue is full
        id="shed-1",
        device_id=device_id,
        ok=False,
        outcome=Outcome.LLM_ERROR,
        error=ErrorInfo(
            code=ErrorCode.BUSY, message="the relay's queue is full", retry_after_ms=1000
        ),
    )
    system.app.publish(system.topics.cloud, json.loads(shed.to_wire()), correlation_data=b"shed-1")
    time.sleep(0.5)
    while not system.spy.replies.empty():
        system.spy.replies.get_nowait()
    time.sleep(2.5)  # outbox.republish_s is 1 s: a kept row is re-sent by now
    resent = [m.payload["id"] for m in list(system.spy.replies.queue)]
    answer = CloudReply(
        id="shed-1",
        device_id=device_id,
        ok=True,
        outcome=Outcome.OK,
        answer="lights_off",
        label="lights_off",
        model="test-cloud",
    )
    system.app.publish(
        system.topics.cloud, json.loads(answer.to_wire()), correlation_data=b"shed-1"
    )
    correction = system.app.next_reply(10).payload
    assert correction["supersedes"] is True
    assert correction["label"] == "lights_off"
    assert "shed-1" in resent
