"""The relay log store, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from cloud_relay.store import (
    ClaimState,
    Final,
    LogQuery,
    NewEscalation,
    RelayStore,
    open_store,
)
from edge_slm.contract import Outcome


def _esc(
    device: str = "d1", rid: str = "r1", at: float | None = None, **kw: object
) -> NewEscalation:
    return NewEscalation(
        device_id=device,
        request_id=rid,
        relay_id=str(kw.pop("relay_id", "relay-a")),
        received_at=time.time() if at is None else at,
        task="answer",
        kind="text",
        reason="low_confidence",
        edge_answer="edge says hi",
        edge_confidence=0.3,
        redactions={"email": 2},
    )


def _final(outcome: Outcome = Outcome.OK, **kw: object) -> Final:
    base: dict[str, object] = {
        "outcome": outcome,
        "answered_at": time.time(),
        "reply": '{"id":"r1"}',
        "latency_ms": 120.0,
        "llm_model": "m",
        "tokens_in": 10,
        "tokens_out": 5,
        "cost_usd": 0.001,
        "attempts": 1,
        "cloud_answer": "hi",
        "agreement": True,
    }
    base.update(kw)
    return Final(**base)  # type: ignore[arg-type]


def test_claim_then_duplicate_is_in_flight_then_final(store: RelayStore) -> None:
    now = time.time()
    assert store.claim(_esc(at=now), stale_before=now - 300).state is ClaimState.CLAIMED
    dup = store.claim(_esc(at=now, relay_id="relay-b"), stale_before=now - 300)
    assert dup.state is ClaimState.IN_FLIGHT
    store.finalize("d1", "r1", _final(reply='{"stored":true}'))
    again = store.claim(_esc(), stale_before=now - 300)
    assert again.state is ClaimState.FINAL
    assert again.reply == '{"stored":true}'


def test_same_request_id_on_other_device_is_independent(store: RelayStore) -> None:
    now = time.time()
    assert store.claim(_esc("d1"), stale_before=now - 300).state is ClaimState.CLAIMED
    assert store.claim(_esc("d2"), stale_before=now - 300).state is ClaimState.CLAIMED


def test_stale_in_flight_claim_is_taken_over_once(store: RelayStore) -> None:
    store.claim(_esc(), stale_before=time.time() - 300)
    # Every claim made before "a second from now" counts as stale: relay b takes over.
    first = store.claim(_esc(relay_id="b"), stale_before=time.time() + 1)
    # The takeover stamped a fresh claimed_at, so c sees a live claim.
    second = store.claim(_esc(relay_id="c"), stale_before=time.time() - 300)
    assert first.state is ClaimState.CLAIMED
    assert second.state is ClaimState.IN_FLIGHT


def test_claim_age_counts_from_the_claim_not_from_receipt(store: RelayStore) -> None:
    """A message that waited long in a relay's queue must not look stale at birth."""
    received_long_ago = time.time() - 1000
    store.claim(_esc(at=received_long_ago), stale_before=time.time() - 300)
    dup = store.claim(_esc(relay_id="b"), stale_before=time.time() - 300)
    assert dup.state is ClaimState.IN_FLIGHT


def test_release_lets_a_replay_claim_again(store: RelayStore) -> None:
    now = time.time()
    store.claim(_esc(), stale_before=now - 300)
    store.release("d1", "r1")
    assert store.claim(_esc(), stale_before=now - 300).state is ClaimState.CLAIMED


def test_claim_carries_llm_start_into_insert_and_takeover(store: RelayStore) -> None:
    # The handler claims what it is about to send to the LLM with llm_start set: one
    # write instead of claim + mark_llm_start. A takeover without one keeps the old value.
    now = time.time()
    store.claim(dataclasses.replace(_esc(at=now), llm_start=now + 0.5), stale_before=0)
    (row,) = store.logs(LogQuery())
    assert row.llm_start == now + 0.5
    taken = store.claim(_esc(at=now, relay_id="relay-b"), stale_before=time.time() + 1)
    assert taken.state is ClaimState.CLAIMED
    assert store.logs(LogQuery())[0].llm_start == now + 0.5
    again = dataclasses.replace(_esc(at=now, relay_id="relay-c"), llm_start=now + 2)
    assert store.claim(again, stale_before=time.time() + 1).state is ClaimState.CLAIMED
    (row,) = store.logs(LogQuery())
    assert (row.relay_id, row.llm_start) == ("relay-c", now + 2)


