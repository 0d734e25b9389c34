"""Real processes for end-to-end tests: the relay and the OpenAI-compatible edge server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def _events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


class Proc:
    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = _events(self.log_path)
        return [e for e in found if name is None or e.get("event") == name]

    def wait_event(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name)
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no {name!r} in {self.log_path}:\n{self.log_path.read_text()[-3000:]}"
        )

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class ServeProcess(Proc):
    """``python -m agent.serve``: real generation with the edge model."""

    MODEL = "smollm2-135m-instruct"

    def __init__(self, port: int, log_path: Path) -> None:
        super().__init__(
            [
                sys.executable,
                "-m",
                "agent.serve",
                "--model",
                self.MODEL,
                "--port",
                str(port),
                "--log-format",
                "json",
                "--queue-size",
                "16",
            ],
            log_path,
        )
        self.url = f"http://127.0.0.1:{port}/v1"

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("serve did not come up")

    @property
    def completions(self) -> int:
        """Chat completions the server ran (its own log: one event per request)."""
        return len(self.events("chat_completion"))


class RelayProcess(Proc):
    def __init__(
        self,
        *,
        broker_url: str,
        llm_url: str,
        llm_model: str,
        db: str,
        log_path: Path,
        **env: str,
    ) -> None:
        super().__init__(
            [
                sys.executable,
                "-m",
                "cloud_relay",
                "run",
                "--broker",
                broker_url,
                "--llm-url",
                llm_url,
                "--llm-model",
                llm_model,
                "--db",
                db,
            ],
            log_path,
            env={"CLOUD_RELAY_LOG_FORMAT": "json", **env},
        )
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
