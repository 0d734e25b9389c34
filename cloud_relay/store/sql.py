"""SQL shared by the SQLite and PostgreSQL stores (``?`` placeholders, portable types).

Times are epoch seconds (floats), booleans 0/1 integers, redactions JSON text:
the same statements run on both engines. Migrations are numbered and recorded
in ``relay_schema_version``; each runs once, inside the backend's lock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from cloud_relay.store.base import (
    Claim,
    ClaimState,
    Final,
    LogQuery,
    LogRow,
    NewEscalation,
    StoreError,
    Usage,
)
from edge_slm.contract import Outcome

Row = tuple[Any, ...]

#: (version, statements). ``{real}`` is the engine's double type.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE IF NOT EXISTS relay_log (
                device_id TEXT NOT NULL,
                request_id TEXT NOT NULL,
                relay_id TEXT NOT NULL,
                claimed_at {real} NOT NULL,
                received_at {real} NOT NULL,
                task TEXT, kind TEXT, reason TEXT,
                edge_answer TEXT, edge_label TEXT, edge_confidence {real},
                redactions TEXT NOT NULL DEFAULT '{{}}',
                llm_start {real}, answered_at {real},
                outcome TEXT,
                llm_model TEXT,
                tokens_in INTEGER NOT NULL DEFAULT 0,
                tokens_out INTEGER NOT NULL DEFAULT 0,
                cost_usd {real},
                attempts INTEGER NOT NULL DEFAULT 0,
                cloud_answer TEXT, cloud_label TEXT, cloud_confidence {real},
                agreement INTEGER,
                error TEXT,
                latency_ms {real},
                reply TEXT,
                PRIMARY KEY (device_id, request_id)
            )""",
            "CREATE INDEX IF NOT EXISTS relay_log_received ON relay_log (received_at)",
            "CREATE INDEX IF NOT EXISTS relay_log_answered ON relay_log (answered_at)",
            "CREATE INDEX IF NOT EXISTS relay_log_device ON relay_log (device_id, received_at)",
        ],
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

_COLUMNS = (
    "device_id, request_id, relay_id, received_at, task, kind, reason, edge_answer, edge_label, "
    "edge_confidence, redactions, llm_start, answered_at, outcome, llm_model, tokens_in, "
    "tokens_out, cost_usd, attempts, cloud_answer, cloud_label, cloud_confidence, agreement, "
    "error, latency_ms, reply"
)