def test_claim_many_in_one_transaction_has_one_winner_per_key(store: RelayStore) -> None:
    now = time.time()
    with store.transaction():
        got = store.claim_many(
            [
                (_esc(rid="a", at=now), now - 300),
                (_esc(rid="a", at=now, relay_id="relay-b"), now - 300),
                (_esc(rid="b", at=now), now - 300),
            ]
        )
    assert [c.state for c in got] == [ClaimState.CLAIMED, ClaimState.IN_FLIGHT, ClaimState.CLAIMED]
    store.finalize_many([("d1", "a", _final()), ("d1", "b", _final(Outcome.EXPIRED))])
    rows = {r.request_id: r for r in store.logs(LogQuery())}
    assert (rows["a"].outcome, rows["a"].relay_id) == (Outcome.OK, "relay-a")
    assert rows["b"].outcome is Outcome.EXPIRED
    again = store.claim_many([(_esc(rid="a"), now - 300)])
    assert again[0].state is ClaimState.FINAL


def test_a_rolled_back_transaction_leaves_nothing(store: RelayStore) -> None:
    def failing_batch() -> None:
        with store.transaction():
            store.claim(_esc(rid="gone"), stale_before=0)
            raise RuntimeError("the batch failed")

    with pytest.raises(RuntimeError):
        failing_batch()
    assert store.logs(LogQuery()) == []
    assert store.claim(_esc(rid="gone"), stale_before=0).state is ClaimState.CLAIMED


def test_finalize_round_trips_every_field(store: RelayStore) -> None:
    now = time.time()
    store.claim(_esc(at=now), stale_before=now - 300)
    store.mark_llm_start("d1", "r1", now + 0.01)
    store.finalize(
        "d1",
        "r1",
        _final(cloud_label="x", cloud_confidence=0.9, error=None, attempts=2, agreement=False),
    )
    (row,) = store.logs(LogQuery())
    assert row.outcome is Outcome.OK
    assert row.received_at == now
    assert row.llm_start == now + 0.01
    assert row.tokens_in == 10
    assert row.tokens_out == 5
    assert row.cost_usd == 0.001
    assert row.attempts == 2
    assert row.agreement is False
    assert row.redactions == {"email": 2}
    assert row.edge_answer == "edge says hi"
    assert row.edge_confidence == 0.3
    assert row.cloud_label == "x"
    assert row.reply == '{"id":"r1"}'


def test_logs_filters(store: RelayStore) -> None:
    base = time.time() - 3600
    for i, (device, outcome) in enumerate(
        [("a", Outcome.OK), ("a", Outcome.LLM_ERROR), ("b", Outcome.OK), ("b", Outcome.BUDGET)]
    ):
        store.claim(_esc(device, f"r{i}", at=base + i * 600), stale_before=0)
        store.finalize(device, f"r{i}", _final(outcome, answered_at=base + i * 600 + 1))
    store.claim(_esc("c", "inflight", at=base + 3000), stale_before=0)

    assert [r.request_id for r in store.logs(LogQuery())] == ["inflight", "r3", "r2", "r1", "r0"]
    assert [r.request_id for r in store.logs(LogQuery(device_id="a"))] == ["r1", "r0"]
    assert [r.request_id for r in store.logs(LogQuery(outcome=Outcome.OK))] == ["r2", "r0"]
    assert [r.request_id for r in store.logs(LogQuery(since=base + 1000))] == [
        "inflight",
        "r3",
        "r2",
    ]
    assert len(store.logs(LogQuery(limit=2))) == 2
    follow = store.logs(LogQuery(answered_after=base + 700, oldest_first=True, limit=None))
    assert [r.request_id for r in follow] == ["r2", "r3"]


def test_usage_counts_llm_calls_and_tokens(store: RelayStore) -> None:
    now = time.time()
    for i in range(3):
        store.claim(_esc(rid=f"r{i}", at=now - i * 50), stale_before=0)
        store.finalize("d1", f"r{i}", _final(tokens_in=100, tokens_out=10))
    store.mark_llm_start("d1", "r0", now)
    store.mark_llm_start("d1", "r2", now - 100)
    usage = store.usage("d1", calls_since=now - 60, tokens_since=now - 75)
    assert usage.llm_calls == 1
    assert usage.tokens == 220
    assert store.usage("other", calls_since=0, tokens_since=0).tokens == 0


def test_two_concurrent_claims_of_one_key_have_one_winner(store_url: str) -> None:
    """Two separate connections (as two relay processes) race for the same key."""
    stores = [open_store(store_url) for _ in range(2)]
    try:
        for round_ in range(20):
            barrier = threading.Barrier(2)
            results: list[ClaimState] = []

            def race(
                s: RelayStore, rid: str, barrier: threading.Barrier, results: list[ClaimState]
            ) -> None:
                barrier.wait()
                results.append(s.claim(_esc(rid=rid), stale_before=0).state)

            threads = [
                threading.Thread(target=race, args=(s, f"race-{round_}", barrier, results))
                for s in stores
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(results) == [ClaimState.CLAIMED, ClaimState.IN_FLIGHT], results
    finally:
        for s in stores:
            s.close()


def test_schema_creation_is_idempotent(store_url: str) -> None:
    for _ in range(2):
        open_store(store_url).close()
    s = open_store(store_url)
    assert s.logs(LogQuery()) == []
    s.close()
