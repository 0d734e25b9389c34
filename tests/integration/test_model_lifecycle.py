"""Model lifecycle on the real agent: idle unload, reload on demand, pin, over-the-air updates.

Real mosquitto, the real SmolLM2 build, real HTTP: the model folder is packed
into a tar and served by a local http.server thread, pushed with the real
``cloud-relay models push``, and the agent is watched through its retained
status, its replies, its telemetry and its log.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.models import DEFAULT_MODEL
from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, StartAgent
from tests.support.app import AppClient
from tests.support.broker import PrivateBroker
from tests.support.http import FileServer, sha256_of

OTA_NAME = "smollm2-ota"


class StatusWatch:
    """Every retained status the agent publishes, in order."""

    def __init__(self, port: int, topic: str) -> None:
        self.seen: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"watch-{uuid.uuid4().hex[:8]}",
        )
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(topic, 1)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.seen.append(json.loads(msg.payload))

    def wait(self, what: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for status in reversed(self.seen):
                    if pred(status):
                        return status
            time.sleep(0.05)
        with self._lock:
            last = self.seen[-3:]
        raise AssertionError(f"no status with {what} within {timeout}s; last: {last}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _update(status: dict[str, Any]) -> dict[str, Any]:
    return status.get("model_update") or {}


@pytest.fixture
def watch(broker: PrivateBroker, topics: DeviceTopics) -> Iterator[StatusWatch]:
    w = StatusWatch(broker.port, topics.status)
    yield w
    w.close()


@pytest.fixture(scope="module")
def archives(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real model folder as three tars: intact, failing the self-test, truncated."""
    root = tmp_path_factory.mktemp("www")
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and p.name != "manifest.json")
    with tarfile.open(root / "good.tar", "w") as tf:
        for path in files:
            tf.add(path, arcname=f"{OTA_NAME}/{path.name}")
    # Loads fine, but its context is too short for the self-test prompt: the
    # self-test is what must catch it (a model that loads is not a model that works).
    config = json.loads((model_dir / "genai_config.json").read_text())
    config["model"]["context_length"] = 8
    patched = json.dumps(config).encode()
    with tarfile.open(root / "short-context.tar", "w") as tf:
        for path in files:
            if path.name == "genai_config.json":
                info = tarfile.TarInfo(f"{OTA_NAME}/genai_config.json")
                info.size = len(patched)
                tf.addfile(info, io.BytesIO(patched))
            else:
                tf.add(path, arcname=f"{OTA_NAME}/{path.name}")
    # The weights cut short (a bad build uploaded with its own, correct, sha256).
    with tarfile.open(root / "truncated.tar", "w") as tf:
        for path in files:
            if path.name == "model.onnx.data":
                info = tarfile.TarInfo(f"{OTA_NAME}/model.onnx.data")
                info.size = 1 << 20
                with path.open("rb") as f:
                    tf.addfile(info, io.BytesIO(f.read(info.size)))
            else:
                tf.add(path, arcname=f"{OTA_NAME}/{path.name}")
    return root


@pytest.fixture
def server(archives: Path) -> Iterator[FileServer]:
    with FileServer(archives) as s:
        yield s


@pytest.fixture
def ota_env(tmp_path: Path, model_dir: Path) -> dict[str, str]:
    """Start on the real cached model; OTA installs go to a private cache and state file."""
    return {
        "EDGE_AGENT_MODEL__PATH": str(model_dir),
        "EDGE_AGENT_MODEL__CACHE_DIR": str(tmp_path / "cache"),
        "EDGE_AGENT_OTA__STATE_PATH": str(tmp_path / "state" / "model.json"),
        "EDGE_AGENT_OTA__WORK_DIR": str(tmp_path / "ota"),
        "EDGE_AGENT_TELEMETRY__INTERVAL_S": "0.5",
    }


