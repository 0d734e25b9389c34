"""Real daemons as subprocesses for tests and benchmarks: the relay, the local LLM server,
and any other ``python -m`` daemon that logs JSON lines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.agent import read_events


class Daemon:
    """``python ARGV...`` with its output in ``log_path`` (JSON log lines)."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def log_events(self) -> list[dict[str, Any]]:
        return read_events(self.log_path)

    def events(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.log_events() if e.get("event") == event]

    def count(self, event: str) -> int:
        return len(self.events(event))

    def wait_event(self, event: str, count: int = 1, timeout: float = 60.0) -> dict[str, Any]:
        """The latest ``event`` once it was logged ``count`` times."""
        deadline = time.monotonic() + timeout
        while len(found := self.events(event)) < count:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.log_path.name} exited: {self.log_path.read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{event!r} x{count} not logged in {timeout}s:\n"
                    f"{self.log_path.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.05)
        return found[-1]

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, SIGKILL after ``timeout``; the exit code."""
        try:
            self.terminate(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self._log.close()


class LlmServer(Daemon):
    """``edge-agent serve``: the real OpenAI-compatible server with a built model."""

    def __init__(self, model: str, port: int, log_path: Path, *args: str) -> None:
        super().__init__(
            [
                *("-m", "agent", "serve", "--model", model, "--port", str(port)),
                *("--log-format", "json", *args),
            ],
            log_path,
        )
        self.base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.close()
                raise AssertionError(f"serve exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.close()
        raise AssertionError("serve did not come up")

    @property
    def completions(self) -> int:
        """Chat completions the server ran (its own log: one event per request)."""
        return self.count("chat_completion")


class Relay(Daemon):
    """``cloud-relay run``; with ``ready`` it returns once subscribed."""

    def __init__(
        self,
        *,
        broker_url: str,
        llm_url: str,
        model: str,
        db: str,
        log_path: Path,
        ready: bool = False,
        **env: str,
    ) -> None:
        super().__init__(
            [
                *("-m", "cloud_relay", "run", "--broker", broker_url),
                *("--llm-url", llm_url, "--llm-model", model, "--db", db),
            ],
            log_path,
            {"CLOUD_RELAY_LOG_FORMAT": "json", **env},
        )
        self.db = db
        if ready:
            self.wait_event("relay_started")
            self.wait_event("mqtt_connected")
            time.sleep(0.3)  # the SUBSCRIBE goes out from on_connect; let the SUBACK land


def relay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud_relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
