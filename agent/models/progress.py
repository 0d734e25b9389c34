"""Stage-by-stage progress on stderr, without a dependency.

On a TTY the current stage's line is rewritten with its elapsed time; otherwise
(journald, CI logs) each stage prints one start line and one end line.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO


class Progress:
    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._k = 0
        self._name = ""
        self._start = 0.0
        self._last_tick = 0.0
        self.timings: dict[str, float] = {}

    def _write(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text)
            self.stream.flush()

    def _prefix(self) -> str:
        return f"[{self._k}/{self.total}] {self._name}"

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._k += 1
        self._name = name
        self._start = self._last_tick = time.monotonic()
        self._write(f"{self._prefix()} ..." if self.tty else f"{self._prefix()} ...\n")
        ok = False
        try:
            yield
            ok = True
        finally:
            elapsed = time.monotonic() - self._start
            self.timings[name] = elapsed
            status = "done" if ok else "FAILED"
            lead = "\r\033[K" if self.tty else ""
            self._write(f"{lead}{self._prefix()} {status} in {elapsed:.1f}s\n")

    def tick(self) -> None:
        """Called while a stage waits; refreshes the elapsed time on a TTY."""
        now = time.monotonic()
        if self.tty and now - self._last_tick >= 1.0:
            self._last_tick = now
            self._write(f"\r\033[K{self._prefix()} ... {now - self._start:.0f}s")

    def note(self, message: str) -> None:
        self._write(("\r\033[K" if self.tty else "") + message + "\n")
