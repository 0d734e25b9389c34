"""One supervised lifecycle for both daemons, with systemd's notify protocol.

Start in a clear order (each step registers its undo on an ExitStack), tell
systemd ``READY=1``, keep a ``STATUS=`` line fresh and ping the watchdog only
while the daemon reports itself healthy; on SIGTERM/SIGINT say ``STOPPING=1``,
drain in-flight work, then undo start-up in reverse order.
"""

from __future__ import annotations

import signal
import threading
from abc import ABC, abstractmethod
from contextlib import ExitStack
from types import FrameType

from edge_slm.logs import get_logger
from edge_slm.sdnotify import Notifier, Watchdog

log = get_logger("edge_slm.lifecycle")

STATUS_EVERY_S = 5.0


class Lifecycle(ABC):
    #: Used in log event names, e.g. ``agent_stopped``.
    name = "daemon"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.notifier = Notifier()

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        # Only flags: the main thread does the talking (signal handlers must stay tiny).
        log.info("stop_requested", signal=signal.Signals(signum).name if signum else None)
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> int:
        with ExitStack() as stack:
            self._start(stack)
            watchdog = Watchdog(self.notifier, self.healthy)
            watchdog.start()
            stack.callback(watchdog.stop)
            self.notifier.ready(status=self.status_line())
            while not self._stop.wait(STATUS_EVERY_S):
                self.notifier.status(self.status_line())
            self.notifier.stopping()
            self.notifier.status(f"draining: {self.status_line()}")
            self._drain()
        log.info(f"{self.name}_stopped")
        return 0

    @abstractmethod
    def _start(self, stack: ExitStack) -> None:
        """Start every part in order, registering each undo on ``stack``."""

    @abstractmethod
    def _drain(self) -> None:
        """Intake is over: finish or answer in-flight work, say goodbye."""

    @abstractmethod
    def healthy(self) -> bool | str:
        """True, or why the watchdog must not be pinged (systemd then restarts us)."""

    @abstractmethod
    def status_line(self) -> str:
        """One line for ``systemctl status``."""
