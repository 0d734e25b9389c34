"""Run the real ``edge-agent`` daemon as a subprocess for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def wait_for_status(port: int, topic: str, state: str, timeout: float = 60.0) -> dict[str, Any]:
    """Block until the retained status on ``topic`` says ``state``."""
    seen: list[dict[str, Any]] = []
    # A real client id: brokers configured like deploy/ refuse zero-length ones.
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"status-{uuid.uuid4().hex[:8]}"
    )
    client.on_message = lambda _c, _u, msg: seen.append(json.loads(msg.payload))
    client.connect("127.0.0.1", port)
    client.subscribe(topic, 1)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if seen and seen[-1].get("state") == state:
                return seen[-1]
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    raise AssertionError(f"status {state!r} not seen on {topic} within {timeout}s: {seen}")


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a daemon (other lines are skipped)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


class AgentProcess:
    def __init__(self, *, broker_url: str, device_id: str, log_path: Path, **env: str) -> None:
        self.device_id = device_id
        self.log_path = log_path
        self._log = log_path.open("wb")
        full_env = {**os.environ, "EDGE_AGENT_LOG_FORMAT": "json", **env}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "run",
                "--broker",
                broker_url,
                "--device-id",
                device_id,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    def log_events(self) -> list[dict[str, Any]]:
        return read_events(self.log_path)

    def terminate(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class StartAgent(Protocol):
    """The ``start_agent`` fixture: start one more agent with these settings (environment
    variables), and return it once its ``online`` status is seen."""

    def __call__(self, **env: str) -> AgentProcess: ...
