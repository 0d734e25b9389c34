"""A private Mosquitto for tests, benchmarks and the demo; not part of the shipped packages.

Each instance writes its own config into a temporary directory and listens on
a free loopback port, so it never collides with a system broker on 1883.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


class BrokerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_binary() -> str:
    for candidate in ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        found = shutil.which(candidate)
        if found:
            return found
    raise BrokerError(
        "mosquitto is not installed; on Debian/Ubuntu: sudo apt-get install mosquitto "
        "mosquitto-clients"
    )


class PrivateBroker:
    """``mosquitto`` on 127.0.0.1:<free port> with a generated config."""

    def __init__(
        self,
        *,
        port: int | None = None,
        persistence: bool = False,
        tcp_nodelay: bool = True,
        extra_config: str = "",
        workdir: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.persistence = persistence
        self.tcp_nodelay = tcp_nodelay
        self.extra_config = extra_config
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="edge-slm-mosquitto-"))
        self.log_file = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Without it, Nagle on the broker's side delays each QoS 1 reply by ~40 ms
            # (bench/mqtt_overhead.py measures both).
            f"set_tcp_nodelay {'true' if self.tcp_nodelay else 'false'}",
            # Queue QoS 1 messages for offline persistent sessions (the default 1000 is low
            # for a burst of requests during an agent restart).
            "max_queued_messages 10000",
            # As deploy/mosquitto/edge.conf: more than the agent's queue of unacked requests.
            "max_inflight_messages 64",
        ]
        if os.geteuid() == 0 and not any(
            line.startswith("user ") for line in self.extra_config.splitlines()
        ):
            # As root, mosquitto drops to the `mosquitto` user, which cannot write our
            # private temp dir: the log and the persistence file would silently fail.
            lines.append("user root")
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 1",
            ]
        conf.write_text("\n".join(lines) + "\n" + self.extra_config)
        return conf

    def start(self, timeout_s: float = 10.0) -> PrivateBroker:
        conf = self._write_config()
        self._proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                log = self.log_file.read_text() if self.log_file.exists() else ""
                raise BrokerError(f"mosquitto exited at start: {err}{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.port} within {timeout_s}s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: no goodbye, no persistence flush."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(
        self,
        _exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()
