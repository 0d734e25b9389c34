"""Timestamps inside the agent for ``python -m bench.mqtt_trace``; inert unless
``EDGE_SLM_TRACE_OUT`` names a file.

Put on ``PYTHONPATH`` of the agent process only. It wraps a few functions on the
request's path with ``time.perf_counter()`` stamps (CLOCK_MONOTONIC, the same clock
as the bench client's) and appends them to the file in batches.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

_OUT = os.environ.get("EDGE_SLM_TRACE_OUT")
_events: list[tuple[float, str, str, str]] = []
_lock = threading.Lock()


def _flush() -> None:
    with _lock:
        batch, _events[:] = list(_events), []
    if batch and _OUT:
        with Path(_OUT).open("a", encoding="utf-8") as out:
            out.writelines(f"{t:.7f} {what} {thread} {extra}\n" for t, what, thread, extra in batch)


def _stamp(what: str, extra: str = "-") -> None:
    _events.append((time.perf_counter(), what, threading.current_thread().name[:12], extra))
    if len(_events) >= 500:
        _flush()


def _wrap(owner: Any, name: str, what: str, size: Callable[..., str] | None = None) -> None:
    inner = getattr(owner, name)

    def traced(*args: Any, **kwargs: Any) -> Any:
        _stamp(f"{what}_in", size(*args) if size else "-")
        result = inner(*args, **kwargs)
        _stamp(f"{what}_out", str(len(result)) if what == "recv" else "-")
        return result

    setattr(owner, name, traced)


def _patch() -> None:
    import paho.mqtt.client as paho

    from agent import handler, recent
    from edge_slm import mqtt

    _wrap(paho.Client, "_sock_recv", "recv")
    _wrap(paho.Client, "_sock_send", "send", lambda _self, buf: str(len(buf)))
    _wrap(mqtt.MqttConnection, "_on_message", "on_message")
    _wrap(mqtt.MqttConnection, "publish", "publish")
    _wrap(handler.RequestHandler, "send_reply", "send_reply")
    _wrap(recent.RecentRequests, "finish", "persist")
    _wrap(handler, "with_latency", "latency_stamp")


class _AfterDaemon(importlib.abc.MetaPathFinder):
    """Patches once ``agent.daemon`` is imported (it imports the rest)."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> Any:
        if name != "agent.daemon":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        assert spec is not None
        assert spec.loader is not None
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            _patch()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if _OUT:
    sys.meta_path.insert(0, _AfterDaemon())
    atexit.register(_flush)
