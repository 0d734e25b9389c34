"""Relay log stores, chosen by URL: ``sqlite:///path`` or ``postgresql://...``."""

from __future__ import annotations

from pathlib import Path

from cloud_relay.store.base import (
    REQUEST_SOURCES,
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
    RelayStore,
    StatusUpdate,
    StoreError,
    TelemetrySample,
    Totals,
    Usage,
)


def open_store(url: str, *, read_only: bool = False) -> RelayStore:
    """Open (and migrate) the store named by ``url``.

    ``read_only``: for readers that must never write (the dashboard): no migration
    (the schema must already be this code's; the relay creates and migrates it), and
    the engine itself refuses writes (SQLite ``query_only``, PostgreSQL read-only
    transactions).
    """
    if url.startswith("sqlite:///"):
        from cloud_relay.store.sqlite import open_sqlite

        path = Path(url.removeprefix("sqlite:///")).expanduser()
        return open_sqlite(path, read_only=read_only)
    if url.startswith(("postgresql://", "postgres://")):
        from cloud_relay.store.postgres import open_postgres

        return open_postgres(url, read_only=read_only)
    raise StoreError(f"unsupported store URL {url!r}: use sqlite:///path or postgresql://...")


__all__ = [
    "REQUEST_SOURCES",
    "Claim",
    "ClaimState",
    "DeviceRow",
    "Final",
    "LabelledCase",
    "LogPoint",
    "LogQuery",
    "LogRow",
    "NewEscalation",
    "Paraphrase",
    "PushedHead",
    "RelayStore",
    "StatusUpdate",
    "StoreError",
    "TelemetrySample",
    "Totals",
    "Usage",
    "open_store",
]
