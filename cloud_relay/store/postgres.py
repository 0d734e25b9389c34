"""The fleet store: PostgreSQL via psycopg 3, shared by many relay processes.

The primary key (device_id, request_id) with ``INSERT ... ON CONFLICT DO
NOTHING`` makes the claim atomic across processes: under READ COMMITTED the
second inserter waits for the first to commit, then inserts nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from cloud_relay.store.base import StoreError
from cloud_relay.store.sql import Row, SqlStore, open_on

#: Serializes migrations between relays starting at once (any constant works).
_MIGRATION_LOCK_KEY = 0x5E1A7


def _pg(sql: str) -> str:
    # Our SQL uses ? placeholders and contains no literal ? or %.
    return sql.replace("?", "%s")


class PostgresDb:
    """One autocommit connection shared by the worker threads, serialized by a lock.

    A relay's database work is a few short statements per escalation next to an
    LLM call of seconds, so one connection is plenty; it is reopened once if the
    server dropped it.
    """

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self._url = url
        self._read_only = read_only
        self._lock = threading.RLock()
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
            if self._read_only:
                # Every autocommit statement is its own transaction: all of them read-only.
                conn.execute("SET default_transaction_read_only = on")
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        return conn

    def _run(self, sql: str, params: Sequence[Any], fetch: bool) -> tuple[int, list[Row]]:
        with self._lock:
            for attempt in (1, 2):
                try:
                    with self._conn.cursor() as cur:
                        cur.execute(_pg(sql), tuple(params))
                        rows = list(cur.fetchall()) if fetch else []
                        return cur.rowcount, rows
                except psycopg.OperationalError:
                    if attempt == 2 or not self._conn.closed:
                        raise
                    self._conn = self._connect()
        raise AssertionError("unreachable")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._run(sql, params, fetch=False)[0]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._run(sql, params, fetch=True)[1]

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            yield

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_postgres(url: str, *, read_only: bool = False) -> SqlStore:
    return open_on(
        PostgresDb(url, read_only=read_only), real_type="DOUBLE PRECISION", read_only=read_only
    )
