"""sd_notify(3) spoken directly over ``$NOTIFY_SOCKET``, and a health-gated watchdog.

The protocol is one ``AF_UNIX``/``SOCK_DGRAM`` datagram of newline-separated
``KEY=value`` lines sent to the path in ``$NOTIFY_SOCKET`` (an abstract socket
when it starts with ``@``). systemd learns the sender's pid from the kernel
(``SCM_CREDENTIALS``), which ``NotifyAccess=main`` checks. No libsystemd needed.

Everything here is a no-op outside systemd (``NOTIFY_SOCKET`` unset), and a
notify call never raises: a daemon must not die because its supervisor's
socket hiccuped. Failures are logged at debug level.

The :class:`Watchdog` pings ``WATCHDOG=1`` every half ``WatchdogSec=`` *only
while* its health check passes, so a hung inference worker or a dead MQTT
network thread makes systemd kill and restart the process (``Restart=on-failure``
treats a watchdog timeout as a failure).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from edge_slm.logs import get_logger

log = get_logger(__name__)

#: A health check: ``True`` means healthy. ``False`` or a string means withhold
#: the ping; the string says why (it is logged). Only ``True`` itself counts as
#: healthy, so a non-empty reason string is never mistaken for success.
HealthCheck = Callable[[], bool | str]

_SEND_TIMEOUT_S = 1.0  # a wedged systemd must not wedge the watchdog thread forever


def _socket_address(value: str | None) -> str | None:
    """``$NOTIFY_SOCKET`` as a ``socket.sendto`` address, or None when unusable."""
    if not value:
        return None
    if value.startswith("@"):  # abstract namespace: leading NUL, no file
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # systemd >= 254 may hand out vsock:CID:PORT (VMs); our daemons run on the host.
    log.debug("sd_notify_unsupported_socket", notify_socket=value)
    return None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.debug("sd_watchdog_bad_usec", watchdog_usec=raw)
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    # sd_watchdog_enabled(3): WATCHDOG_PID names the process meant to ping; a
    # child that inherited the environment must not ping on the parent's behalf.
    if pid and pid != str(os.getpid()):
        log.debug("sd_watchdog_other_pid", watchdog_pid=pid, pid=os.getpid())
        return None
    return usec


def _one_line(text: str) -> str:
    # Each assignment is one line of the datagram; a newline would start a new one.
    return " ".join(text.splitlines())


class Notifier:
    """Sends state changes to systemd. Safe to share between threads.

    ``environ`` defaults to ``os.environ`` read once, at construction; pass a
    mapping in tests. The environment is left as it is (children spawned later
    must not be mistaken for us, which ``NotifyAccess=main`` already ensures).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = _watchdog_usec(env) if self._address else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether we run under a service manager that listens."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram; whether it was sent."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                    self._sock.settimeout(_SEND_TIMEOUT_S)
                self._sock.sendto(payload, self._address)
        except OSError as exc:
            log.debug("sd_notify_failed", state=assignments[0], error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (``Type=notify`` units become active now)."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", f"STATUS={_one_line(status)}")

    def stopping(self) -> bool:
        """Shutdown has begun (draining); systemd shows ``deactivating``."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by ``systemctl status``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def reloading(self) -> bool:
        """A configuration reload has begun; send :meth:`ready` when it is done.

        ``MONOTONIC_USEC`` is required by ``Type=notify-reload`` (systemd 253)
        and ignored by older managers.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start (or stop) timeout fires.

        For a slow model load on a small board: call it before each long step.
        """
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1_000_000))}")

    def watchdog_ping(self) -> bool:
        """Tell systemd we are alive; a no-op unless the watchdog is on for us."""
        if self._watchdog_usec is None:
            return False
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """``WatchdogSec=`` in seconds, or None when the watchdog is off for this process."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 1_000_000

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class Watchdog:
    """Pings ``WATCHDOG=1`` every ``interval/2`` while ``healthy()`` returns True.

    ``healthy`` runs on the watchdog's own daemon thread and must be quick and
    non-blocking (read a heartbeat timestamp, ``Thread.is_alive()``). When it
    returns anything but ``True`` the ping is withheld and the reason logged;
    after ``WatchdogSec=`` without a ping systemd kills the service (SIGABRT,
    then SIGKILL) and ``Restart=on-failure`` starts it again.

    ``interval_s`` overrides the interval from the environment (tests); without
    either, :meth:`start` does nothing and returns False.
    """

    def __init__(
        self,
        notifier: Notifier,
        healthy: HealthCheck,
        *,
        interval_s: float | None = None,
    ) -> None:
        self._notifier = notifier
        self._healthy = healthy
        self._interval_s = interval_s if interval_s is not None else notifier.watchdog_interval()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._withholding: str | None = None  # the last reason, while unhealthy

    @property
    def period_s(self) -> float | None:
        """Seconds between pings (half the watchdog interval, as sd_watchdog_enabled(3) advises)."""
        return None if self._interval_s is None else self._interval_s / 2

    def start(self) -> bool:
        """Start the ping thread; False when the watchdog is off (nothing to do)."""
        period = self.period_s
        if period is None or self._thread is not None:
            return False
        self._thread = threading.Thread(
            target=self._run, args=(period,), name="sd-watchdog", daemon=True
        )
        self._thread.start()
        log.debug("sd_watchdog_started", period_s=period)
        return True

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> Watchdog:
        self.start()
        return self

    def __exit__(
        self,
        _exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()

    def beat(self) -> bool:
        """Check health once and ping if healthy; whether a ping was sent."""
        reason = self._check()
        if reason is None:
            if self._withholding is not None:
                log.info("sd_watchdog_resumed", was=self._withholding)
                self._withholding = None
            return self._notifier.watchdog_ping()
        # At most interval/period = 2 of these before systemd acts, so each is worth a line.
        log.warning("sd_watchdog_ping_withheld", reason=reason, period_s=self.period_s)
        self._withholding = reason
        return False

    def _check(self) -> str | None:
        """None when healthy, else why not."""
        try:
            result = self._healthy()
        except Exception as exc:  # noqa: BLE001 - a broken check means "not healthy", not a dead thread
            return f"health check raised {type(exc).__name__}: {exc}"
        if result is True:
            return None
        if isinstance(result, str) and result:
            return result
        return "health check returned False"

    def _run(self, period: float) -> None:
        while True:
            self.beat()
            if self._stop.wait(period):
                return