class Db(Protocol):
    """The few operations a backend provides; SQL uses ``?`` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the affected row count."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def locked(self) -> AbstractContextManager[None]:
        """A write transaction that serializes schema changes between processes."""
        ...

    def close(self) -> None: ...


def migrate(db: Db, real_type: str) -> None:
    with db.locked():
        db.execute("CREATE TABLE IF NOT EXISTS relay_schema_version (version INTEGER NOT NULL)")
        rows = db.query("SELECT MAX(version) FROM relay_schema_version")
        current = rows[0][0] or 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"store schema version {current} is newer than this relay's {SCHEMA_VERSION}"
            )
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                db.execute(statement.format(real=real_type))
            db.execute("INSERT INTO relay_schema_version (version) VALUES (?)", (version,))


def _bool(value: bool | None) -> int | None:
    return None if value is None else int(value)


class SqlStore:
    """:class:`~cloud_relay.store.base.RelayStore` over a :class:`Db`."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def claim(self, esc: NewEscalation, *, stale_before: float) -> Claim:
        inserted = self._db.execute(
            "INSERT INTO relay_log (device_id, request_id, relay_id, claimed_at, received_at, "
            "task, kind, reason, edge_answer, edge_label, edge_confidence, redactions) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (device_id, request_id) DO NOTHING",
            (
                esc.device_id,
                esc.request_id,
                esc.relay_id,
                esc.received_at,
                esc.received_at,
                esc.task,
                esc.kind,
                esc.reason,
                esc.edge_answer,
                esc.edge_label,
                esc.edge_confidence,
                json.dumps(esc.redactions, sort_keys=True),
            ),
        )
        if inserted:
            return Claim(ClaimState.CLAIMED)
        rows = self._db.query(
            "SELECT outcome, reply FROM relay_log WHERE device_id = ? AND request_id = ?",
            (esc.device_id, esc.request_id),
        )
        if rows and rows[0][0] is not None:
            return Claim(ClaimState.FINAL, reply=rows[0][1])
        # In flight. Take it over only if its claimer has been silent too long; the
        # conditional UPDATE lets exactly one contender win.
        taken = self._db.execute(
            "UPDATE relay_log SET relay_id = ?, claimed_at = ? WHERE device_id = ? AND "
            "request_id = ? AND outcome IS NULL AND claimed_at < ?",
            (esc.relay_id, esc.received_at, esc.device_id, esc.request_id, stale_before),
        )
        if taken:
            return Claim(ClaimState.CLAIMED)
        if not rows:  # released between our INSERT and SELECT: try once more
            return self.claim(esc, stale_before=stale_before)
        return Claim(ClaimState.IN_FLIGHT)

    def mark_llm_start(self, device_id: str, request_id: str, at: float) -> None:
        self._db.execute(
            "UPDATE relay_log SET llm_start = ? WHERE device_id = ? AND request_id = ?",
            (at, device_id, request_id),
        )

    def finalize(self, device_id: str, request_id: str, final: Final) -> None:
        self._db.execute(
            "UPDATE relay_log SET outcome = ?, answered_at = ?, reply = ?, latency_ms = ?, "
            "llm_model = ?, tokens_in = ?, tokens_out = ?, cost_usd = ?, attempts = ?, "
            "cloud_answer = ?, cloud_label = ?, cloud_confidence = ?, agreement = ?, error = ? "
            "WHERE device_id = ? AND request_id = ?",
            (
                final.outcome.value,
                final.answered_at,
                final.reply,
                final.latency_ms,
                final.llm_model,
                final.tokens_in,
                final.tokens_out,
                final.cost_usd,
                final.attempts,
                final.cloud_answer,
                final.cloud_label,
                final.cloud_confidence,
                _bool(final.agreement),
                final.error,
                device_id,
                request_id,
            ),
        )

    def release(self, device_id: str, request_id: str) -> None:
        self._db.execute(
            "DELETE FROM relay_log WHERE device_id = ? AND request_id = ? AND outcome IS NULL",
            (device_id, request_id),
        )

    def usage(self, device_id: str, *, calls_since: float, tokens_since: float) -> Usage:
        rows = self._db.query(
            "SELECT "
            "COALESCE(SUM(CASE WHEN llm_start >= ? THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN received_at >= ? THEN tokens_in + tokens_out ELSE 0 END), 0) "
            "FROM relay_log WHERE device_id = ? AND received_at >= ?",
            (calls_since, tokens_since, device_id, min(calls_since, tokens_since)),
        )
        calls, tokens = rows[0]
        return Usage(llm_calls=int(calls), tokens=int(tokens))

    def logs(self, query: LogQuery) -> list[LogRow]:
        where: list[str] = []
        params: list[Any] = []
        if query.device_id is not None:
            where.append("device_id = ?")
            params.append(query.device_id)
        if query.since is not None:
            where.append("received_at >= ?")
            params.append(query.since)
        if query.outcome is not None:
            where.append("outcome = ?")
            params.append(query.outcome.value)
        if query.answered_after is not None:
            where.append("answered_at > ?")
            params.append(query.answered_after)
        sql = f"SELECT {_COLUMNS} FROM relay_log"  # noqa: S608 - fixed column list
        if where:
            sql += " WHERE " + " AND ".join(where)
        order_col = "answered_at" if query.answered_after is not None else "received_at"
        direction = "ASC" if query.oldest_first else "DESC"
        sql += f" ORDER BY {order_col} {direction}, request_id {direction}"
        if query.limit is not None:
            sql += " LIMIT ?"
            params.append(query.limit)
        return [_to_row(r) for r in self._db.query(sql, params)]

    def close(self) -> None:
        self._db.close()


def _to_row(r: Row) -> LogRow:
    return LogRow(
        device_id=r[0],
        request_id=r[1],
        relay_id=r[2],
        received_at=r[3],
        task=r[4],
        kind=r[5],
        reason=r[6],
        edge_answer=r[7],
        edge_label=r[8],
        edge_confidence=r[9],
        redactions=json.loads(r[10] or "{}"),
        llm_start=r[11],
        answered_at=r[12],
        outcome=Outcome(r[13]) if r[13] is not None else None,
        llm_model=r[14],
        tokens_in=r[15],
        tokens_out=r[16],
        cost_usd=r[17],
        attempts=r[18],
        cloud_answer=r[19],
        cloud_label=r[20],
        cloud_confidence=r[21],
        agreement=None if r[22] is None else bool(r[22]),
        error=r[23],
        latency_ms=r[24],
        reply=r[25],
    )
