"""The worker with a stand-in answerer: queueing, deadlines, drain, cancel."""

import threading
import time

from agent.jobs import Job
from agent.routing import ReplyRoute
from agent.worker import InferenceWorker
from edge_slm.contract import ErrorCode, Request, Response


def _job(request_id: str, deadline: float | None = None) -> Job:
    return Job(
        request=Request(v=1, id=request_id, text="hi"),
        route=ReplyRoute("t"),
        received_at=time.monotonic(),
        deadline=deadline,
        max_tokens=8,
    )


class Recorder:
    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay = delay
        self.gate = gate
        self.replies: list[Response] = []
        self.threads: set[str] = set()

    def answer(self, job: Job) -> Response:
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.delay)
        return Response(id=job.request.id, ok=True, answer="x")

    def reply(self, _job: Job, response: Response) -> None:
        self.replies.append(response)


def test_jobs_run_in_order_on_the_inference_thread() -> None:
    rec = Recorder()
    worker = InferenceWorker(rec.answer, rec.reply, queue_size=4)
    worker.start()
    for k in range(4):
        assert worker.submit(_job(f"r{k}"))
    assert worker.drain(5) == []
    worker.stop()
    assert [r.id for r in rec.replies] == ["r0", "r1", "r2", "r3"]
    assert rec.threads == {"inference"}


def test_full_queue_refuses_without_blocking() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    worker = InferenceWorker(rec.answer, rec.reply, queue_size=1)
    worker.start()
    assert worker.submit(_job("running"))
    deadline = time.monotonic() + 5
    while worker.depth != 1 or not worker._queue.empty():  # wait for pickup
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert worker.submit(_job("queued"))
    started = time.monotonic()
    assert not worker.submit(_job("refused"))
    assert time.monotonic() - started < 0.5
    assert worker.depth == 2
    gate.set()
    worker.drain(5)
    worker.stop()
    assert [r.id for r in rec.replies] == ["running", "queued"]


def test_expired_job_is_not_answered_late() -> None:
    rec = Recorder()
    worker = InferenceWorker(rec.answer, rec.reply, queue_size=2)
    worker.start()
    worker.submit(_job("late", deadline=time.monotonic() - 1))
    worker.drain(5)
    worker.stop()
    (reply,) = rec.replies
    assert reply.error is not None
    assert reply.error.code is ErrorCode.DEADLINE_EXCEEDED
    assert rec.threads == set()  # the answerer never ran


def test_answerer_crash_costs_one_request_not_the_worker() -> None:
    calls = []

    def answer(job: Job) -> Response:
        calls.append(job.request.id)
        if job.request.id == "boom":
            raise RuntimeError("kaput")
        return Response(id=job.request.id, ok=True, answer="fine")

    replies: list[Response] = []
    worker = InferenceWorker(answer, lambda _j, r: replies.append(r), queue_size=4)
    worker.start()
    worker.submit(_job("boom"))
    worker.submit(_job("ok"))
    worker.drain(5)
    worker.stop()
    assert [r.ok for r in replies] == [False, True]
    assert replies[0].error is not None
    assert replies[0].error.code is ErrorCode.INTERNAL


def test_drain_timeout_returns_leftovers_and_cancels_running() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    worker = InferenceWorker(rec.answer, rec.reply, queue_size=4)
    worker.start()
    for k in range(3):
        worker.submit(_job(f"r{k}"))
    assert not worker.cancelled.is_set()
    threading.Timer(0.3, gate.set).start()
    leftover = worker.drain(0.05)
    assert worker.cancelled.is_set()
    assert [j.request.id for j in leftover] == ["r1", "r2"]
    assert worker.depth == 0
    worker.stop()
    assert [r.id for r in rec.replies] == ["r0"]


def test_busy_for_reports_a_running_job_and_a_dead_thread() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    worker = InferenceWorker(rec.answer, rec.reply, queue_size=2)
    assert worker.busy_for() == float("inf")  # not started: nothing would ever run
    worker.start()
    assert worker.busy_for() == 0.0
    worker.submit(_job("slow"))
    time.sleep(0.2)
    assert worker.busy_for() >= 0.15
    gate.set()
    worker.drain(5)
    assert worker.busy_for() == 0.0
    worker.stop()
    assert worker.busy_for() == float("inf")
