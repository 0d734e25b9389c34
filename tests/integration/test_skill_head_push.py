"""A skill head pushed over a real broker changes the real agent's answers, live.

The real agent (SmolLM2 build, the MiniLM encoder from the model cache) answers a
request of ``home_intents``; a head fitted with the same encoder, which has
learned (from "cloud labels" made up for the test) that this very phrasing means
``play_music``, is published retained on the skill's head topic; the agent applies
it without a restart, says so in its status (``heads``), and answers
``play_music`` from the head. Heads are per encoder: one pushed on another encoder's
topic never reaches it, and one on its topic made for another encoder, or a broken
one, is refused and logged; the agent keeps serving with the head it had. A request
that lists its own labels gets the head ``cloud-relay learn`` fitted for that label
set, the same way.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.models import ModelCache, default_cache_dir
from agent.models.embedders import DEFAULT_EMBEDDER, installed
from agent.skills import SkillRegistry
from agent.skills.embedding import Embedder
from bench.eval_data import load_family, split
from cloud_relay.cli import main as relay_main
from cloud_relay.store import open_store
from edge_slm.contract.skills import HeadProvenance, label_set_name
from edge_slm.head import fit_head, skill_texts
from edge_slm.topics import DeviceTopics, skill_head
from tests.relay.learning import cases, log_case
from tests.support.agent import AgentProcess
from tests.support.app import AppClient
from tests.support.broker import PrivateBroker

SKILL = "home_intents"
QUERY = "switch off the lights in the hall"
TAUGHT = ["switch off the lights in the hall", "switch off the hall lights", "hall lights off"]


@pytest.fixture(scope="module")
def encoder() -> Embedder:
    folder = installed(ModelCache(default_cache_dir()), DEFAULT_EMBEDDER)
    if folder is None:
        pytest.skip(f"{DEFAULT_EMBEDDER} is not installed in the model cache")
    return Embedder(folder, name=DEFAULT_EMBEDDER, threads=1)


@pytest.fixture
def relay_client(broker: PrivateBroker) -> Iterator[paho.Client]:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"relay-{uuid.uuid4().hex[:6]}",
        protocol=paho.MQTTv5,
    )
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def push(client: paho.Client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)


def heads_in_status(
    port: int, topic: str, want: dict[str, int], timeout: float = 30
) -> dict[str, Any]:
    """The first status whose heads are ``want``."""
    seen: list[dict[str, Any]] = []
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"st-{uuid.uuid4().hex[:6]}"
    )
    client.on_message = lambda _c, _u, msg: seen.append(json.loads(msg.payload))
    client.connect("127.0.0.1", port)
    client.subscribe(topic, 1)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            heads = seen[-1].get("heads") or {} if seen else {}
            if all(heads.get(k) == v for k, v in want.items()):
                return seen[-1]
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    raise AssertionError(f"heads {want} not in the status: {seen[-1:] or 'none'}")


def test_a_pushed_head_changes_the_agents_answers(
    app: AppClient,
    topics: DeviceTopics,
    agent: AgentProcess,
    broker: PrivateBroker,
    relay_client: paho.Client,
    encoder: Embedder,
) -> None:
    app.subscribe(topics.response)
    before = app.classify(topics.request, text=QUERY, skill=SKILL)
    assert before["ok"] is True, before
    assert before["label"] != "play_music"  # the model reads "lights off", not music
    status = heads_in_status(broker.port, topics.status, {SKILL: 0})
    assert status["embedder"] == DEFAULT_EMBEDDER  # the encoder its heads run on

    skill = SkillRegistry().get(SKILL)
    assert skill is not None
    texts, gold = skill_texts(skill.spec)
    texts += TAUGHT * 3
    gold += ["play_music"] * len(TAUGHT) * 3
    head = fit_head(encoder.embed(texts), gold, skill.labels)
    wire = head.to_wire(
        skill=SKILL,
        version=1,
        embedder=encoder.name,
        provenance=HeadProvenance(skill_texts=0, cloud_labels=9, held_out=0),
    )
    mine = skill_head("slm", SKILL, encoder.name)
    push(relay_client, mine, wire.to_wire())
    heads_in_status(broker.port, topics.status, {SKILL: 1})

    after = app.classify(topics.request, text=QUERY, skill=SKILL)
    assert after["ok"] is True, after
    assert after["label"] == "play_music", after
    assert "skill head v1" in after["reason"], after

    # Another encoder's head on its own topic: this agent does not even receive it.
    theirs = head.to_wire(skill=SKILL, version=5, embedder="mpnet-base-v2-int8")
    push(relay_client, skill_head("slm", SKILL, "mpnet-base-v2-int8"), theirs.to_wire())
    # Refused, logged, and the head in use stays: another encoder's head on this
    # encoder's topic, then garbage.
    other = head.to_wire(skill=SKILL, version=2, embedder="another-encoder")
    push(relay_client, mine, other.to_wire())
    push(relay_client, mine, b'{"v": 1, "skill": "home_intents"}')
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rejected = [e for e in agent.log_events() if e.get("event") == "head_rejected"]
        if len(rejected) >= 2:
            break
        time.sleep(0.1)
    assert len(rejected) >= 2, rejected
    assert not [e for e in agent.log_events() if e.get("version") == 5], "not its encoder's"
    assert heads_in_status(broker.port, topics.status, {SKILL: 1})["heads"][SKILL] == 1
    again = app.classify(topics.request, text=QUERY, skill=SKILL)
    assert again["label"] == "play_music"
    assert agent.proc.poll() is None


def test_a_label_set_learned_by_the_relay_changes_the_agents_answers(
    app: AppClient,
    topics: DeviceTopics,
    agent: AgentProcess,
    broker: PrivateBroker,
    encoder: Embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An app lists its own labels, names no skill; the cloud labelled such requests
    (made up for the test: lights on is ``calm``, off is ``alert``); `cloud-relay learn`
    fits that label set's head, checks it against the zero-shot head, and pushes it over
    the broker; the agent answers from it, whatever order the app lists the labels in."""
    labels = ["calm", "alert"]
    query = "kill the lights in the cellar"
    app.subscribe(topics.response)
    before = app.classify(topics.request, text=query, labels=labels)
    assert before["ok"] is True, before
    assert "label-set head" not in before["reason"], before
    db = f"sqlite:///{tmp_path / 'relay.db'}"
    store = open_store(db)
    try:
        for i, (text, label) in enumerate(cases()):
            taught = "calm" if label == "lights_on" else "alert"
            log_case(store, i, text, taught, skill=None, labels=labels[:: 1 - 2 * (i % 2)])
    finally:
        store.close()
    monkeypatch.setenv("CLOUD_RELAY_LEARN__PARAPHRASES", "0")
    args = ["learn", "--db", db, "--broker", broker.url, "--skill", SKILL, "--json"]
    assert relay_main(args) == 0
    name = label_set_name(labels)
    heads_in_status(broker.port, topics.status, {name: 1, SKILL: 0})
    for listed in (labels, labels[::-1]):
        after = app.classify(topics.request, text=query, labels=listed)
        assert after["ok"] is True, after
        assert after["label"] == "alert", after
        assert after["reason"].startswith("label-set head v1;"), after
    applied = [e for e in agent.log_events() if e.get("event") == "head_applied"]
    assert [(e["skill"], e["version"]) for e in applied] == [(name, 1)]


