"""The default store: stdlib sqlite3 in WAL mode (one relay, or a few on one host)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cloud_relay.store.base import StoreError
from cloud_relay.store.sql import SQLITE, Row, SqlStore, open_on


class SqliteDb:
    """One connection shared by the store writer and the fleet writer, serialized by a lock.

    WAL lets readers (``cloud-relay logs``) run beside the writer; ``busy_timeout``
    makes several processes on one file wait for each other instead of failing.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        if read_only:
            if not path.is_file():
                raise StoreError(f"no relay store at {str(path)!r}: start `cloud-relay run` first")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit; transactions are explicit (``locked``).
        self._conn = sqlite3.connect(
            str(path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        if read_only:
            # Not `mode=ro`: a read-only *file* cannot create the WAL index (-shm) when
            # no writer has it open. query_only makes this connection refuse writes.
            self._conn.execute("PRAGMA query_only=ON")
        else:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._lock = threading.RLock()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return list(self._conn.execute(sql, tuple(params)).fetchall())

    def execute_each(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[int]:
        with self._lock:  # in-process: no round trips to save, just one lock
            return [self._conn.execute(sql, tuple(row)).rowcount for row in rows]

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            self._conn.executemany(sql, [tuple(row) for row in rows])

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self.transaction():
            yield

    @contextmanager
    def transaction(self) -> Iterator[None]:
        # IMMEDIATE: take the write lock up front, so a batch never fails half-way on a
        # read-to-write upgrade; other processes wait for it (busy_timeout).
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # also when COMMIT itself failed
                    self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_sqlite(path: Path, *, read_only: bool = False) -> SqlStore:
    return open_on(SqliteDb(path, read_only=read_only), dialect=SQLITE, read_only=read_only)
