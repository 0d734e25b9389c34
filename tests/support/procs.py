"""Real daemons as subprocesses for system tests: relay and the local LLM server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.agent import read_events


class Daemon:
    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def log_events(self) -> list[dict[str, object]]:
        return read_events(self.log_path)

    def count(self, event: str) -> int:
        return sum(e.get("event") == event for e in self.log_events())

    def wait_event(self, event: str, count: int = 1, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count(event) < count:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.log_path.name} exited: {self.log_path.read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{event!r} x{count} not logged in {timeout}s")
            time.sleep(0.05)

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self._log.close()


class LlmServer(Daemon):
    """``edge-agent serve``: the real OpenAI-compatible server with a built model."""

    def __init__(self, model: str, port: int, log_path: Path) -> None:
        super().__init__(
            ["-m", "agent", "serve", "--model", model, "--port", str(port), "--log-format", "json"],
            log_path,
        )
        self.base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("serve did not come up")

    @property
    def completions(self) -> int:
        return self.count("chat_completion")


class Relay(Daemon):
    def __init__(
        self, *, broker_url: str, llm_url: str, model: str, db: str, log_path: Path, **env: str
    ) -> None:
        super().__init__(
            [
                "-m",
                "cloud_relay",
                "run",
                "--broker",
                broker_url,
                "--llm-url",
                llm_url,
                "--llm-model",
                model,
                "--db",
                db,
            ],
            log_path,
            {"CLOUD_RELAY_LOG_FORMAT": "json", **env},
        )
        self.db = db
