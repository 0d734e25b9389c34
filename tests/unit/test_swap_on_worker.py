"""The daemon's hand-off of a model swap to the inference worker, and its timeout."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from agent.daemon import AgentDaemon


class HeldWorker:
    """A worker busy with a long request: calls wait until ``run_pending``."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.pending.append(fn)

    def run_pending(self) -> None:
        for fn in self.pending:
            fn()


class ThreadWorker:
    def call_soon(self, fn: Callable[[], None]) -> None:
        threading.Thread(target=fn).start()


def _daemon(worker: object, timeout_s: float) -> Any:
    """Just what ``_on_worker`` reads of the daemon."""
    return SimpleNamespace(
        worker=worker, settings=SimpleNamespace(ota=SimpleNamespace(swap_timeout_s=timeout_s))
    )


def test_a_swap_that_times_out_never_runs_later() -> None:
    worker = HeldWorker()
    swapped: list[str] = []
    with pytest.raises(TimeoutError, match="did not finish"):
        AgentDaemon._on_worker(_daemon(worker, 0.1), lambda: swapped.append("swap"))
    worker.run_pending()  # the long request ends after the update reported a rollback
    assert swapped == []


def test_a_swap_runs_and_its_error_reaches_the_caller() -> None:
    swapped: list[str] = []
    AgentDaemon._on_worker(_daemon(ThreadWorker(), 5), lambda: swapped.append("swap"))
    assert swapped == ["swap"]

    def fail() -> None:
        raise RuntimeError("swap failed")

    with pytest.raises(RuntimeError, match="swap failed"):
        AgentDaemon._on_worker(_daemon(ThreadWorker(), 5), fail)
