import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cloud.outbox import Outbox, OutboxFull, OutboxRow


def _row(request_id: str, *, payload: bytes = b"{}", ttl: float = 60.0) -> OutboxRow:
    now = time.time()
    return OutboxRow(
        request_id=request_id,
        payload=payload,
        reply_topic="app/reply",
        correlation=b"\x00c",
        corrections=True,
        created_at=now,
        expires_at=now + ttl,
    )


def test_rows_survive_a_hard_kill_of_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    code = (
        "import os, time, sys\n"
        "from agent.cloud.outbox import Outbox, OutboxRow\n"
        "from pathlib import Path\n"
        f"box = Outbox(Path({str(db)!r}), max_rows=10, max_bytes=10**6)\n"
        "now = time.time()\n"
        "box.add(OutboxRow('r1', b'{}', 't', None, True, now, now + 60))\n"
        "os._exit(0)  # no close, no checkpoint: like SIGKILL right after add()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    box = Outbox(db, max_rows=10, max_bytes=10**6)
    assert [r.request_id for r in box.pending(time.time())] == ["r1"]


def test_add_is_idempotent_and_remove_deletes(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=10, max_bytes=10**6)
    assert box.add(_row("a")) is True
    assert box.add(_row("a")) is False
    assert box.depth() == 1
    got = box.get("a")
    assert got is not None
    assert got.correlation == b"\x00c"
    assert got.corrections is True
    assert box.remove("a") is True
    assert box.remove("a") is False
    assert box.get("a") is None


def test_row_and_byte_bounds_refuse_and_count_drops(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=2, max_bytes=1000)
    box.add(_row("a"))
    box.add(_row("b"))
    with pytest.raises(OutboxFull, match="2 rows"):
        box.add(_row("c"))
    box.remove("a")
    with pytest.raises(OutboxFull, match="bytes"):
        box.add(_row("big", payload=b"x" * 2000))
    assert box.counter("dropped_full") == 2
    assert box.depth() == 1


def test_expired_rows_are_taken_once_and_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=10, max_bytes=10**6)
    box.add(_row("old", ttl=-1))
    box.add(_row("new"))
    assert [r.request_id for r in box.pending(time.time())] == ["new"]
    assert [r.request_id for r in box.take_expired(time.time())] == ["old"]
    assert box.take_expired(time.time()) == []
    assert box.counter("dropped_expired") == 1
    assert box.depth() == 1


def test_daily_escalation_count_for_the_budget(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=10, max_bytes=10**6)
    for k in range(3):
        box.add(_row(f"r{k}"))
    box.add(_row("r0"))  # a duplicate does not count twice
    box.remove("r1")  # delivered escalations still count
    assert box.escalations_on(time.time()) == 3
    assert box.escalations_on(time.time() - 86400 * 2) == 0


def test_publish_count_is_recorded(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=10, max_bytes=10**6)
    box.add(_row("a"))
    now = time.time()
    assert [r.request_id for r in box.due(now, 30)] == ["a"]  # never published yet
    box.mark_published(["a"], now)
    box.mark_published(["a"], now)
    got = box.get("a")
    assert got is not None
    assert got.publishes == 2
    assert box.due(now + 10, 30) == []
    assert [r.request_id for r in box.due(now + 31, 30)] == ["a"]


def test_corrupt_file_is_moved_aside_not_emptied(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    db.write_bytes(b"this is not a database" * 100)
    box = Outbox(db, max_rows=10, max_bytes=10**6)
    assert box.moved_aside is not None
    assert box.moved_aside.read_bytes() == b"this is not a database" * 100
    assert box.depth() == 0
    assert box.add(_row("fresh"))
