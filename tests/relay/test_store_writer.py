"""The group-commit store writer, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

from cloud_relay.config import RelaySettings
from cloud_relay.handling import Handler
from cloud_relay.intake import parse_inbound
from cloud_relay.llm import ChatRequest, Completion
from cloud_relay.pool import LoopThread
from cloud_relay.store import (
    ClaimState,
    Final,
    LogQuery,
    NewEscalation,
    RelayStore,
    StoreError,
    open_store,
)
from cloud_relay.store.writer import StoreWriter
from edge_slm.contract import Outcome
from edge_slm.mqtt import Inbound
from tests.relay.device import escalation

R = TypeVar("R")


def _esc(rid: str, relay_id: str = "relay-a") -> NewEscalation:
    return NewEscalation(
        device_id="d1", request_id=rid, relay_id=relay_id, received_at=time.time(), task="answer"
    )


def _final(outcome: Outcome = Outcome.OK) -> Final:
    return Final(outcome=outcome, answered_at=time.time(), reply='{"id":"x"}', latency_ms=1.0)


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread("writer-test")
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def writer(store: RelayStore) -> Iterator[StoreWriter]:
    w = StoreWriter(store)
    w.start()
    yield w
    w.stop()


def _on(loop: LoopThread, coro: Coroutine[Any, Any, R]) -> Future[R]:
    return asyncio.run_coroutine_threadsafe(coro, loop.loop)


def _hold(writer: StoreWriter) -> threading.Event:
    """Occupy the writer thread (inside a transaction) until the returned event is set."""
    entered, release = threading.Event(), threading.Event()

    def hold(_store: RelayStore) -> None:
        entered.set()
        release.wait(10)

    writer.submit(hold)
    assert entered.wait(5)
    return release


def _rows(url: str) -> list[Any]:
    """What another connection (as another relay) sees committed."""
    other = open_store(url, read_only=True)  # read-only: no migration, so no write lock
    try:
        return list(other.logs(LogQuery(limit=None)))
    finally:
        other.close()


def test_queued_calls_commit_as_one_batch_and_settle_only_after(
    store_url: str, writer: StoreWriter, loop: LoopThread
) -> None:
    release = _hold(writer)
    claims = [_on(loop, writer.claim(_esc(f"r{i}"), stale_before=0)) for i in range(5)]
    time.sleep(0.1)  # all five queued behind the held batch
    assert not any(f.done() for f in claims)
    assert _rows(store_url) == []
    before = writer.batches
    release.set()
    assert [f.result(5).state for f in claims] == [ClaimState.CLAIMED] * 5
    assert writer.batches == before + 2  # the held one, then one transaction for all five
    assert len(_rows(store_url)) == 5


def test_finals_and_a_duplicate_claim_in_one_batch(
    store_url: str, writer: StoreWriter, loop: LoopThread
) -> None:
    assert _on(loop, writer.claim(_esc("a"), stale_before=0)).result(5).state is ClaimState.CLAIMED
    release = _hold(writer)
    final = _on(loop, writer.finalize("d1", "a", _final()))
    dup = _on(loop, writer.claim(_esc("a", relay_id="relay-b"), stale_before=0))
    twins = [_on(loop, writer.claim(_esc("b", relay_id=r), stale_before=0)) for r in "xy"]
    time.sleep(0.1)
    release.set()
    final.result(5)
    # Final rows go first in a batch: the duplicate finds the stored reply.
    assert dup.result(5).state is ClaimState.FINAL
    assert [t.result(5).state for t in twins] == [ClaimState.CLAIMED, ClaimState.IN_FLIGHT]
    rows = {r.request_id: r for r in _rows(store_url)}
    assert (rows["a"].outcome, rows["b"].relay_id) == (Outcome.OK, "x")


def test_a_failing_call_fails_alone(store_url: str, writer: StoreWriter, loop: LoopThread) -> None:
    release = _hold(writer)
    good = [_on(loop, writer.claim(_esc(f"g{i}"), stale_before=0)) for i in range(3)]
    # A statement error aborts a PostgreSQL transaction: the batch is rolled back and
    # each call retried in a transaction of its own.
    bad = writer.submit(lambda s: s._db.query("SELECT * FROM no_such_table"))  # type: ignore[attr-defined]
    good += [_on(loop, writer.claim(_esc(f"h{i}"), stale_before=0)) for i in range(2)]
    time.sleep(0.1)
    release.set()
    assert [f.result(5).state for f in good] == [ClaimState.CLAIMED] * 5
    with pytest.raises(Exception, match="no_such_table"):
        bad.result(5)
    assert len(_rows(store_url)) == 5


class _CommitFails:
    """A store whose every commit fails (the transaction is rolled back instead)."""

    def __init__(self, inner: RelayStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._inner.transaction():
            yield
            raise StoreError("disk I/O error")


def test_a_failed_commit_is_an_error_for_every_caller(
    store_url: str, store: RelayStore, loop: LoopThread
) -> None:
    writer = StoreWriter(_CommitFails(store))  # type: ignore[arg-type]
    writer.start()
    try:
        release = _hold(writer)
        claims = [_on(loop, writer.claim(_esc(f"r{i}"), stale_before=0)) for i in range(4)]
        final = _on(loop, writer.finalize("d1", "r0", _final()))
        time.sleep(0.1)
        release.set()
        for future in [*claims, final]:
            with pytest.raises(StoreError, match="disk I/O error"):
                future.result(5)
        assert _rows(store_url) == []  # nothing committed, nobody told otherwise
    finally:
        writer.stop()


def test_stop_commits_everything_queued_then_refuses(
    store_url: str, writer: StoreWriter, loop: LoopThread
) -> None:
    for i in range(20):
        _on(loop, writer.claim(_esc(f"r{i}"), stale_before=0)).result(5)
    release = _hold(writer)
    finals = [_on(loop, writer.finalize("d1", f"r{i}", _final())) for i in range(20)]
    time.sleep(0.1)
    stopper = threading.Thread(target=writer.stop)
    stopper.start()  # a clean shutdown while the finals still wait in the queue
    time.sleep(0.1)
    release.set()
    stopper.join(10)
    assert not writer.alive
    for future in finals:
        future.result(5)
    assert {r.outcome for r in _rows(store_url)} == {Outcome.OK}
    assert len(_rows(store_url)) == 20
    with pytest.raises(StoreError, match="stopped"):
        writer.submit(lambda s: None)


class _PeekingLlm:
    """An instant LLM that, while called, reads the log through a connection of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[Any] = []

    async def complete(self, request: ChatRequest, *, deadline: float) -> Completion:
        self.seen = _rows(self.url)
        return Completion(
            text="peeked", model="peek-model", prompt_tokens=5, completion_tokens=2,
            confidence=None, attempts=1,
        )  # fmt: skip

    async def aclose(self) -> None:
        pass


