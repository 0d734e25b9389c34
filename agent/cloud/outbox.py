"""The durable escalation outbox (SQLite, WAL, fsync on commit).

An escalation is written here *before* it is published and deleted only when
its cloud reply has been handled, so SIGKILL or a power cut between the two
loses nothing: on every (re)connect the pending rows are published again, and
the relay's idempotency on (device, request id) makes the duplicates harmless.

A broker's PUBACK only says the broker took the message, not that it reached
disk or the relay; hence this table, rather than trusting QoS 1 alone.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.localdb import open_wal
from edge_slm.logs import get_logger

log = get_logger("agent.outbox")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    request_id   TEXT PRIMARY KEY,
    payload      BLOB NOT NULL,        -- Escalation.to_wire()
    reply_topic  TEXT NOT NULL,        -- where the app wants answers
    correlation  BLOB,                 -- MQTT v5 correlation data of the request
    corrections  INTEGER NOT NULL,     -- app wants a late cloud answer
    created_at   REAL NOT NULL,        -- epoch seconds
    expires_at   REAL NOT NULL,        -- epoch seconds
    publishes    INTEGER NOT NULL DEFAULT 0,
    published_at REAL NOT NULL DEFAULT 0,  -- epoch seconds of the last publish
    replied      INTEGER NOT NULL DEFAULT 0  -- the app has its final (edge) answer
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class OutboxFull(Exception):
    """The outbox is at its row or byte bound; the escalation is dropped."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    request_id: str
    payload: bytes
    reply_topic: str
    correlation: bytes | None
    corrections: bool
    created_at: float
    expires_at: float
    publishes: int = 0
    #: The app already has its final answer (the edge fallback); the cloud's can
    #: only be a correction. False after a crash before any reply.
    replied: bool = False


class Outbox:
    """Thread-safe: one connection, guarded by a lock (the writes are tiny)."""

    def __init__(self, path: Path, *, max_rows: int, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            self._db = _open(path)
        except sqlite3.DatabaseError:
            # Never silently empty a damaged outbox: keep it for inspection.
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            path.rename(aside)
            for suffix in ("-wal", "-shm"):
                sidecar = path.with_name(path.name + suffix)
                if sidecar.exists():
                    sidecar.rename(aside.with_name(aside.name + suffix))
            log.exception("outbox_corrupt_moved_aside", path=str(path), moved_to=str(aside))
            self.moved_aside: Path | None = aside
            self._db = _open(path)
        else:
            self.moved_aside = None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _bump(self, db: sqlite3.Connection, name: str, by: int = 1) -> None:
        db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def add(self, row: OutboxRow) -> bool:
        """Store a row durably; False if it was already there (a re-escalation).

        Raises :class:`OutboxFull` (and counts a drop) at the bounds.
        """
        refused = None
        added = False
        with self._tx() as db:
            count, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
            ).fetchone()
            if count >= self.max_rows or size + len(row.payload) > self.max_bytes:
                self._bump(db, "dropped_full")
                refused = (
                    f"outbox holds {count} rows / {size} bytes "
                    f"(limits {self.max_rows} / {self.max_bytes})"
                )
            else:
                cur = db.execute(
                    "INSERT OR IGNORE INTO outbox(request_id, payload, reply_topic, correlation,"
                    " corrections, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.request_id,
                        row.payload,
                        row.reply_topic,
                        row.correlation,
                        int(row.corrections),
                        row.created_at,
                        row.expires_at,
                    ),
                )
                added = bool(cur.rowcount)
                if added:
                    self._bump(db, "escalations_day_" + _day(row.created_at))
        if refused is not None:
            raise OutboxFull(refused)
        return added

    def get(self, request_id: str) -> OutboxRow | None:
        with self._lock:
            found = self._db.execute(_SELECT + " WHERE request_id = ?", (request_id,)).fetchone()
        return _row(found) if found else None

    def remove(self, request_id: str) -> bool:
        with self._tx() as db:
            return bool(
                db.execute("DELETE FROM outbox WHERE request_id = ?", (request_id,)).rowcount
            )

    def mark_replied(self, request_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET replied = 1 WHERE request_id = ?", (request_id,))

    def mark_published(self, request_ids: Sequence[str], when: float) -> None:
        """Count a publish of each row, in one transaction (one fsync for a whole sweep)."""
        with self._tx() as db:
            db.executemany(
                "UPDATE outbox SET publishes = publishes + 1, published_at = ?"
                " WHERE request_id = ?",
                [(when, request_id) for request_id in request_ids],
            )

    def due(self, now: float, quiet_s: float) -> list[OutboxRow]:
        """Unexpired rows not published for ``quiet_s``: their reply may be lost."""
        with self._lock:
            rows = self._db.execute(
                _SELECT + " WHERE expires_at > ? AND published_at <= ? ORDER BY created_at",
                (now, now - quiet_s),
            ).fetchall()
        return [_row(r) for r in rows]

    def pending(self, now: float) -> list[OutboxRow]:
        """Unexpired rows, oldest first."""
        with self._lock:
            rows = self._db.execute(
                _SELECT + " WHERE expires_at > ? ORDER BY created_at", (now,)
            ).fetchall()
        return [_row(r) for r in rows]

    def take_expired(self, now: float) -> list[OutboxRow]:
        """Remove and return the expired rows (counted as drops)."""
        with self._tx() as db:
            rows = [
                _row(r) for r in db.execute(_SELECT + " WHERE expires_at <= ?", (now,)).fetchall()
            ]
            if rows:
                db.execute("DELETE FROM outbox WHERE expires_at <= ?", (now,))
                self._bump(db, "dropped_expired", len(rows))
        return rows

    def depth(self) -> int:
        with self._lock:
            count: int = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        return count

    def counter(self, name: str) -> int:
        with self._lock:
            found = self._db.execute(
                "SELECT value FROM counters WHERE name = ?", (name,)
            ).fetchone()
        return int(found[0]) if found else 0

    def escalations_on(self, when: float) -> int:
        """Escalations stored on ``when``'s UTC day (the device's cloud budget)."""
        return self.counter("escalations_day_" + _day(when))


def _open(path: Path) -> sqlite3.Connection:
    # synchronous=FULL: each commit is fsynced, so a row that add() returned for
    # survives a power cut.
    return open_wal(path, synchronous="FULL", setup=_setup)


def _setup(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    if "replied" not in columns:  # an outbox written by 0.1.0 before the column
        db.execute("ALTER TABLE outbox ADD COLUMN replied INTEGER NOT NULL DEFAULT 0")
    db.execute("SELECT COUNT(*) FROM outbox").fetchone()


_SELECT = (
    "SELECT request_id, payload, reply_topic, correlation, corrections, created_at, expires_at,"
    " publishes, replied FROM outbox"
)


def _row(r: tuple[Any, ...]) -> OutboxRow:
    request_id, payload, topic, corr, corrections, created, expires, publishes, replied = r
    return OutboxRow(
        request_id=str(request_id),
        payload=bytes(payload),
        reply_topic=str(topic),
        correlation=bytes(corr) if corr is not None else None,
        corrections=bool(corrections),
        created_at=float(created),
        expires_at=float(expires),
        publishes=int(publishes),
        replied=bool(replied),
    )


def _day(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d")
