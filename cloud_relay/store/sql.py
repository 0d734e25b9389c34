"""SQL shared by the SQLite and PostgreSQL stores (``?`` placeholders, portable types).

Times are epoch seconds (floats), booleans 0/1 integers, redactions JSON text:
the same statements run on both engines. Migrations are numbered and recorded
in ``relay_schema_version``; each runs once, inside the backend's lock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from cloud_relay.store.base import (
    Claim,
    ClaimState,
    DeviceRow,
    Final,
    LabelledCase,
    LogPoint,
    LogQuery,
    LogRow,
    NewEscalation,
    Paraphrase,
    PushedHead,
    StatusUpdate,
    StoreError,
    TelemetrySample,
    Totals,
    Usage,
)
from edge_slm.contract import EscalationReason, Outcome

Row = tuple[Any, ...]

#: (version, statements). ``{real}`` is the engine's double type, ``{payload_embedder}``
#: its expression for a ``skill_head`` payload's ``embedder`` (:class:`Dialect`).
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
    (
        # The case itself, as received (redacted on the device), for `cloud-relay export`.
        2,
        [
            "ALTER TABLE relay_log ADD COLUMN prompt_text TEXT",
            "ALTER TABLE relay_log ADD COLUMN labels TEXT",  # JSON list
            "ALTER TABLE relay_log ADD COLUMN sensor TEXT",  # JSON list of readings
            "ALTER TABLE relay_log ADD COLUMN edge_model TEXT",
        ],
    ),
    (
        # The fleet view: one row per device (latest status and telemetry, totals over
        # restarts) and the telemetry history for charts.
        3,
        [
            """CREATE TABLE IF NOT EXISTS fleet_device (
                device_id TEXT PRIMARY KEY,
                last_seen {real},
                state TEXT, state_at {real},
                model TEXT, provider TEXT, version TEXT,
                conditions TEXT,
                telemetry TEXT, telemetry_ts {real}, started_at {real},
                runs INTEGER NOT NULL DEFAULT 0,
                cur_edge INTEGER NOT NULL DEFAULT 0,
                cur_cloud INTEGER NOT NULL DEFAULT 0,
                cur_fallback INTEGER NOT NULL DEFAULT 0,
                cur_error INTEGER NOT NULL DEFAULT 0,
                cur_escalations INTEGER NOT NULL DEFAULT 0,
                cur_cost_avoided {real} NOT NULL DEFAULT 0,
                prior_edge INTEGER NOT NULL DEFAULT 0,
                prior_cloud INTEGER NOT NULL DEFAULT 0,
                prior_fallback INTEGER NOT NULL DEFAULT 0,
                prior_error INTEGER NOT NULL DEFAULT 0,
                prior_escalations INTEGER NOT NULL DEFAULT 0,
                prior_cost_avoided {real} NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE IF NOT EXISTS fleet_telemetry (
                device_id TEXT NOT NULL,
                ts {real} NOT NULL,
                received_at {real} NOT NULL,
                started_at {real} NOT NULL,
                req_edge INTEGER NOT NULL, req_cloud INTEGER NOT NULL,
                req_fallback INTEGER NOT NULL, req_error INTEGER NOT NULL,
                escalations INTEGER NOT NULL,
                cost_avoided_usd {real} NOT NULL,
                edge_p50_ms {real}, edge_p95_ms {real},
                cloud_p50_ms {real}, cloud_p95_ms {real},
                fallback_p50_ms {real}, fallback_p95_ms {real},
                PRIMARY KEY (device_id, ts)
            )""",
            "CREATE INDEX IF NOT EXISTS fleet_telemetry_ts ON fleet_telemetry (ts)",
        ],
    ),
    (
        # Which build of the model a device runs (an over-the-air install's version).
        4,
        ["ALTER TABLE fleet_device ADD COLUMN model_version TEXT"],
    ),
    (
        # The learn loop (`cloud-relay learn`): which skill an escalation named, the heads
        # pushed per skill, and the head versions each device reports.
        5,
        [
            "ALTER TABLE relay_log ADD COLUMN skill TEXT",
            "CREATE INDEX IF NOT EXISTS relay_log_skill ON relay_log (skill, received_at)",
            "ALTER TABLE fleet_device ADD COLUMN heads TEXT",  # JSON {skill: version}
            """CREATE TABLE IF NOT EXISTS skill_head (
                skill TEXT NOT NULL,
                version INTEGER NOT NULL,
                payload TEXT NOT NULL,
                pushed_at {real} NOT NULL,
                cases INTEGER NOT NULL,
                PRIMARY KEY (skill, version)
            )""",
        ],
    ),
    (
        # Actions, not labels (#17): an act request's tools and an extract request's schema,
        # and both sides' call (act) or object (extract), each JSON text. The answer
        # columns keep their compact JSON text too: the text views and search use it.
        6,
        [
            "ALTER TABLE relay_log ADD COLUMN tools TEXT",  # JSON list, OpenAI's format
            "ALTER TABLE relay_log ADD COLUMN json_schema TEXT",  # JSON object
            "ALTER TABLE relay_log ADD COLUMN edge_tool_call TEXT",  # {"name", "arguments"}
            "ALTER TABLE relay_log ADD COLUMN edge_data TEXT",  # JSON object
            "ALTER TABLE relay_log ADD COLUMN cloud_tool_call TEXT",
            "ALTER TABLE relay_log ADD COLUMN cloud_data TEXT",
        ],
    ),
    (
        # The cloud as a teacher (`learn.paraphrases`): requests it wrote per skill label,
        # kept per version of the skill's text, so they are asked for once.
        7,
        [
            """CREATE TABLE IF NOT EXISTS skill_paraphrase (
                skill TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                seq INTEGER NOT NULL,
                label TEXT NOT NULL,
                text TEXT NOT NULL,
                model TEXT NOT NULL,
                written_at {real} NOT NULL,
                PRIMARY KEY (skill, fingerprint, seq)
            )""",
        ],
    ),
    (
        # The encoder each device's heads run on (a pushed head fits one encoder).
        8,
        ["ALTER TABLE fleet_device ADD COLUMN embedder TEXT"],
    ),
    (
        # One head per (skill, encoder): the encoder of each pushed head, read from the
        # heads pushed before from their own JSON. Versions stay one sequence per skill.
        9,
        [
            "ALTER TABLE skill_head ADD COLUMN embedder TEXT",
            "UPDATE skill_head SET embedder = {payload_embedder}",
            "CREATE INDEX IF NOT EXISTS skill_head_embedder "
            "ON skill_head (skill, embedder, version)",
        ],
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

_COLUMNS = (
    "device_id, request_id, relay_id, received_at, task, kind, reason, edge_answer, edge_label, "
    "edge_confidence, redactions, llm_start, answered_at, outcome, llm_model, tokens_in, "
    "tokens_out, cost_usd, attempts, cloud_answer, cloud_label, cloud_confidence, agreement, "
    "error, latency_ms, reply, edge_model, prompt_text, labels, sensor, skill, tools, "
    "json_schema, edge_tool_call, edge_data, cloud_tool_call, cloud_data"
)

_DEVICE_COLUMNS = (
    "device_id, last_seen, state, state_at, model, provider, version, conditions, telemetry, "
    "telemetry_ts, started_at, runs, "
    "prior_edge + cur_edge, prior_cloud + cur_cloud, prior_fallback + cur_fallback, "
    "prior_error + cur_error, prior_escalations + cur_escalations, "
    "prior_cost_avoided + cur_cost_avoided, model_version, heads, embedder"
)

_HISTORY_COLUMNS = (
    "device_id, ts, received_at, started_at, req_edge, req_cloud, req_fallback, req_error, "
    "escalations, cost_avoided_usd, edge_p50_ms, edge_p95_ms, cloud_p50_ms, cloud_p95_ms, "
    "fallback_p50_ms, fallback_p95_ms"
)

#: Telemetry latency keys kept as history columns.
_LATENCY_SOURCES = ("edge", "cloud", "edge-fallback")


class Db(Protocol):
    """The few operations a backend provides; SQL uses ``?`` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the affected row count."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def execute_each(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[int]:
        """Run one statement per parameter row; each one's affected row count, in order.

        PostgreSQL sends them all before reading any answer (pipeline mode).
        """
        ...

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per parameter row (``executemany``); no counts."""
        ...

    def locked(self) -> AbstractContextManager[None]:
        """A write transaction that serializes schema changes between processes."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """A write transaction: the statements inside commit together, or not at all."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """What the migrations write differently per engine."""

    real: str  # the double type
    payload_embedder: str  # a skill_head payload's (JSON text) `embedder`, as text


SQLITE = Dialect(real="REAL", payload_embedder="json_extract(payload, '$.embedder')")
POSTGRES = Dialect(real="DOUBLE PRECISION", payload_embedder="(payload::json ->> 'embedder')")


def migrate(db: Db, dialect: Dialect) -> None:
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
                db.execute(
                    statement.format(real=dialect.real, payload_embedder=dialect.payload_embedder)
                )
            db.execute("INSERT INTO relay_schema_version (version) VALUES (?)", (version,))


def check_schema(db: Db) -> None:
    """For read-only readers: the schema must be exactly this code's (nothing is migrated)."""
    try:
        rows = db.query("SELECT MAX(version) FROM relay_schema_version")
    except Exception as exc:
        raise StoreError(
            "the store has no relay schema yet: start `cloud-relay run` on it once"
        ) from exc
    current = rows[0][0] or 0
    if current != SCHEMA_VERSION:
        hint = (
            "start this version's `cloud-relay run` on it once"
            if current < SCHEMA_VERSION
            else ("upgrade this reader")
        )
        raise StoreError(
            f"store schema version {current}, this code reads {SCHEMA_VERSION}: {hint}"
        )


def _bool(value: bool | None) -> int | None:
    return None if value is None else int(value)


def _json_or_null(value: object) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _parsed(text: str | None) -> Any:
    """A JSON column's value; None for NULL (an empty object or list stays one)."""
    return None if text is None else json.loads(text)


def _max_of(column: str) -> str:
    # Portable MAX(column, ?): SQLite's scalar MAX and PostgreSQL's GREATEST differ.
    return f"CASE WHEN {column} IS NULL OR {column} < ? THEN ? ELSE {column} END"


_LAST_SEEN = _max_of("last_seen")


#: Columns that ``LogQuery.search`` looks in.
_SEARCHED = (
    "device_id",
    "request_id",
    "reason",
    "prompt_text",
    "edge_answer",
    "edge_label",
    "cloud_answer",
    "cloud_label",
    "error",
)


def _like_pattern(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _log_filters(query: LogQuery) -> tuple[str, list[Any]]:
    """`` WHERE ...`` (or "") and its parameters, for :class:`LogQuery`'s filters."""
    where: list[str] = []
    params: list[Any] = []
    if query.device_id is not None:
        where.append("device_id = ?")
        params.append(query.device_id)
    if query.since is not None:
        where.append("received_at >= ?")
        params.append(query.since)
    if query.until is not None:
        where.append("received_at < ?")
        params.append(query.until)
    if query.outcome is not None:
        where.append("outcome = ?")
        params.append(query.outcome.value)
    if query.answered_after is not None:
        where.append("answered_at > ?")
        params.append(query.answered_after)
    if query.search:
        # LOWER + LIKE: PostgreSQL's LIKE is case-sensitive and ILIKE is not SQLite's.
        pattern = _like_pattern(query.search)
        where.append("(" + " OR ".join(f"LOWER({c}) LIKE ? ESCAPE '\\'" for c in _SEARCHED) + ")")
        params.extend([pattern] * len(_SEARCHED))
    return (" WHERE " + " AND ".join(where) if where else ""), params


_CLAIM_INSERT = (
    "INSERT INTO relay_log (device_id, request_id, relay_id, claimed_at, received_at, "
    "task, kind, reason, edge_answer, edge_label, edge_confidence, redactions, "
    "edge_model, prompt_text, labels, sensor, llm_start, skill, tools, json_schema, "
    "edge_tool_call, edge_data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device_id, request_id) DO NOTHING"
)

_FINALIZE = (
    "UPDATE relay_log SET outcome = ?, answered_at = ?, reply = ?, latency_ms = ?, "
    "llm_model = ?, tokens_in = ?, tokens_out = ?, cost_usd = ?, attempts = ?, "
    "cloud_answer = ?, cloud_label = ?, cloud_confidence = ?, agreement = ?, error = ?, "
    "cloud_tool_call = ?, cloud_data = ? "
    "WHERE device_id = ? AND request_id = ?"
)


def _claim_row(esc: NewEscalation, now: float) -> tuple[Any, ...]:
    return (
        esc.device_id,
        esc.request_id,
        esc.relay_id,
        now,
        esc.received_at,
        esc.task,
        esc.kind,
        esc.reason,
        esc.edge_answer,
        esc.edge_label,
        esc.edge_confidence,
        json.dumps(esc.redactions, sort_keys=True),
        esc.edge_model,
        esc.text,
        _json_or_null(esc.labels),
        _json_or_null(esc.sensor),
        esc.llm_start,
        esc.skill,
        _json_or_null(esc.tools),
        _json_or_null(esc.json_schema),
        _json_or_null(esc.edge_tool_call),
        _json_or_null(esc.edge_data),
    )


class SqlStore:
    """:class:`~cloud_relay.store.base.RelayStore` over a :class:`Db`."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def transaction(self) -> AbstractContextManager[None]:
        return self._db.transaction()

    def claim(self, esc: NewEscalation, *, stale_before: float) -> Claim:
        return self.claim_many([(esc, stale_before)])[0]

    def claim_many(self, claims: Sequence[tuple[NewEscalation, float]]) -> list[Claim]:
        """:meth:`claim` for each (escalation, stale_before), in order; the INSERTs go out
        together (one round trip on PostgreSQL), the rare conflicts are resolved after."""
        # claimed_at is *now*, not the receipt time: a message that waited in the
        # relay's queue longer than the claim TTL must not look stale at birth.
        now = time.time()
        inserted = self._db.execute_each(_CLAIM_INSERT, [_claim_row(esc, now) for esc, _ in claims])
        return [
            Claim(ClaimState.CLAIMED) if n else self._contended(esc, stale_before, now)
            for (esc, stale_before), n in zip(claims, inserted, strict=True)
        ]

    def _contended(self, esc: NewEscalation, stale_before: float, now: float) -> Claim:
        """The key exists: re-send a final row, take over a stale claim, or step aside."""
        rows = self._db.query(
            "SELECT outcome, reply FROM relay_log WHERE device_id = ? AND request_id = ?",
            (esc.device_id, esc.request_id),
        )
        if rows and rows[0][0] is not None:
            return Claim(ClaimState.FINAL, reply=rows[0][1])
        # In flight. Take it over only if its claimer has been silent too long; the
        # conditional UPDATE lets exactly one contender win.
        taken = self._db.execute(
            "UPDATE relay_log SET relay_id = ?, claimed_at = ?, llm_start = COALESCE(?, llm_start) "
            "WHERE device_id = ? AND request_id = ? AND outcome IS NULL AND claimed_at < ?",
            (esc.relay_id, now, esc.llm_start, esc.device_id, esc.request_id, stale_before),
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
        self.finalize_many([(device_id, request_id, final)])

    def finalize_many(self, finals: Sequence[tuple[str, str, Final]]) -> None:
        """:meth:`finalize` for each (device_id, request_id, final), as one statement batch."""
        self._db.execute_many(
            _FINALIZE,
            [
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
                    _json_or_null(final.cloud_tool_call),
                    _json_or_null(final.cloud_data),
                    device_id,
                    request_id,
                )
                for device_id, request_id, final in finals
            ],
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
        where, params = _log_filters(query)
        sql = f"SELECT {_COLUMNS} FROM relay_log{where}"  # noqa: S608 - fixed column list
        order_col = "answered_at" if query.answered_after is not None else "received_at"
        direction = "ASC" if query.oldest_first else "DESC"
        sql += f" ORDER BY {order_col} {direction}, device_id {direction}, request_id {direction}"
        if query.limit is not None:
            sql += " LIMIT ?"
            params.append(query.limit)
        if query.offset:
            # LIMIT -1 is SQLite's "no limit"; PostgreSQL takes LIMIT ALL. Paging always
            # has a limit, so an offset without one is refused rather than made portable.
            if query.limit is None:
                raise ValueError("offset needs a limit")
            sql += " OFFSET ?"
            params.append(query.offset)
        return [_to_row(r) for r in self._db.query(sql, params)]

    def count_logs(self, query: LogQuery) -> int:
        where, params = _log_filters(query)
        rows = self._db.query(f"SELECT COUNT(*) FROM relay_log{where}", params)  # noqa: S608
        return int(rows[0][0])

    def log_points(
        self, device_id: str | None = None, since: float | None = None, until: float | None = None
    ) -> list[LogPoint]:
        where, params = _log_filters(LogQuery(device_id=device_id, since=since, until=until))
        rows = self._db.query(
            "SELECT device_id, received_at, outcome, latency_ms, cost_usd, agreement "  # noqa: S608
            f"FROM relay_log{where} ORDER BY received_at, device_id, request_id",
            params,
        )
        return [
            LogPoint(
                device_id=r[0],
                received_at=r[1],
                outcome=Outcome(r[2]) if r[2] is not None else None,
                latency_ms=r[3],
                cost_usd=r[4],
                agreement=None if r[5] is None else bool(r[5]),
            )
            for r in rows
        ]

    # -- the fleet view ------------------------------------------------------

    def _ensure_device(self, device_id: str) -> None:
        self._db.execute(
            "INSERT INTO fleet_device (device_id) VALUES (?) ON CONFLICT (device_id) DO NOTHING",
            (device_id,),
        )

    def record_telemetry(self, sample: TelemetrySample) -> bool:
        lat = [sample.latency_ms.get(src, (None, None)) for src in _LATENCY_SOURCES]
        self._db.execute(
            f"INSERT INTO fleet_telemetry ({_HISTORY_COLUMNS}) "  # noqa: S608 - fixed columns
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (device_id, ts) DO NOTHING",
            (
                sample.device_id,
                sample.ts,
                sample.received_at,
                sample.started_at,
                *_counters(sample),
                *(v for pair in lat for v in pair),
            ),
        )
        self._ensure_device(sample.device_id)
        # One UPDATE, so concurrent relays (shared subscription, round robin) cannot
        # interleave a read-modify-write: the SET side sees the old row, and under
        # PostgreSQL READ COMMITTED a waiting UPDATE re-checks WHERE on the new row.
        # A sample is the latest when it is newer (device clock) or from a later run;
        # a late copy of the previous run's telemetry is history only.
        restarted = "CASE WHEN started_at IS NOT NULL AND started_at <> ? THEN {} ELSE 0 END"
        cols = ("edge", "cloud", "fallback", "error", "escalations", "cost_avoided")
        prior = ", ".join(f"prior_{c} = prior_{c} + {restarted.format('cur_' + c)}" for c in cols)
        updated = self._db.execute(
            f"UPDATE fleet_device SET {prior}, "  # noqa: S608 - fixed column names
            "runs = runs + CASE WHEN started_at IS NULL OR started_at <> ? THEN 1 ELSE 0 END, "
            "cur_edge = ?, cur_cloud = ?, cur_fallback = ?, cur_error = ?, "
            "cur_escalations = ?, cur_cost_avoided = ?, started_at = ?, telemetry = ?, "
            "telemetry_ts = ?, model = ?, provider = ?, conditions = ?, "
            f"last_seen = {_LAST_SEEN} "
            "WHERE device_id = ? AND (telemetry_ts IS NULL OR telemetry_ts < ? OR started_at < ?)",
            (
                *([sample.started_at] * len(cols)),
                sample.started_at,
                *_counters(sample),
                sample.started_at,
                sample.raw,
                sample.ts,
                sample.model,
                sample.provider,
                _json_or_null(sample.conditions),
                sample.received_at,
                sample.received_at,
                sample.device_id,
                sample.ts,
                sample.started_at,
            ),
        )
        if not updated:  # history only; still proof of life
            self._db.execute(
                f"UPDATE fleet_device SET last_seen = {_LAST_SEEN} WHERE device_id = ?",  # noqa: S608
                (sample.received_at, sample.received_at, sample.device_id),
            )
        return bool(updated)

    def record_status(self, status: StatusUpdate) -> None:
        self._ensure_device(status.device_id)
        # A retained copy (sent because we subscribed) says nothing about when the
        # device was last heard from: its own ts (capped at now) is the best guess.
        seen = status.received_at if status.live else min(status.ts, status.received_at)
        self._db.execute(
            f"UPDATE fleet_device SET last_seen = {_LAST_SEEN}, "  # noqa: S608 - constant SQL
            "state = ?, state_at = ?, model = COALESCE(?, model), "
            # The version belongs to the model: it changes with it, to none for a
            # configured model, and stays when a status names no model.
            "model_version = CASE WHEN CAST(? AS TEXT) IS NULL THEN model_version ELSE ? END, "
            "provider = COALESCE(?, provider), version = COALESCE(?, version), conditions = ?, "
            "heads = COALESCE(?, heads), "
            # An online status says which encoder runs (None: none); the will, made
            # before the encoder loads, keeps what the last one said.
            "embedder = CASE WHEN ? = 'online' THEN ? ELSE COALESCE(?, embedder) END "
            "WHERE device_id = ?",
            (
                seen,
                seen,
                status.state,
                status.received_at,
                status.model,
                status.model,
                status.model_version,
                status.provider,
                status.version,
                _json_or_null(status.conditions),
                _json_or_null(status.heads),
                status.state,
                status.embedder,
                status.embedder,
                status.device_id,
            ),
        )

    def devices(self, device_id: str | None = None) -> list[DeviceRow]:
        sql = f"SELECT {_DEVICE_COLUMNS} FROM fleet_device"  # noqa: S608 - fixed columns
        params: list[Any] = []
        if device_id is not None:
            sql += " WHERE device_id = ?"
            params.append(device_id)
        return [_to_device(r) for r in self._db.query(sql + " ORDER BY device_id", params)]

    def telemetry_history(
        self, device_id: str | None = None, since: float | None = None
    ) -> list[TelemetrySample]:
        where: list[str] = []
        params: list[Any] = []
        if device_id is not None:
            where.append("device_id = ?")
            params.append(device_id)
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        sql = f"SELECT {_HISTORY_COLUMNS} FROM fleet_telemetry"  # noqa: S608 - fixed columns
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_to_sample(r) for r in self._db.query(sql + " ORDER BY ts, device_id", params)]

    def cost_avoided_since(self, since: float, device_id: str | None = None) -> dict[str, float]:
        # Counters are cumulative and monotonic within a run (device, started_at): what a
        # run added in the window is its highest value in the window minus its highest
        # value before it (0 for a run that started inside the window).
        def per_run(op: str) -> dict[tuple[str, float], float]:
            sql = f"SELECT device_id, started_at, MAX(cost_avoided_usd) FROM fleet_telemetry WHERE ts {op} ?"  # noqa: E501, S608 - op is < or >=
            params: list[Any] = [since]
            if device_id is not None:
                sql += " AND device_id = ?"
                params.append(device_id)
            rows = self._db.query(sql + " GROUP BY device_id, started_at", params)
            return {(r[0], r[1]): float(r[2]) for r in rows}

        before = per_run("<")
        result: dict[str, float] = {}
        for (device, started), end in per_run(">=").items():
            gained = max(end - before.get((device, started), 0.0), 0.0)
            result[device] = result.get(device, 0.0) + gained
        return result

    def count_online(self) -> int:
        rows = self._db.query("SELECT COUNT(*) FROM fleet_device WHERE state = 'online'")
        return int(rows[0][0])

    # -- the learn loop ------------------------------------------------------

    def labelled_cases(self, skill: str, *, limit: int | None = None) -> list[LabelledCase]:
        sql = (
            "SELECT device_id, request_id, received_at, prompt_text, cloud_label, reason "
            "FROM relay_log WHERE skill = ? AND outcome = ? AND cloud_label IS NOT NULL "
            "AND prompt_text IS NOT NULL ORDER BY received_at DESC, device_id, request_id"
        )
        params: list[Any] = [skill, Outcome.OK.value]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_labelled(r) for r in self._db.query(sql, params)]

    def ad_hoc_cases(self, *, limit: int) -> list[LabelledCase]:
        sql = (
            "SELECT device_id, request_id, received_at, prompt_text, cloud_label, reason, labels "
            "FROM relay_log WHERE skill IS NULL AND labels IS NOT NULL AND outcome = ? "
            "AND cloud_label IS NOT NULL AND prompt_text IS NOT NULL "
            "ORDER BY received_at DESC, device_id, request_id LIMIT ?"
        )
        rows = self._db.query(sql, (Outcome.OK.value, limit))
        return [_labelled(r, labels=tuple(json.loads(r[6]))) for r in rows]

    def latest_head(self, skill: str, embedder: str) -> PushedHead | None:
        rows = self._db.query(
            "SELECT skill, embedder, version, payload, pushed_at, cases FROM skill_head "
            "WHERE skill = ? AND embedder = ? ORDER BY version DESC LIMIT 1",
            (skill, embedder),
        )
        if not rows:
            return None
        r = rows[0]
        return PushedHead(
            skill=r[0],
            embedder=r[1],
            version=int(r[2]),
            payload=r[3],
            pushed_at=r[4],
            cases=int(r[5]),
        )

    def head_names(self) -> list[str]:
        rows = self._db.query("SELECT DISTINCT skill FROM skill_head ORDER BY skill")
        return [r[0] for r in rows]

    def head_version(self, skill: str) -> int:
        rows = self._db.query("SELECT MAX(version) FROM skill_head WHERE skill = ?", (skill,))
        return int(rows[0][0] or 0)

    def record_head(self, head: PushedHead) -> bool:
        return bool(
            self._db.execute(
                "INSERT INTO skill_head (skill, version, embedder, payload, pushed_at, cases) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (skill, version) DO NOTHING",
                (
                    head.skill,
                    head.version,
                    head.embedder,
                    head.payload,
                    head.pushed_at,
                    head.cases,
                ),
            )
        )

    def paraphrases(self, skill: str, fingerprint: str) -> list[Paraphrase]:
        rows = self._db.query(
            "SELECT label, text FROM skill_paraphrase WHERE skill = ? AND fingerprint = ? "
            "ORDER BY seq",
            (skill, fingerprint),
        )
        return [Paraphrase(label=r[0], text=r[1]) for r in rows]

    def record_paraphrases(
        self, skill: str, fingerprint: str, model: str, written: Sequence[Paraphrase]
    ) -> None:
        now = time.time()
        with self._db.transaction():
            self._db.execute_many(
                "INSERT INTO skill_paraphrase "
                "(skill, fingerprint, seq, label, text, model, written_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (skill, fingerprint, seq) DO NOTHING",
                [
                    (skill, fingerprint, i, p.label, p.text, model, now)
                    for i, p in enumerate(written)
                ],
            )

    def close(self) -> None:
        self._db.close()


def _counters(sample: TelemetrySample) -> tuple[int, int, int, int, int, float]:
    """The run's cumulative counters, in the order both tables list them: edge, cloud,
    fallback and error requests, escalations, cost avoided."""
    return (
        sample.count("edge"),
        sample.count("cloud"),
        sample.count("edge-fallback"),
        sample.count("error"),
        sample.escalations,
        sample.cost_avoided_usd,
    )


def _to_device(r: Row) -> DeviceRow:
    return DeviceRow(
        device_id=r[0],
        last_seen=r[1],
        state=r[2],
        state_at=r[3],
        model=r[4],
        provider=r[5],
        version=r[6],
        conditions=json.loads(r[7]) if r[7] else [],
        telemetry=json.loads(r[8]) if r[8] else None,
        telemetry_ts=r[9],
        started_at=r[10],
        runs=int(r[11]),
        totals=Totals(
            edge=int(r[12]),
            cloud=int(r[13]),
            edge_fallback=int(r[14]),
            error=int(r[15]),
            escalations=int(r[16]),
            cost_avoided_usd=float(r[17]),
        ),
        model_version=r[18],
        heads=json.loads(r[19]) if r[19] else None,
        embedder=r[20],
    )


def _to_sample(r: Row) -> TelemetrySample:
    latency = {
        src: (r[10 + 2 * i], r[11 + 2 * i])
        for i, src in enumerate(_LATENCY_SOURCES)
        if r[10 + 2 * i] is not None
    }
    return TelemetrySample(
        device_id=r[0],
        ts=r[1],
        received_at=r[2],
        started_at=r[3],
        model="",
        provider="",
        requests={"edge": r[4], "cloud": r[5], "edge-fallback": r[6], "error": r[7]},
        escalations=r[8],
        cost_avoided_usd=r[9],
        latency_ms=latency,
        conditions=None,
        raw="",
    )


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
        edge_model=r[26],
        text=r[27],
        labels=json.loads(r[28]) if r[28] else None,
        sensor=json.loads(r[29]) if r[29] else None,
        skill=r[30],
        tools=_parsed(r[31]),
        json_schema=_parsed(r[32]),
        edge_tool_call=_parsed(r[33]),
        edge_data=_parsed(r[34]),
        cloud_tool_call=_parsed(r[35]),
        cloud_data=_parsed(r[36]),
    )


def open_on(db: Db, *, dialect: Dialect, read_only: bool) -> SqlStore:
    """A store on ``db``: migrated for the relay, or schema-checked for read-only readers."""
    try:
        if read_only:
            check_schema(db)
        else:
            migrate(db, dialect)
    except BaseException:
        db.close()
        raise
    return SqlStore(db)


def _labelled(r: Row, *, labels: tuple[str, ...] = ()) -> LabelledCase:
    """A ``labelled_cases`` or ``ad_hoc_cases`` row (``labels``: the latter's request's
    own labels)."""
    return LabelledCase(
        device_id=r[0],
        request_id=r[1],
        received_at=r[2],
        text=r[3],
        label=r[4],
        shadow=r[5] == EscalationReason.SHADOW.value,
        labels=labels,
    )
