from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.models import DEFAULT_MODEL, ModelCache, default_cache_dir
from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, wait_for_status
from tests.support.app import AppClient
from tests.support.broker import PrivateBroker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The real SmolLM2 build from the model cache; built once if missing."""
    cache = ModelCache(default_cache_dir())
    if not cache.is_current(DEFAULT_MODEL):
        from agent.modelbuild.build import build

        build(DEFAULT_MODEL, cache)
    return cache.require(DEFAULT_MODEL)


@pytest.fixture
def broker() -> Iterator[PrivateBroker]:
    with PrivateBroker() as b:
        yield b


@pytest.fixture
def device_id() -> str:
    return f"dev-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topics(device_id: str) -> DeviceTopics:
    return DeviceTopics("slm", device_id)


@pytest.fixture
def start_agent(
    broker: PrivateBroker, device_id: str, topics: DeviceTopics, model_dir: Path, tmp_path: Path
) -> Iterator[object]:
    """Start the real agent daemon against the private broker; wait for its birth.

    The cloud fallback is off unless a test turns it on: these tests are about
    the edge path, and no relay listens.
    """
    started: list[AgentProcess] = []

    def start(**env: str) -> AgentProcess:
        settings = {
            "EDGE_AGENT_CLOUD__ENABLED": "false",
            "EDGE_AGENT_OUTBOX__PATH": str(tmp_path / "outbox.db"),
            **env,
        }
        proc = AgentProcess(
            broker_url=broker.url,
            device_id=device_id,
            log_path=tmp_path / f"agent-{len(started)}.log",
            **settings,
        )
        started.append(proc)
        wait_for_status(broker.port, topics.status, "online")
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def agent(start_agent: object) -> AgentProcess:
    return start_agent()  # type: ignore[operator]


@pytest.fixture
def app(broker: PrivateBroker) -> Iterator[AppClient]:
    client = AppClient(broker.port)
    yield client
    client.close()
