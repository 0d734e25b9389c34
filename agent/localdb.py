"""The device's small SQLite files (the escalation outbox, the replied-request cache)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Literal


def open_wal(
    path: Path,
    *,
    synchronous: Literal["FULL", "NORMAL"],
    setup: Callable[[sqlite3.Connection], object],
) -> sqlite3.Connection:
    """An autocommit WAL connection that any thread may use (its owner holds a lock),
    after ``setup`` (schema, a first read). A file that is not a database raises
    :class:`sqlite3.DatabaseError`, with the connection closed so that the caller
    can move the file away or delete it."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        setup(db)
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db
