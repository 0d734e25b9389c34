"""A real OpenAI-shaped HTTP server on loopback whose answers are scripted per request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Step:
    """What to do with one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content: str = "ok"
    stall_s: float = 0.0  # sleep before answering
    cut_body: bool = False  # announce the full length, send half, close
    extra: dict[str, Any] = field(default_factory=dict)  # top-level body fields
    choice_extra: dict[str, Any] = field(default_factory=dict)  # fields of choices[0]


def completion(
    content: str,
    model: str = "fault-model",
    choice_extra: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                **(choice_extra or {}),
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
        **extra,
    }


class FaultServer:
    def __init__(self) -> None:
        self.script: list[Step] = []
        self.default = Step()
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    server.times.append(time.monotonic())
                    step = server.script.pop(0) if server.script else server.default
                if step.stall_s:
                    time.sleep(step.stall_s)
                payload = (
                    json.dumps(
                        completion(step.content, choice_extra=step.choice_extra, **step.extra)
                    ).encode()
                    if step.status == 200
                    else json.dumps({"error": {"message": f"scripted {step.status}"}}).encode()
                )
                try:
                    self.send_response(step.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in step.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    if step.cut_body:
                        self.wfile.write(payload[: len(payload) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    @property
    def hits(self) -> int:
        with self._lock:
            return len(self.requests)

    @contextmanager
    def running(self) -> Iterator[FaultServer]:
        thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
