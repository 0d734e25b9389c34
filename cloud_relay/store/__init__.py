"""Relay log stores, chosen by URL: ``sqlite:///path`` or ``postgresql://...``."""

from __future__ import annotations

from pathlib import Path

from cloud_relay.store.base import (
    REQUEST_SOURCES,
    Claim,
    ClaimState,
    DeviceRow,
    Final,
    LogQuery,
    LogRow,
    NewEscalation,
    RelayStore,
    StatusUpdate,
    StoreError,
    TelemetrySample,
    Totals,
    Usage,
)


def open_store(url: str) -> RelayStore:
    """Open (and migrate) the store named by ``url``."""
    if url.startswith("sqlite:///"):
        from cloud_relay.store.sqlite import open_sqlite

        return open_sqlite(Path(url.removeprefix("sqlite:///")).expanduser())
    if url.startswith(("postgresql://", "postgres://")):
        from cloud_relay.store.postgres import open_postgres

        return open_postgres(url)
    raise StoreError(f"unsupported store URL {url!r}: use sqlite:///path or postgresql://...")


__all__ = [
    "REQUEST_SOURCES",
    "Claim",
    "ClaimState",
    "DeviceRow",
    "Final",
    "LogQuery",
    "LogRow",
    "NewEscalation",
    "RelayStore",
    "StatusUpdate",
    "StoreError",
    "TelemetrySample",
    "Totals",
    "Usage",
    "open_store",
]