def push(broker: PrivateBroker, device_id: str, url: str, sha256: str, *extra: str):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud_relay",
            "models",
            "push",
            "--broker",
            broker.url,
            "--device",
            device_id,
            "--model",
            OTA_NAME,
            "--url",
            url,
            "--sha256",
            sha256,
            "--wait",
            "240",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def ask(broker: PrivateBroker, topics: DeviceTopics, request_id: str) -> dict[str, Any]:
    app = AppClient(broker.port)
    reply_topic = f"apps/{uuid.uuid4().hex}/reply"
    app.subscribe(reply_topic)
    try:
        app.publish(
            topics.request,
            {
                "v": 1,
                "id": request_id,
                "text": "turn on the lights",
                "task": "classify",
                "labels": ["lights_on", "lights_off"],
            },
            response_topic=reply_topic,
        )
        payload: dict[str, Any] = app.next_reply(timeout=120).payload
        return payload
    finally:
        app.close()


def events(agent: AgentProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in agent.log_events() if e.get("event") == name]


# -- idle unload, reload on demand, pin -------------------------------------------------


def test_idle_unload_then_reload_on_demand_with_its_load_time(
    start_agent: StartAgent, broker: PrivateBroker, topics: DeviceTopics, watch: StatusWatch
) -> None:
    agent = start_agent(EDGE_AGENT_MODEL__IDLE_UNLOAD_S="1")
    first = watch.wait("the start-up load", lambda s: bool(s.get("model_state", {}).get("loads")))
    assert first["model_state"]["last_load_ms"] > 0
    unloaded = watch.wait("an idle unload", lambda s: s["model_state"]["loaded"] is False)
    assert unloaded["state"] == "online"
    assert unloaded["model_state"]["idle_unload_s"] == 1.0
    [event] = events(agent, "model_unloaded")
    assert event["idle_s"] >= 1.0
    reply = ask(broker, topics, "after-unload")
    assert reply["ok"], reply
    assert reply["model"] == DEFAULT_MODEL
    reloaded = watch.wait("a reload", lambda s: s["model_state"]["loads"] == 2)
    assert reloaded["model_state"]["loaded"] is True  # published right after the load
    assert reloaded["model_state"]["last_load_ms"] > 0
    [loaded] = events(agent, "model_reloaded")
    assert loaded["load_ms"] == reloaded["model_state"]["last_load_ms"]
    # The reply paid for the load: its latency includes it.
    assert reply["latency_ms"] >= loaded["load_ms"]


def test_a_pinned_model_stays_loaded(
    start_agent: StartAgent, broker: PrivateBroker, topics: DeviceTopics, watch: StatusWatch
) -> None:
    agent = start_agent(EDGE_AGENT_MODEL__IDLE_UNLOAD_S="0.5", EDGE_AGENT_MODEL__PIN="true")
    status = watch.wait("the birth", lambda s: "model_state" in s)
    assert status["model_state"]["pinned"] is True
    time.sleep(2.5)
    assert not events(agent, "model_unloaded")
    assert all(s["model_state"]["loaded"] for s in watch.seen if "model_state" in s)
    assert ask(broker, topics, "pinned")["ok"]
    assert not events(agent, "model_reloaded")


# -- over-the-air updates -----------------------------------------------------------------


