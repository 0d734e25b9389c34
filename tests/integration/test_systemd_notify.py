"""The real agent under a recorded NOTIFY_SOCKET, as systemd would run it."""

from __future__ import annotations

import itertools
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, StartAgent
from tests.support.app import AppClient


class NotifyRecorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, m) for t, m in self.messages if m.startswith(prefix)]

    def wait(self, line: str, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, m in self.messages:
                if m == line:
                    return t
            time.sleep(0.02)
        raise AssertionError(f"{line!r} not received; got {self.messages[-10:]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyRecorder]:
    recorder = NotifyRecorder(tmp_path / "notify.sock")
    yield recorder
    recorder.close()


def _env(notify: NotifyRecorder, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000", **extra}


def test_ready_status_watchdog_and_stopping(
    start_agent: StartAgent, notify: NotifyRecorder, app: AppClient, topics: DeviceTopics
) -> None:
    agent: AgentProcess = start_agent(**_env(notify))
    ready_at = notify.wait("READY=1")
    status = [m for _, m in notify.lines("STATUS=")]
    assert any("smollm2-135m-instruct on cpu" in m for m in status), status
    time.sleep(1.0)
    pings = [t for t, _ in notify.lines("WATCHDOG=1") if t > ready_at]
    assert len(pings) >= 3  # every 0.2 s while healthy
    reply_topic = f"apps/{uuid.uuid4().hex}"
    app.subscribe(reply_topic)
    app.publish(topics.request, {"v": 1, "text": "hi", "max_tokens": 4}, response_topic=reply_topic)
    assert app.next_reply().payload["ok"] is True
    assert agent.terminate() == 0
    stopping_at = notify.wait("STOPPING=1", timeout=5)
    assert stopping_at > ready_at


def test_a_stalled_worker_stops_the_watchdog_pings(
    start_agent: StartAgent, notify: NotifyRecorder, app: AppClient, topics: DeviceTopics
) -> None:
    """A generation longer than worker_stall_s looks like a hang: no pings meanwhile."""
    agent: AgentProcess = start_agent(**_env(notify, EDGE_AGENT_LIMITS__WORKER_STALL_S="0.3"))
    notify.wait("READY=1")
    reply_topic = f"apps/{uuid.uuid4().hex}"
    app.subscribe(reply_topic)
    app.publish(
        topics.request,
        {"v": 1, "text": "Write a long story about a lighthouse.", "max_tokens": 250},
        response_topic=reply_topic,
    )
    reply = app.next_reply(timeout=60).payload
    assert reply["ok"] is True
    assert reply["latency_ms"] > 1000  # long enough to outlast the stall bound
    withheld = [e for e in agent.log_events() if e.get("event") == "sd_watchdog_ping_withheld"]
    assert withheld, "the watchdog kept pinging through a stall"
    assert "no progress" in str(withheld[0]["reason"])
    answered_at = time.monotonic()
    time.sleep(0.8)
    # The longest silence between pings spans the stall; systemd would have restarted us.
    pings = [t for t, _ in notify.lines("WATCHDOG=1")]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) > 0.4  # WatchdogSec: 0.4 s
    assert [t for t in pings if t > answered_at], "pings resume once the worker is idle again"
