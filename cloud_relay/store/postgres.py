"""The fleet store: PostgreSQL via psycopg 3, shared by many relay processes.

The primary key (device_id, request_id) with ``INSERT ... ON CONFLICT DO
NOTHING`` makes the claim atomic across processes: under READ COMMITTED the
second inserter waits for the first to commit, then inserts nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg

from cloud_relay.store.base import StoreError
from cloud_relay.store.sql import POSTGRES, Row, SqlStore, open_on

T = TypeVar("T")

#: Serializes migrations between relays starting at once (any constant works).
_MIGRATION_LOCK_KEY = 0x5E1A7


def _pg(sql: str) -> str:
    # Our SQL uses ? placeholders and contains no literal ? or %.
    return sql.replace("?", "%s")


class PostgresDb:
    """One autocommit connection, serialized by a lock (the relay's store writer, the
    fleet writer and the CLI's readers each go through it).

    The relay group-commits its escalation rows (:mod:`cloud_relay.store.writer`):
    one transaction per batch, its INSERTs pipelined, so one connection is plenty.
    Outside a transaction it is reopened once if the server dropped it; inside
    one the error goes to the caller, since the statements before it are lost.
    """

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self._url = url
        self._read_only = read_only
        self._lock = threading.RLock()
        self._conn = self._connect()
        self._in_transaction = False

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
            if self._read_only:
                # Every autocommit statement is its own transaction: all of them read-only.
                conn.execute("SET default_transaction_read_only = on")
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        return conn

    def _retrying(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work(conn)``, once more on a fresh connection if the server dropped this one."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    return work(self._conn)
                except psycopg.OperationalError:
                    # Inside a transaction a new connection would silently lose the
                    # statements before this one: the caller must see the failure.
                    if attempt == 2 or not self._conn.closed or self._in_transaction:
                        raise
                    self._conn = self._connect()
        raise AssertionError("unreachable")

    def _run(self, sql: str, params: Sequence[Any], fetch: bool) -> tuple[int, list[Row]]:
        def run(conn: psycopg.Connection[Any]) -> tuple[int, list[Row]]:
            with conn.cursor() as cur:
                cur.execute(_pg(sql), tuple(params))
                rows = list(cur.fetchall()) if fetch else []
                return cur.rowcount, rows

        return self._retrying(run)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._run(sql, params, fetch=False)[0]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._run(sql, params, fetch=True)[1]

    def execute_each(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[int]:
        def run(conn: psycopg.Connection[Any]) -> list[int]:
            cursors = []
            with conn.pipeline():  # every statement sent, then every answer read
                for row in rows:
                    cur = conn.cursor()
                    cur.execute(_pg(sql), tuple(row))
                    cursors.append(cur)
            counts = [cur.rowcount for cur in cursors]
            for cur in cursors:
                cur.close()
            return counts

        return self._retrying(run)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        def run(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cur:
                cur.executemany(_pg(sql), [tuple(row) for row in rows])  # pipelined by psycopg

        self._retrying(run)

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            yield

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._conn.closed:  # dropped since the last statement: reconnect first
                self._conn = self._connect()
            self._in_transaction = True
            try:
                with self._conn.transaction():
                    yield
            finally:
                self._in_transaction = False

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_postgres(url: str, *, read_only: bool = False) -> SqlStore:
    return open_on(PostgresDb(url, read_only=read_only), dialect=POSTGRES, read_only=read_only)
