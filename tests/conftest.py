"""Fixtures and markers shared by every test folder.

Markers (registered in pyproject.toml, ``--strict-markers``):

* ``broker``: starts a real mosquitto. Added here to every test that uses the
  ``broker`` fixture (directly or through another fixture); a module that starts
  brokers itself declares it in ``pytestmark``.
* ``model``: runs the built default model. Added here to every test that uses
  ``model_dir`` (the agent, ``llm`` and ``system`` fixtures do); declared likewise.
* ``slow``: the long form of a test whose short form runs by default. Skipped unless
  the run is full: ``scripts/test.sh --full``, which sets ``EDGE_SLM_FULL_TESTS=1``.
  That variable is read here and nowhere else.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from agent.models import DEFAULT_MODEL
from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, StartAgent, wait_for_status
from tests.support.app import AppClient
from tests.support.broker import PrivateBroker, free_port
from tests.support.model import built_model_dir
from tests.support.procs import LlmServer
from tests.support.system import System

FULL = os.environ.get("EDGE_SLM_FULL_TESTS") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="long form: runs with scripts/test.sh --full")
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if "broker" in used:
            item.add_marker(pytest.mark.broker)
        if "model_dir" in used:
            item.add_marker(pytest.mark.model)
        if not FULL and item.get_closest_marker("slow"):
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True, scope="session")
def _loggers_never_cached() -> Iterator[None]:
    """Tests run CLIs in-process, and ``configure_logging`` caches each logger on its
    first use: a logger cached in one test would escape ``structlog.testing.capture_logs``
    in every later one, so whether a log assertion passed would hang on test order."""
    configure = structlog.configure

    def uncached(**settings: object) -> None:
        configure(**{**settings, "cache_logger_on_first_use": False})  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(structlog, "configure", uncached)
        structlog.configure()  # and off from the start
        yield


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The built default model (SmolLM2-135M), built once if the cache lacks it."""
    return built_model_dir()


@pytest.fixture
def broker() -> Iterator[PrivateBroker]:
    """A private mosquitto on a free loopback port, for this test only."""
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
) -> Iterator[StartAgent]:
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
def agent(start_agent: StartAgent) -> AgentProcess:
    return start_agent()


@pytest.fixture
def app(broker: PrivateBroker) -> Iterator[AppClient]:
    client = AppClient(broker.port)
    yield client
    client.close()


@pytest.fixture(scope="session")
def llm(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlmServer]:
    """The cloud LLM stand-in: real HTTP, real generation (the small model, for speed)."""
    server = LlmServer(DEFAULT_MODEL, free_port(), tmp_path_factory.mktemp("llm") / "serve.log")
    yield server
    server.close()


@pytest.fixture
def system(
    broker: PrivateBroker, llm: LlmServer, topics: DeviceTopics, tmp_path: Path
) -> Iterator[System]:
    """mosquitto, `edge-agent serve` as the cloud LLM, and room for relays and agents."""
    s = System(broker, llm, topics, tmp_path)
    yield s
    s.close()
