"""sd_notify over a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_slm.sdnotify import Notifier, Watchdog


class FakeSystemd:
    """A bound datagram socket that records what a service sends, like PID 1 does."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)

    def messages(self, settle_s: float = 0.1) -> list[str]:
        """Everything received so far, waiting up to ``settle_s`` for stragglers."""
        out: list[str] = []
        deadline = time.monotonic() + settle_s
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return out

    def pings_during(self, window_s: float) -> int:
        self.messages(settle_s=0)  # start counting from now
        time.sleep(window_s)
        return self.messages(settle_s=0).count("WATCHDOG=1")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake_path(tmp_path: Path) -> Iterator[tuple[FakeSystemd, str]]:
    path = str(tmp_path / "notify.sock")
    assert len(path) < 100, "AF_UNIX paths are limited to 108 bytes"
    fake = FakeSystemd(path)
    yield fake, path
    fake.close()


@pytest.fixture
def fake_abstract() -> Iterator[tuple[FakeSystemd, str]]:
    name = f"edge-slm-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("\0" + name)
    yield fake, "@" + name
    fake.close()


def _env(address: str, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": address, **extra}


def test_ready_with_status_over_a_path_socket(fake_path: tuple[FakeSystemd, str]) -> None:
    fake, address = fake_path
    notifier = Notifier(_env(address))
    assert notifier.enabled
    assert notifier.ready(status="serving smollm2 on cpu")
    assert fake.messages() == ["READY=1\nSTATUS=serving smollm2 on cpu"]


def test_abstract_socket(fake_abstract: tuple[FakeSystemd, str]) -> None:
    fake, address = fake_abstract
    notifier = Notifier(_env(address))
    assert notifier.ready()
    assert notifier.stopping()
    assert fake.messages() == ["READY=1", "STOPPING=1"]


def test_status_is_one_line_and_reloading_has_a_timestamp(
    fake_path: tuple[FakeSystemd, str],
) -> None:
    fake, address = fake_path
    notifier = Notifier(_env(address))
    notifier.status("draining\n3 in flight")
    notifier.reloading()
    notifier.extend_timeout(20)
    status, reloading, extend = fake.messages()
    assert status == "STATUS=draining 3 in flight"
    first, second = reloading.split("\n")
    assert first == "RELOADING=1"
    assert second.startswith("MONOTONIC_USEC=")
    assert int(second.partition("=")[2]) > 0
    assert extend == "EXTEND_TIMEOUT_USEC=20000000"


def test_no_op_without_notify_socket() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.stopping()
    assert not notifier.watchdog_ping()
    assert notifier.watchdog_interval() is None
    watchdog = Watchdog(notifier, lambda: True)
    assert not watchdog.start()
    watchdog.stop()


def test_unreachable_socket_never_raises(tmp_path: Path) -> None:
    notifier = Notifier(_env(str(tmp_path / "nobody-listens.sock"), WATCHDOG_USEC="1000000"))
    assert notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog_ping()


def test_watchdog_interval_from_environment(fake_path: tuple[FakeSystemd, str]) -> None:
    _, address = fake_path
    mine = Notifier(_env(address, WATCHDOG_USEC="30000000", WATCHDOG_PID=str(os.getpid())))
    assert mine.watchdog_interval() == 30.0
    assert Notifier(_env(address, WATCHDOG_USEC="30000000")).watchdog_interval() == 30.0
    assert Notifier(_env(address, WATCHDOG_USEC="0")).watchdog_interval() is None
    assert Notifier(_env(address, WATCHDOG_USEC="soon")).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() is None


def test_watchdog_pid_mismatch_disables(fake_path: tuple[FakeSystemd, str]) -> None:
    fake, address = fake_path
    other = Notifier(_env(address, WATCHDOG_USEC="200000", WATCHDOG_PID=str(os.getpid() + 1)))
    assert other.watchdog_interval() is None
    assert not other.watchdog_ping()
    assert not Watchdog(other, lambda: True).start()
    assert other.ready()  # only the watchdog is someone else's; notifications still go
    assert fake.messages() == ["READY=1"]


def test_watchdog_pings_at_about_half_the_interval(fake_path: tuple[FakeSystemd, str]) -> None:
    fake, address = fake_path
    notifier = Notifier(_env(address, WATCHDOG_USEC="200000"))  # 0.2 s: ping every 0.1 s
    with Watchdog(notifier, lambda: True) as watchdog:
        assert watchdog.period_s == pytest.approx(0.1)
        pings = fake.pings_during(1.0)
    # About 10 expected; loose bounds so a loaded CI machine does not flake.
    assert 4 <= pings <= 14
    assert set(fake.messages()) <= {"WATCHDOG=1"}


def test_pings_stop_while_unhealthy_and_resume(fake_path: tuple[FakeSystemd, str]) -> None:
    fake, address = fake_path
    notifier = Notifier(_env(address, WATCHDOG_USEC="200000"))
    state: dict[str, bool | str] = {"health": True}
    with Watchdog(notifier, lambda: state["health"]):
        assert fake.pings_during(0.6) >= 2
        state["health"] = "inference worker stalled for 130 s"
        time.sleep(0.15)  # a ping already past its health check may still land
        assert fake.pings_during(0.6) == 0
        state["health"] = False
        assert fake.pings_during(0.3) == 0
        state["health"] = True
        assert fake.pings_during(0.6) >= 2


def test_withheld_pings_are_logged_with_the_reason(
    fake_path: tuple[FakeSystemd, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, address = fake_path
    events: list[tuple[str, dict[str, object]]] = []

    class _Recorder:
        def warning(self, event: str, **kw: object) -> None:
            events.append((event, kw))

        def info(self, event: str, **kw: object) -> None:
            events.append((event, kw))

        def debug(self, event: str, **kw: object) -> None:
            events.append((event, kw))

    monkeypatch.setattr("edge_slm.sdnotify.log", _Recorder())
    results: list[bool | str] = ["mqtt network thread is dead", False, True]
    watchdog = Watchdog(Notifier(_env(address, WATCHDOG_USEC="1000000")), lambda: results.pop(0))
    assert not watchdog.beat()
    assert not watchdog.beat()
    assert watchdog.beat()
    withheld = [kw["reason"] for event, kw in events if event == "sd_watchdog_ping_withheld"]
    assert withheld == ["mqtt network thread is dead", "health check returned False"]
    assert ("sd_watchdog_resumed", {"was": "health check returned False"}) in events


def test_a_raising_health_check_withholds_and_the_thread_survives(
    fake_path: tuple[FakeSystemd, str],
) -> None:
    fake, address = fake_path
    broken = threading.Event()

    def healthy() -> bool:
        if broken.is_set():
            raise RuntimeError("boom")
        return True

    with Watchdog(Notifier(_env(address, WATCHDOG_USEC="200000")), healthy) as watchdog:
        broken.set()
        time.sleep(0.15)
        assert fake.pings_during(0.4) == 0
        broken.clear()
        assert fake.pings_during(0.6) >= 2
        assert watchdog.period_s is not None