def test_the_claim_is_committed_before_the_llm_is_called(
    store_url: str, writer: StoreWriter, loop: LoopThread
) -> None:
    settings = RelaySettings.model_validate(
        {"llm": {"model": "peek-model"}, "limits": {"rate_per_minute": 0, "daily_tokens": 0}}
    )
    llm = _PeekingLlm(store_url)
    sent: list[tuple[str, bytes, bytes | None]] = []
    handler = Handler(
        settings,
        store=writer,
        llm=llm,
        publish=lambda t, p, c: sent.append((t, p, c)),
        relay_id="relay-peek",
    )
    body = escalation("d1", "peek-1", expires_at=time.time() + 60)
    env = parse_inbound(
        Inbound(
            topic="slm/d1/escalation",
            payload=json.dumps(body).encode(),
            qos=1,
            retain=False,
            correlation_data=b"peek-1",
            user_properties=(("device_id", "d1"),),
        ),
        "slm",
    )
    assert env is not None
    _on(loop, handler.run(env)).result(10)
    (seen,) = llm.seen  # another relay would have seen the claim during the call
    assert (seen.request_id, seen.relay_id, seen.outcome) == ("peek-1", "relay-peek", None)
    (row,) = _rows(store_url)
    assert row.outcome is Outcome.OK  # and the final row before the reply went out
    assert len(sent) == 1