def test_an_ota_update_swaps_the_model_and_survives_a_restart(
    start_agent: StartAgent,
    broker: PrivateBroker,
    topics: DeviceTopics,
    watch: StatusWatch,
    server: FileServer,
    archives: Path,
    ota_env: dict[str, str],
    tmp_path: Path,
) -> None:
    agent = start_agent(**ota_env)
    assert ask(broker, topics, "before")["model"] == DEFAULT_MODEL
    sha = sha256_of(archives / "good.tar")
    result = push(broker, topics.device_id, server.url("good.tar"), sha, "--pin")
    assert result.returncode == 0, result.stderr
    assert f"runs {OTA_NAME} {sha[:12]}" in result.stdout
    for step in ("downloading", "verifying", "unpacking", "importing", "self_test", "done"):
        assert f": {step}" in result.stderr, result.stderr  # the progress the operator saw
    status = watch.wait("the new model", lambda s: s.get("model") == OTA_NAME)
    assert status["model_state"]["version"] == sha[:12]
    assert status["model_state"]["pinned"] is True
    assert status["model_state"]["last_load_ms"] > 0
    done = watch.wait("done", lambda s: _update(s).get("state") == "done")
    assert done["model_update"]["sha256"] == sha
    assert "model_update_failed" not in (done.get("conditions") or [])
    reply = ask(broker, topics, "after")
    assert reply["ok"], reply
    assert reply["model"] == OTA_NAME
    telemetry = AppClient(broker.port)
    telemetry.subscribe(topics.telemetry)
    try:
        assert telemetry.next_reply(timeout=10).payload["model"] == OTA_NAME
    finally:
        telemetry.close()
    [finished] = events(agent, "model_update_done")
    assert finished["version"] == sha[:12]
    assert finished["load_ms"] > 0
    assert server.gets.count("/good.tar") == 1
    assert list((tmp_path / "ota").iterdir()) == []  # the download folder is cleaned up

    # A restart runs the new model, and the retained push is not applied again.
    assert agent.terminate() == 0
    watch.seen.clear()
    restarted = start_agent(**ota_env)
    status = watch.wait("the restart", lambda s: s.get("state") == "online")
    assert status["model"] == OTA_NAME
    assert status["model_state"]["version"] == sha[:12]
    assert ask(broker, topics, "after-restart")["model"] == OTA_NAME
    time.sleep(1.0)  # the retained desired model has been delivered by now
    assert events(restarted, "model_update_skipped")
    assert server.gets.count("/good.tar") == 1


@pytest.mark.parametrize(
    ("archive", "bad_sha", "step", "why"),
    [
        ("good.tar", True, "verifying", "sha256"),
        ("short-context.tar", False, "self_test", "PromptTooLong"),
        ("truncated.tar", False, "loading", ""),
    ],
    ids=["bad-sha256", "fails-self-test", "truncated-weights"],
)
def test_a_broken_ota_update_rolls_back_and_says_why(
    start_agent: StartAgent,
    broker: PrivateBroker,
    topics: DeviceTopics,
    watch: StatusWatch,
    server: FileServer,
    archives: Path,
    ota_env: dict[str, str],
    tmp_path: Path,
    archive: str,
    bad_sha: bool,
    step: str,
    why: str,
) -> None:
    agent = start_agent(**ota_env)
    sha = "0" * 64 if bad_sha else sha256_of(archives / archive)
    result = push(broker, topics.device_id, server.url(archive), sha)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"failed at {step}:" in result.stderr
    assert "kept its previous model" in result.stderr
    failed = watch.wait("failed", lambda s: _update(s).get("state") == "failed")
    assert failed["model_update"]["failed_step"] == step
    assert why in failed["model_update"]["reason"]
    assert "model_update_failed" in failed["conditions"]
    assert failed["model"] == DEFAULT_MODEL  # rolled back: the old model is still the one
    [logged] = events(agent, "model_update_failed")
    assert logged["step"] == step
    assert logged["kept"] == DEFAULT_MODEL
    reply = ask(broker, topics, "still-answering")
    assert reply["ok"], reply
    assert reply["model"] == DEFAULT_MODEL
    assert not list((tmp_path / "cache").glob(f"{OTA_NAME}-*"))  # nothing left installed
    assert list((tmp_path / "ota").iterdir()) == []
    assert agent.proc.poll() is None


def test_a_desired_model_without_the_contract_version_is_refused(
    start_agent: StartAgent,
    broker: PrivateBroker,
    topics: DeviceTopics,
    ota_env: dict[str, str],
) -> None:
    # The one version check of every intake: no `v`, or another one, is refused with its code.
    agent = start_agent(**ota_env)
    desired = {
        "device_id": topics.device_id,
        "name": OTA_NAME,
        "url": "http://127.0.0.1:9/model.tar",
        "sha256": "0" * 64,
        "issued_at": time.time(),
    }
    app = AppClient(broker.port)
    try:
        app.publish(topics.model, desired)
        app.publish(topics.model, {**desired, "v": 2})
        deadline = time.monotonic() + 10
        while len(rejected := events(agent, "model_update_rejected")) < 2:
            assert time.monotonic() < deadline, "bad desired models must be logged as rejected"
            time.sleep(0.05)
    finally:
        app.close()
    assert [e["code"] for e in rejected] == ["invalid_request", "unsupported_version"]
    assert not events(agent, "model_update_progress")  # no step of an update began
