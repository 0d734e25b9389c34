"""The outbox's disk fills up, or its file is corrupt at start: local answers go on."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, wait_for_status
from tests.support.app import AppClient
from tests.support.broker import PrivateBroker

pytestmark = pytest.mark.model

ESCALATE_ALL = json.dumps({"classify": 1.0, "answer": 1.0})


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs: a real ENOSPC, no mocks. Needs root (CI and dev machines are)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}); ENOSPC untested")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _start(broker: PrivateBroker, device_id: str, outbox: Path, log: Path) -> AgentProcess:
    agent = AgentProcess(
        broker_url=broker.url,
        device_id=device_id,
        log_path=log,
        EDGE_AGENT_OUTBOX__PATH=str(outbox),
        EDGE_AGENT_POLICY__THRESHOLDS=ESCALATE_ALL,
        EDGE_AGENT_CLOUD__TIMEOUT_S="0.5",
    )
    wait_for_status(broker.port, DeviceTopics("slm", device_id).status, "online")
    return agent


def test_full_disk_keeps_local_answers_and_recovers(
    broker: PrivateBroker, device_id: str, topics: DeviceTopics, small_fs: Path, tmp_path: Path
) -> None:
    agent = _start(broker, device_id, small_fs / "outbox.db", tmp_path / "agent.log")
    app = AppClient(broker.port)
    try:
        reply_topic = f"apps/{uuid.uuid4().hex}"
        app.subscribe(reply_topic)
        filler = small_fs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # take every free byte of the filesystem (unbuffered: no flush at close)
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        ask = {"v": 1, "text": "Describe the weather in one long paragraph.", "max_tokens": 8}
        for k in range(3):
            app.publish(topics.request, {**ask, "id": f"full-{k}"}, response_topic=reply_topic)
        replies = [app.next_reply(timeout=60).payload for _ in range(3)]
        assert all(r["ok"] and r["source"] == "edge" for r in replies), replies
        assert all("outbox refused" in r["reason"] for r in replies)
        status = wait_for_status(broker.port, topics.status, "online", timeout=5)
        assert status["conditions"] == ["outbox_unwritable"]
        events = [e["event"] for e in agent.log_events()]
        assert "outbox_unwritable" in events

        filler.unlink()  # space returns
        app.publish(topics.request, {**ask, "id": "after"}, response_topic=reply_topic)
        after = app.next_reply(timeout=60).payload
        assert after["source"] == "edge-fallback"  # escalated again; no relay, so it falls back
        deadline_status = wait_for_status(broker.port, topics.status, "online", timeout=5)
        assert "conditions" not in deadline_status or not deadline_status["conditions"]
        assert agent.proc.poll() is None
    finally:
        app.close()
        agent.close()


def test_corrupt_outbox_is_moved_aside_and_reported(
    broker: PrivateBroker, device_id: str, topics: DeviceTopics, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.db"
    outbox.write_bytes(b"definitely not sqlite" * 500)
    agent = _start(broker, device_id, outbox, tmp_path / "agent.log")
    try:
        status = wait_for_status(broker.port, topics.status, "online", timeout=5)
        assert status["conditions"] == ["outbox_was_corrupt"]
        [aside] = list(tmp_path.glob("outbox.db.corrupt-*"))
        assert aside.read_bytes() == b"definitely not sqlite" * 500
        assert any(e.get("event") == "outbox_corrupt_moved_aside" for e in agent.log_events())
    finally:
        agent.close()
