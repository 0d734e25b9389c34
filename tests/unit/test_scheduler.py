"""The timer thread's periodic jobs."""

from __future__ import annotations

import threading

from agent.cloud.scheduler import Scheduler


def test_a_periodic_job_keeps_its_schedule_after_an_exception() -> None:
    """One failed outbox sweep (a transient SQLite error) must not stop the re-sends."""
    runs: list[int] = []
    ran_again = threading.Event()

    def sweep() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("database is locked")
        ran_again.set()

    scheduler = Scheduler()
    scheduler.start()
    try:
        scheduler.every(0.01, sweep)
        assert ran_again.wait(10), "the job was not rescheduled after it raised"
    finally:
        scheduler.stop()
    assert runs[:2] == [0, 1]
