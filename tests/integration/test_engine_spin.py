"""onnxruntime's pool threads and ``model.spin``: off, they sleep as soon as a run ends.

Spinning threads keep a core busy for a while after every request; on a device that
means heat and a core the MQTT threads wait for. The check counts the CPU the
process burns while Python sleeps right after a classify: only the pool threads run.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from agent.engine.engine import Engine
from edge_slm.topics import DeviceTopics
from tests.support.agent import StartAgent
from tests.support.app import AppClient

MESSAGES = [{"role": "user", "content": "turn on the lights"}]
IDLE_S = 0.3
#: CPU ms in IDLE_S that tells a spinning pool (~50 ms seen) from a sleeping one (~0).
SPINNING_MS = 5.0


def _idle_cpu_ms(engine: Engine) -> float:
    samples = []
    for _ in range(3):
        engine.classify(MESSAGES, ["on", "off"])
        start = time.process_time()
        time.sleep(IDLE_S)
        samples.append((time.process_time() - start) * 1000)
    return statistics.median(samples)


def test_with_spin_off_the_pool_threads_sleep_after_a_run(model_dir: Path) -> None:
    spinning = Engine(model_dir, name="spin", provider="cpu", threads=2, spin=True)
    on = _idle_cpu_ms(spinning)
    answer = spinning.classify(MESSAGES, ["on", "off"])
    del spinning
    sleeping = Engine(model_dir, name="sleep", provider="cpu", threads=2, spin=False)
    off = _idle_cpu_ms(sleeping)
    assert on > SPINNING_MS, f"spinning pool idle CPU {on:.1f} ms: the check cannot see spin"
    assert off < SPINNING_MS, f"pool threads burnt {off:.1f} ms of CPU while idle"
    # The same model either way: only the threads' waiting differs.
    again = sleeping.classify(MESSAGES, ["on", "off"])
    assert again.label == answer.label
    assert again.scores == pytest.approx(answer.scores, abs=0.02)


def test_the_agent_loads_its_model_as_model_spin_says(
    start_agent: StartAgent, app: AppClient, topics: DeviceTopics
) -> None:
    agent = start_agent(EDGE_AGENT_MODEL__SPIN="false")
    app.subscribe(topics.response)
    reply = app.classify(topics.request, text="turn on the lights", labels=["on", "off"])
    assert reply["ok"] is True, reply
    loads = [e for e in agent.log_events() if e.get("event") == "model_loaded"]
    assert loads
    assert all(e["spin"] is False for e in loads)
