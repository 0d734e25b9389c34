"""Group commit: one thread runs the relay's store calls, one transaction per batch.

Per escalation the relay writes twice (the claim, then the final row) and may
read once (the budget). Done one autocommitted statement at a time from many
workers, those writes queued on the connection's lock and each paid a commit
of its own. Here every call goes into one queue; the writer thread takes
whatever has gathered (up to ``max_batch``), runs it in order inside one
transaction, commits, and only then settles the callers' futures. Batches grow
with the load on their own: while one commits, the next gathers. Nothing waits
on a timer, so a lone escalation is written at once.

Within a batch, the final rows go first (one ``executemany``), then the claims
(their INSERTs sent together: one round trip on PostgreSQL), then any other
call, in order. A claim and the final row of one escalation never share a batch
(the final is submitted after its claim settled); a duplicate's claim may share
one with the original's final, and either order is a valid answer to it.

Guarantees:

* **durable before settled**: a claim's result is handed back only after its
  transaction committed, so an escalation is never sent to the LLM on a claim
  a crash could undo (the guard against double billing after a failover);
* **in order**: a final row is submitted only after its claim has settled, so it
  always lands after the claim; a release (shutdown) runs after every claim of
  its batch;
* **errors are not silent**: if a batch fails (a statement, or the commit), it
  is rolled back and each call is retried alone in its own transaction; a call
  that fails alone settles its future with that exception;
* **nothing queued is lost on a clean stop**: :meth:`stop` refuses new calls,
  then runs and commits everything already queued before the thread exits.

PostgreSQL with several relays: two batches may want the same rows (a
duplicate escalation seen by two relays at once). Row locks are held until the
batch commits, so such a pair can deadlock; PostgreSQL then aborts one
transaction, whose calls are retried one by one as above.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from cloud_relay.store.base import Claim, Final, NewEscalation, RelayStore, StoreError, Usage
from edge_slm.logs import get_logger
from edge_slm.queues import drain

log = get_logger("cloud_relay.store.writer")

T = TypeVar("T")
_STOP = object()


@dataclass(slots=True)
class _Call:
    #: A claim (NewEscalation, stale_before), a final row (device_id, request_id, Final),
    #: or any other call (a function of the store).
    claim: tuple[NewEscalation, float] | None
    final: tuple[str, str, Final] | None
    fn: Callable[[RelayStore], Any] | None
    future: asyncio.Future[Any] | Future[Any]
    loop: asyncio.AbstractEventLoop | None  # set for asyncio futures: settled on their loop


def _settle_here(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """On the future's loop: settle a batch's asyncio futures (callers gone: skipped)."""
    for future, result, error in items:
        if future.done():  # cancelled by its caller
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class StoreWriter:
    """The relay's store calls on one thread, group-committed. Thread-safe."""

    def __init__(
        self, store: RelayStore, *, max_batch: int = 256, name: str = "relay-store"
    ) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Call | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._accepting = True
        #: Counters for tests and the bench: transactions committed, calls in them.
        self.batches = 0
        self.calls = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new calls; run and commit every queued one; join the thread."""
        if not self._accepting:
            return
        self._accepting = False
        self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("store_writer_stop_timeout", timeout_s=timeout_s)
                return
        # A call that raced stop() in behind the marker: its caller must not wait forever.
        late = [item for item in drain(self._queue) if isinstance(item, _Call)]
        self._settle([(c, None, StoreError("the store writer is stopped")) for c in late])

    # -- submitting --------------------------------------------------------

    def submit(self, fn: Callable[[RelayStore], T]) -> Future[T]:
        """Queue ``fn(store)`` from any thread; the future settles once committed."""
        future: Future[T] = Future()
        self._put(_Call(None, None, fn, future, None))
        return future

    async def call(self, fn: Callable[[RelayStore], T]) -> T:
        """Run ``fn(store)`` in the next batch; return once its transaction committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put(_Call(None, None, fn, future, loop))
        return await future

    def _put(self, call: _Call) -> None:
        if not self._accepting:
            raise StoreError("the store writer is stopped")
        self._queue.put(call)  # one behind the stop marker is failed by stop()

    # -- the relay's calls -------------------------------------------------

    async def claim(self, esc: NewEscalation, *, stale_before: float) -> Claim:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Claim] = loop.create_future()
        self._put(_Call((esc, stale_before), None, None, future, loop))
        return await future

    async def finalize(self, device_id: str, request_id: str, final: Final) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._put(_Call(None, (device_id, request_id, final), None, future, loop))
        await future

    async def usage(self, device_id: str, *, calls_since: float, tokens_since: float) -> Usage:
        return await self.call(
            lambda s: s.usage(device_id, calls_since=calls_since, tokens_since=tokens_since)
        )

    def release(self, keys: Sequence[tuple[str, str]], timeout_s: float = 10.0) -> None:
        """Blocking (for the shutdown path): drop unanswered claims, given as (device_id,
        request_id), in one transaction, committed on return."""

        def release_all(store: RelayStore) -> None:
            for device_id, request_id in keys:
                store.release(device_id, request_id)

        self.submit(release_all).result(timeout_s)

    # -- the writer thread -------------------------------------------------

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Call] = [first]  # type: ignore[list-item]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True  # finish this batch, then exit: nothing is behind it
                    break
                batch.append(item)  # type: ignore[arg-type]
            try:
                self._run(batch)
            except BaseException as exc:  # a bug here must not leave callers waiting forever
                log.exception("store_writer_failed")
                self._settle([(c, None, exc) for c in batch])
                raise

    def _execute(self, batch: list[_Call]) -> list[Any]:
        """Every call of ``batch`` (finals, claims, the rest); results in batch order."""
        store = self._store
        results: list[Any] = [None] * len(batch)
        finals = [call.final for call in batch if call.final is not None]
        if finals:
            store.finalize_many(finals)
        claims = [(i, call.claim) for i, call in enumerate(batch) if call.claim is not None]
        if claims:
            claimed = store.claim_many([claim for _, claim in claims])
            for (i, _), result in zip(claims, claimed, strict=True):
                results[i] = result
        for i, call in enumerate(batch):
            if call.fn is not None:
                results[i] = call.fn(store)
        return results

    def _run(self, batch: list[_Call]) -> None:
        try:
            with self._store.transaction():
                results = self._execute(batch)
        except Exception as exc:  # noqa: BLE001 - each call is retried alone below
            if len(batch) == 1:
                self._settle([(batch[0], None, exc)])
                return
            log.warning("store_batch_failed", calls=len(batch), error=repr(exc))
            self._settle([self._alone(call) for call in batch])
            return
        self.batches += 1
        self.calls += len(batch)
        self._settle([(call, result, None) for call, result in zip(batch, results, strict=True)])

    def _alone(self, call: _Call) -> tuple[_Call, Any, BaseException | None]:
        try:
            with self._store.transaction():
                (result,) = self._execute([call])
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            return call, None, exc
        self.batches += 1
        self.calls += 1
        return call, result, None

    @staticmethod
    def _settle(done: list[tuple[_Call, Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for call, result, error in done:
            if call.loop is None:
                future: Future[Any] = call.future  # type: ignore[assignment]
                if future.set_running_or_notify_cancel():
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(result)
            else:
                by_loop.setdefault(call.loop, []).append((call.future, result, error))
        for loop, items in by_loop.items():
            try:  # one wake-up of each loop per batch, not one per call
                loop.call_soon_threadsafe(_settle_here, items)
            except RuntimeError:  # that loop is closed: its callers are gone
                log.debug("store_result_for_closed_loop", calls=len(items))
