"""Work run on the inference thread between jobs (model swaps) and the idle hook (unload)."""

import threading
import time

from agent.jobs import Job
from agent.worker import InferenceWorker
from edge_slm.contract import Response
from tests.unit.test_worker import Recorder, _job


def test_a_call_runs_between_jobs_on_the_inference_thread_never_during_one() -> None:
    gate = threading.Event()
    events: list[str] = []
    lock = threading.Lock()

    def answer(job: Job) -> Response:
        with lock:
            events.append(f"start {job.request.id}")
        gate.wait(5)
        with lock:
            events.append(f"end {job.request.id}")
        return Response(id=job.request.id, ok=True, answer="x")

    threads: list[str] = []

    def swap() -> None:
        threads.append(threading.current_thread().name)
        with lock:
            events.append("swap")

    rec = Recorder()
    worker = InferenceWorker(answer, rec.reply, queue_size=4)
    worker.start()
    assert worker.submit(_job("a"))
    assert worker.submit(_job("b"))
    deadline = time.monotonic() + 5
    while "start a" not in events:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    worker.call_soon(swap)  # asked for while "a" runs: goes after "a", before "b"
    gate.set()
    assert worker.drain(5) == []
    worker.stop()
    assert events == ["start a", "end a", "swap", "start b", "end b"]
    assert threads == ["inference"]


def test_the_idle_hook_runs_only_when_idle_and_a_failing_one_does_not_kill_the_worker() -> None:
    calls: list[str] = []

    def idle() -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise RuntimeError("boom")

    rec = Recorder()
    worker = InferenceWorker(rec.answer, rec.reply, queue_size=4, on_idle=idle, idle_tick_s=0.02)
    worker.start()
    deadline = time.monotonic() + 5
    while len(calls) < 3:  # it went on after the first call raised
        assert time.monotonic() < deadline, calls
        time.sleep(0.01)
    assert set(calls) == {"inference"}
    assert worker.submit(_job("after"))
    assert worker.drain(5) == []
    worker.stop()
    assert [r.id for r in rec.replies] == ["after"]
