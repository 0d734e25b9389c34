"""The learn loop on a real store, the real sentence encoder and a real broker.

A head that is worse on the held-out cases is not pushed; one that is not worse is
pushed retained on the skill's head topic, versioned, and its version claimed in
the store; nothing new: nothing fitted.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog

from cloud_relay.cli import main
from cloud_relay.config import LearnSettings
from cloud_relay.learn import Learner, TextEncoder, held_out
from cloud_relay.store import LabelledCase, RelayStore, open_store
from edge_slm.contract import decode
from edge_slm.contract.skills import SkillHead
from edge_slm.head import Head, fit_head, skill_texts
from edge_slm.mqtt import BrokerUrl, Inbound, MqttConnection
from edge_slm.topics import skill_head
from tests.relay.fleet import status_update
from tests.relay.learning import SKILL, SPEC, cases, log_case
from tests.support.broker import PrivateBroker


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RelayStore]:
    s = open_store(f"sqlite:///{tmp_path / 'relay.db'}")
    yield s
    s.close()


def is_held_out(i: int, holdout: float) -> bool:
    case = LabelledCase(f"dev-{i % 3}", f"r{i}", 0.0, "", "", shadow=False)
    return held_out(case, holdout)


def learner(store: RelayStore, encoder: object, pushed: list[tuple[str, bytes]]) -> Learner:
    return Learner(
        LearnSettings(min_cases=10),
        prefix="slm",
        store=store,
        encoder=encoder,  # type: ignore[arg-type]
        publish=lambda topic, payload: pushed.append((topic, payload)),
        skills={SKILL: SPEC},
    )


def test_a_head_worse_on_the_held_out_cases_is_not_pushed(
    store: RelayStore, encoder: object
) -> None:
    # The cases it trains on are labelled backwards; the held-out ones are right.
    flip = {"lights_on": "lights_off", "lights_off": "lights_on"}
    for i, (text, label) in enumerate(cases()):
        log_case(store, i, text, label if is_held_out(i, 0.25) else flip[label])
    pushed: list[tuple[str, bytes]] = []
    (result,) = learner(store, encoder, pushed).run()
    assert result.action == "kept", result
    assert result.accuracy_new is not None
    assert result.accuracy_old is not None
    assert result.accuracy_new < result.accuracy_old
    assert "the skill-text head" in result.reason
    assert pushed == []
    assert store.latest_head(SKILL) is None


def test_a_head_not_worse_is_pushed_versioned_once(store: RelayStore, encoder: object) -> None:
    for i, (text, label) in enumerate(cases()):
        log_case(store, i, text, label)
    pushed: list[tuple[str, bytes]] = []
    (result,) = learner(store, encoder, pushed).run()
    assert result.action == "pushed", result
    assert result.version == 1
    assert result.accuracy_new is not None
    assert result.accuracy_old is not None
    assert result.accuracy_new >= result.accuracy_old
    assert result.train + result.held_out == result.cases == len(cases())
    ((topic, payload),) = pushed
    assert topic == skill_head("slm", SKILL)
    wire = decode(SkillHead, payload)
    assert (wire.skill, wire.version, wire.labels) == (SKILL, 1, list(SPEC.labels))
    assert wire.provenance.cloud_labels == result.train
    stored = store.latest_head(SKILL)
    assert stored is not None
    assert stored.payload.encode() == payload
    # The head read back answers like the one fitted.
    head = Head.from_wire(wire)
    vectors = encoder.embed(["turn the porch light off"])  # type: ignore[attr-defined]
    assert head.predict(vectors[0]).label == "lights_off"
    # Nothing new since: no fit, no push.
    (again,) = learner(store, encoder, pushed).run()
    assert (again.action, again.version) == ("skipped", 1)
    assert len(pushed) == 1
    # A new case: fitted again, compared with version 1, pushed as version 2.
    log_case(store, 1000, "lights off in the garden please", "lights_off")
    (third,) = learner(store, encoder, pushed).run()
    assert third.action in ("pushed", "kept")
    if third.action == "pushed":
        assert third.version == 2
        assert decode(SkillHead, pushed[-1][1]).version == 2
    assert "version 1" in third.reason


def test_devices_on_another_encoder_are_named_in_the_log(
    store: RelayStore, encoder: TextEncoder
) -> None:
    for device, embedder in [("a", "mpnet-base-v2-int8"), ("b", None), ("c", encoder.name)]:
        store.record_status(status_update(device, embedder=embedder))
    with structlog.testing.capture_logs() as logs:
        learner(store, encoder, []).run()
    (warned,) = [e for e in logs if e["event"] == "learn_encoder_mismatch"]
    assert warned["devices"] == 1
    assert warned["theirs"] == ["mpnet-base-v2-int8"]
    assert warned["examples"] == ["a"]


def test_the_skill_text_head_is_the_baseline_before_any_push(encoder: object) -> None:
    texts, gold = skill_texts(SPEC)
    assert len(texts) == 4  # a line and an exemplar per label
    head = fit_head(encoder.embed(texts), gold, list(SPEC.labels))  # type: ignore[attr-defined]
    # On and off are close in embedding space: from 4 texts it knows its own examples...
    vectors = encoder.embed(["lights off"])  # type: ignore[attr-defined]
    out = head.predict(vectors[0])
    assert out.label == "lights_off"
    assert 0.0 < out.confidence < 1.0
    assert np.isclose(sum(out.probs.values()), 1.0)


def test_cloud_relay_learn_pushes_retained_over_a_real_broker(
    tmp_path: Path,
    broker: PrivateBroker,
    encoder: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = f"sqlite:///{tmp_path / 'relay.db'}"
    store = open_store(db)
    try:
        for i, (text, label) in enumerate(cases()):
            log_case(store, i, text, label)
    finally:
        store.close()
    skills = tmp_path / "skills"
    skills.mkdir()
    (skills / f"{SKILL}.toml").write_text(
        "\n".join(
            f'[labels.{name}]\ndescription = "{label.description}"\n'
            f"exemplars = {json.dumps(label.exemplars)}"
            for name, label in SPEC.labels.items()
        )
    )
    args = ["learn", "--db", db, "--broker", broker.url, "--skills-dir", str(skills)]
    assert main([*args, "--skill", SKILL, "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["action"] == "pushed"
    # A device subscribing afterwards gets it: retained.
    got: list[Inbound] = []
    arrived = threading.Event()

    def on_message(msg: Inbound) -> None:
        got.append(msg)
        arrived.set()

    device = MqttConnection(
        url=BrokerUrl.parse(broker.url),
        client_id="device-late",
        on_connect=lambda: None,
        on_message=on_message,
    )
    assert device.start(connect_timeout_s=5)
    try:
        device.subscribe([(skill_head("slm", SKILL), 1)])
        assert arrived.wait(5)
    finally:
        device.stop()
    assert got[0].retain
    assert decode(SkillHead, got[0].payload).version == 1


def test_cloud_relay_run_learns_on_its_schedule(
    tmp_path: Path, broker: PrivateBroker, encoder: object
) -> None:
    from cloud_relay.config import load_settings
    from cloud_relay.daemon import RelayDaemon

    db = f"sqlite:///{tmp_path / 'relay.db'}"
    store = open_store(db)
    try:
        for i, (text, label) in enumerate(cases()):
            log_case(store, i, text, label)
    finally:
        store.close()
    skills = tmp_path / "skills"
    skills.mkdir()
    (skills / f"{SKILL}.toml").write_text(
        "\n".join(
            f'[labels.{name}]\ndescription = "{label.description}"\n'
            f"exemplars = {json.dumps(label.exemplars)}"
            for name, label in SPEC.labels.items()
        )
    )
    settings = load_settings(
        db=db,
        **{
            "mqtt.broker": broker.url,
            "llm.model": "unused",  # no escalation comes: the LLM is never called
            "learn.paraphrases": 0,
            "learn.interval_s": 0.5,
            "learn.skills": [SKILL],
            "learn.skills_dir": skills,
            "learn.min_cases": 10,
        },
    )
    daemon = RelayDaemon(settings)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    got: list[Inbound] = []
    arrived = threading.Event()

    def on_message(msg: Inbound) -> None:
        got.append(msg)
        arrived.set()

    device = MqttConnection(
        url=BrokerUrl.parse(broker.url),
        client_id="device-sched",
        on_connect=lambda: device.subscribe([(skill_head("slm", SKILL), 1)]),
        on_message=on_message,
    )
    assert device.start(connect_timeout_s=5)
    try:
        assert arrived.wait(30), "no head pushed by the relay's learn thread"
    finally:
        device.stop()
        daemon.request_stop()
        runner.join(30)
    assert decode(SkillHead, got[0].payload).version == 1
    latest = open_store(db)
    try:
        head = latest.latest_head(SKILL)
        assert head is not None
        assert head.version == 1  # later runs found no new case: nothing pushed again
    finally:
        latest.close()