MPNET = "mpnet-base-v2-int8"


def test_a_mixed_fleet_gets_a_learned_head_per_encoder(
    broker: PrivateBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two real agents, one on each encoder, and `cloud-relay learn` for both: each agent
    applies its own encoder's head (the relay's versions 1 and 2), and neither is sent
    the other's."""
    cache = ModelCache(default_cache_dir())
    for name in (DEFAULT_EMBEDDER, MPNET):
        if installed(cache, name) is None:
            pytest.skip(f"{name} is not installed (edge-agent models build {name})")
    db = f"sqlite:///{tmp_path / 'relay.db'}"
    store = open_store(db)
    try:  # the cloud's labels: the voice set's dev side, as escalations of the skill
        skill = SkillRegistry().get(SKILL)
        assert skill is not None
        for i, item in enumerate(split(load_family("voice"), "dev")):
            label = item.gold["label"]
            if label in skill.labels:
                log_case(store, i, item.request.text or "", label, skill=SKILL, labels=skill.labels)
    finally:
        store.close()
    agents = {}
    for name in (DEFAULT_EMBEDDER, MPNET):
        topics = DeviceTopics("slm", f"dev-{name.split('-')[0]}")
        agents[name] = (
            AgentProcess(
                broker_url=broker.url,
                device_id=topics.device_id,
                log_path=tmp_path / f"{topics.device_id}.log",
                EDGE_AGENT_CLOUD__ENABLED="false",
                EDGE_AGENT_OUTBOX__PATH=str(tmp_path / f"{topics.device_id}.db"),
                EDGE_AGENT_MODEL__EMBEDDER=name,
            ),
            topics,
        )
    try:
        for name, (_agent, topics) in agents.items():
            assert heads_in_status(broker.port, topics.status, {SKILL: 0})["embedder"] == name
        monkeypatch.setenv("CLOUD_RELAY_LEARN__ENCODERS", json.dumps([DEFAULT_EMBEDDER, MPNET]))
        monkeypatch.setenv("CLOUD_RELAY_LEARN__PARAPHRASES", "0")  # the cases alone
        args = ["learn", "--db", db, "--broker", broker.url, "--skill", SKILL, "--json"]
        assert relay_main(args) == 0
        for name, (agent, topics) in agents.items():
            want = 1 if name == DEFAULT_EMBEDDER else 2  # one version sequence per skill
            heads_in_status(broker.port, topics.status, {SKILL: want})
            applied = [e for e in agent.log_events() if e.get("event") == "head_applied"]
            assert [(e["version"], e["embedder"]) for e in applied] == [(want, name)]
            assert not [e for e in agent.log_events() if e.get("event") == "head_rejected"]
    finally:
        for agent, _topics in agents.values():
            agent.close()
