"""Recent requests by (reply topic, id): one inference per request, however often
it is delivered, and each delivery acknowledged once its request is answered.

MQTT QoS 1 is at-least-once, and apps re-send what went unanswered. A copy of
an answered request gets the cached reply again, byte for byte; a copy of one
still in progress is absorbed (the first will answer). Retryable refusals
(``busy``, ``shutting_down``) are not cached, so a retry is served afresh.

The agent PUBACKs a request only after the broker has PUBACKed its final reply,
so one the process dies holding is redelivered after the restart. Every delivery
of an in-flight request (the first and any absorbed copies) is kept here under
the same lock as the in-flight set, and handed back by
:meth:`RecentRequests.finish` to be acknowledged: no copy is acked early, and
none is left unacked.

Final replies are also written to a small SQLite file before they are published,
and marked confirmed once the broker has them (:meth:`RecentRequests.delivered`).
A redelivery that reaches the next process after a crash is then never answered
afresh: it gets the same reply again, byte for byte (the app matches it by id),
or only its ack when the reply was confirmed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path

from agent.localdb import open_wal
from edge_slm.contract import ErrorCode, Response
from edge_slm.logs import get_logger
from edge_slm.mqtt import Inbound

log = get_logger("agent.recent")

Key = tuple[str, str]  # (reply topic, request id)

RETRYABLE = frozenset({ErrorCode.BUSY, ErrorCode.SHUTTING_DOWN})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replied (
    topic    TEXT NOT NULL,
    id       TEXT NOT NULL,
    response  BLOB NOT NULL,  -- Response.to_wire()
    at        REAL NOT NULL,  -- epoch seconds of the reply
    confirmed INTEGER NOT NULL DEFAULT 0,  -- the broker PUBACKed the reply
    PRIMARY KEY (topic, id)
)
"""


class RecentRequests:
    def __init__(self, *, size: int = 4096, ttl_s: float = 600.0) -> None:
        self._size = size
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._done: OrderedDict[Key, tuple[float, Response]] = OrderedDict()
        self._confirmed: set[Key] = set()
        self._in_flight: dict[Key, list[Inbound]] = {}
        self._db: sqlite3.Connection | None = None
        self._writes = 0

    # -- the file of confirmed replies -------------------------------------

    def open(self, path: Path) -> int:
        """Keep confirmed replies in ``path`` and load the unexpired ones; returns how many.

        The file is a cache: a damaged one is replaced (and logged), never fatal.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = _connect(path)
        except sqlite3.DatabaseError:
            log.exception("replied_cache_unreadable", path=str(path), action="recreated")
            path.unlink(missing_ok=True)
            db = _connect(path)
        cutoff = time.time() - self._ttl
        db.execute("DELETE FROM replied WHERE at < ?", (cutoff,))
        rows = db.execute(
            "SELECT topic, id, response, at, confirmed FROM replied ORDER BY at DESC LIMIT ?",
            (self._size,),
        ).fetchall()
        with self._lock:
            self._db = db
            for topic, request_id, payload, at, confirmed in reversed(rows):
                key = (str(topic), str(request_id))
                self._done[key] = (float(at), Response.model_validate_json(payload))
                if confirmed:
                    self._confirmed.add(key)
        return len(rows)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def delivered(self, key: Key) -> None:
        """The broker has this final reply: a later redelivery needs only its ack."""
        with self._lock:
            if key not in self._done:
                return
            self._confirmed.add(key)
            self._write("UPDATE replied SET confirmed = 1 WHERE topic = ? AND id = ?", key)

    def confirmed(self, key: Key) -> bool:
        with self._lock:
            return key in self._confirmed

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        if self._db is None:
            return
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as exc:
            # Disk full or failing: only crash-time dedup is lost, never a reply.
            log.warning("replied_cache_unwritable", error=str(exc))

    # -- in memory ---------------------------------------------------------

    def begin(self, key: Key, delivery: Inbound | None = None) -> Response | bool:
        """The cached reply, True if a copy is in flight, or False: go ahead (now in flight).

        ``delivery`` is held for acknowledgement unless a cached reply is returned
        (the caller replays it and acks the delivery itself).
        """
        now = time.time()
        with self._lock:
            cached = self._done.get(key)
            if cached is not None and now - cached[0] < self._ttl:
                return cached[1]
            held = self._in_flight.get(key)
            if held is not None:
                if delivery is not None:
                    held.append(delivery)
                return True
            self._in_flight[key] = [delivery] if delivery is not None else []
            return False

    def finish(
        self, key: Key, response: Response, payload: bytes | None = None
    ) -> list[Inbound] | None:
        """Record the final reply of a request; return its deliveries to ack.

        None means a final reply already went out for this key (say, the cloud's
        answer to an escalation a crashed run accepted, then the redelivered copy's
        own): the caller drops this one, so the app gets one answer. Retryable
        refusals are not cached, so a retry is served afresh.
        """
        retryable = response.error is not None and response.error.code in RETRYABLE
        with self._lock:
            held = self._in_flight.pop(key, None)
            if held is None:
                cached = self._done.get(key)
                if cached is not None and time.time() - cached[0] < self._ttl:
                    return None
                held = []
            if not retryable:
                now = time.time()
                self._done[key] = (now, response)
                self._done.move_to_end(key)
                while len(self._done) > self._size:
                    self._confirmed.discard(self._done.popitem(last=False)[0])
                self._write(
                    "INSERT OR REPLACE INTO replied VALUES (?, ?, ?, ?, 0)",
                    (key[0], key[1], response.to_wire() if payload is None else payload, now),
                )
                self._writes += 1
                if self._writes % 512 == 0:
                    self._write("DELETE FROM replied WHERE at < ?", (now - self._ttl,))
            return held

    def forget(self, key: Key) -> list[Inbound]:
        """Drop an in-flight request without a cached reply; return its deliveries."""
        with self._lock:
            return self._in_flight.pop(key, None) or []

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)


def _connect(path: Path) -> sqlite3.Connection:
    # synchronous=NORMAL: a commit survives the process being killed (what this
    # guards against) without an fsync per reply.
    return open_wal(path, synchronous="NORMAL", setup=_setup)


def _setup(db: sqlite3.Connection) -> None:
    db.execute(_SCHEMA)
    db.execute("SELECT COUNT(*) FROM replied").fetchone()
