"""The learn loop on a real store, the real sentence encoder and a real broker.

A head that is worse on the held-out cases is not pushed; one that is not worse is
pushed retained on the skill's head topic, versioned, and its version claimed in
the store; nothing new: nothing fitted.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog

from cloud_relay.cli import main
from cloud_relay.config import LearnSettings
from cloud_relay.learn import Learner, LearnUnavailable, TextEncoder, load_encoders
from cloud_relay.store import RelayStore, open_store
from edge_slm.contract import decode
from edge_slm.contract.skills import SkillHead
from edge_slm.head import Head, fit_head, skill_texts
from edge_slm.mqtt import BrokerUrl, Inbound, MqttConnection
from edge_slm.topics import skill_head, skill_head_filter
from tests.relay.fleet import status_update
from tests.relay.learning import (
    FLIP,
    SKILL,
    SPEC,
    RotatedEncoder,
    assert_kept_as_worse,
    cases,
    is_held_out,
    log_case,
    skills_dir,
)
from tests.support.broker import PrivateBroker


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RelayStore]:
    s = open_store(f"sqlite:///{tmp_path / 'relay.db'}")
    yield s
    s.close()


def learner(
    store: RelayStore, encoder: TextEncoder, pushed: list[tuple[str, bytes]], *more: TextEncoder
) -> Learner:
    return Learner(
        LearnSettings(min_cases=10),
        prefix="slm",
        store=store,
        encoders=[encoder, *more],
        publish=lambda topic, payload: pushed.append((topic, payload)),
        skills={SKILL: SPEC},
    )


def test_a_head_worse_on_the_held_out_cases_is_not_pushed(
    store: RelayStore, encoder: TextEncoder
) -> None:
    # The cases it trains on are labelled backwards; the held-out ones are right.
    for i, (text, label) in enumerate(cases()):
        log_case(store, i, text, label if is_held_out(i, 0.25) else FLIP[label])
    pushed: list[tuple[str, bytes]] = []
    (result,) = learner(store, encoder, pushed).run()
    assert_kept_as_worse(result, "the skill-text head")
    assert pushed == []
    assert store.latest_head(SKILL, encoder.name) is None


def test_a_head_not_worse_is_pushed_versioned_once(store: RelayStore, encoder: TextEncoder) -> None:
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
    assert topic == skill_head("slm", SKILL, encoder.name)
    wire = decode(SkillHead, payload)
    assert (wire.skill, wire.version, wire.labels) == (SKILL, 1, list(SPEC.labels))
    assert wire.provenance.cloud_labels == result.train
    stored = store.latest_head(SKILL, encoder.name)
    assert stored is not None
    assert stored.payload.encode() == payload
    # The head read back answers like the one fitted.
    head = Head.from_wire(wire)
    vectors = encoder.embed(["turn the porch light off"])
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


def test_each_encoder_gets_its_own_head_on_its_own_topic(
    store: RelayStore, encoder: TextEncoder
) -> None:
    for i, (text, label) in enumerate(cases()):
        log_case(store, i, text, label)
    second = RotatedEncoder(encoder)
    pushed: list[tuple[str, bytes]] = []
    results = learner(store, encoder, pushed, second).run()
    assert [(r.encoder, r.action, r.version) for r in results] == [
        (encoder.name, "pushed", 1),
        (second.name, "pushed", 2),  # one version sequence per skill
    ]
    assert [topic for topic, _ in pushed] == [
        skill_head("slm", SKILL, encoder.name),
        skill_head("slm", SKILL, second.name),
    ]
    heads = {}
    for (_topic, payload), enc in zip(pushed, (encoder, second), strict=True):
        wire = decode(SkillHead, payload)
        assert wire.embedder == enc.name
        stored = store.latest_head(SKILL, enc.name)
        assert stored is not None
        assert (stored.embedder, stored.payload.encode()) == (enc.name, payload)
        heads[enc.name] = Head.from_wire(wire)
    # Each head was fitted on its own encoder's vectors: it reads them, the other's not.
    query = ["turn the porch light off"]
    assert heads[encoder.name].predict(encoder.embed(query)[0]).label == "lights_off"
    assert heads[second.name].predict(second.embed(query)[0]).label == "lights_off"
    assert not np.allclose(heads[encoder.name].weights, heads[second.name].weights)
    # Nothing new: neither encoder fits again.
    again = learner(store, encoder, pushed, second).run()
    assert [(r.encoder, r.action, r.version) for r in again] == [
        (encoder.name, "skipped", 1),
        (second.name, "skipped", 2),
    ]
    assert len(pushed) == 2


def test_an_encoder_added_later_gets_its_first_head_next_in_the_sequence(
    store: RelayStore, encoder: TextEncoder
) -> None:
    for i, (text, label) in enumerate(cases()):
        log_case(store, i, text, label)
    pushed: list[tuple[str, bytes]] = []
    (first,) = learner(store, encoder, pushed).run()
    assert (first.action, first.version) == ("pushed", 1)
    second = RotatedEncoder(encoder)
    kept, added = learner(store, encoder, pushed, second).run()
    assert (kept.encoder, kept.action, kept.version) == (encoder.name, "skipped", 1)
    assert (added.encoder, added.action, added.version) == (second.name, "pushed", 2)
    assert "the skill-text head" in added.reason  # its baseline: no head of its own yet


def test_devices_on_an_encoder_learned_for_are_not_named(
    store: RelayStore, encoder: TextEncoder
) -> None:
    second = RotatedEncoder(encoder)
    for device, embedder in [("a", "mpnet-base-v2-int8"), ("b", second.name), ("c", None)]:
        store.record_status(status_update(device, embedder=embedder))
    with structlog.testing.capture_logs() as logs:
        learner(store, encoder, [], second).run()
    (warned,) = [e for e in logs if e["event"] == "learn_encoder_mismatch"]
    assert (warned["devices"], warned["theirs"]) == (1, ["mpnet-base-v2-int8"])
    assert warned["encoders"] == sorted([encoder.name, second.name])


def test_a_missing_encoder_is_logged_and_the_others_learn(encoder: TextEncoder) -> None:
    settings = LearnSettings(encoders=[encoder.name, "not-built-here"])
    with structlog.testing.capture_logs() as logs:
        loaded = load_encoders(settings)
    assert [e.name for e in loaded] == [encoder.name]
    (missing,) = [e for e in logs if e["event"] == "learn_encoder_missing"]
    assert "not-built-here" in missing["error"]
    assert "models build not-built-here" in missing["error"]
    with pytest.raises(LearnUnavailable, match="not-built-here"):
        load_encoders(LearnSettings(encoders=["not-built-here"]))


def test_the_skill_text_head_is_the_baseline_before_any_push(encoder: TextEncoder) -> None:
    texts, gold = skill_texts(SPEC)
    assert len(texts) == 4  # a line and an exemplar per label
    head = fit_head(encoder.embed(texts), gold, list(SPEC.labels))
    # On and off are close in embedding space: from 4 texts it knows its own examples...
    vectors = encoder.embed(["lights off"])
    out = head.predict(vectors[0])
    assert out.label == "lights_off"
    assert 0.0 < out.confidence < 1.0
    assert np.isclose(sum(out.probs.values()), 1.0)


def test_cloud_relay_learn_pushes_retained_over_a_real_broker(
    tmp_path: Path,
    broker: PrivateBroker,
    encoder: TextEncoder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = f"sqlite:///{tmp_path / 'relay.db'}"
    store = open_store(db)
    try:
        for i, (text, label) in enumerate(cases()):
            log_case(store, i, text, label)
    finally:
        store.close()
    skills = skills_dir(tmp_path)
    args = ["learn", "--db", db, "--broker", broker.url, "--skills-dir", str(skills)]
    assert main([*args, "--skill", SKILL, "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["action"] == "pushed"
    # A device subscribing afterwards gets it: retained.
    (got,) = retained(broker, skill_head_filter("slm", encoder.name), count=1)
    assert decode(SkillHead, got.payload).version == 1


def test_cloud_relay_run_learns_on_its_schedule(
    tmp_path: Path, broker: PrivateBroker, encoder: TextEncoder
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
    skills = skills_dir(tmp_path)
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
        on_connect=lambda: device.subscribe([(skill_head_filter("slm", encoder.name), 1)]),
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
        head = latest.latest_head(SKILL, encoder.name)
        assert head is not None
        assert head.version == 1  # later runs found no new case: nothing pushed again
    finally:
        latest.close()


def test_the_last_heads_are_published_again_retained(
    tmp_path: Path,
    broker: PrivateBroker,
    encoder: TextEncoder,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`cloud-relay learn --republish`: after an upgrade moved the heads' topics, or a
    broker lost its retained messages, the devices get their encoder's head back."""
    db = f"sqlite:///{tmp_path / 'relay.db'}"
    second = RotatedEncoder(encoder)
    store = open_store(db)
    try:
        for i, (text, label) in enumerate(cases()):
            log_case(store, i, text, label)
        pushed: list[tuple[str, bytes]] = []  # pushed "before": never reached this broker
        learner(store, encoder, pushed, second).run()
    finally:
        store.close()
    assert len(pushed) == 2
    monkeypatch.setenv("CLOUD_RELAY_LEARN__ENCODERS", json.dumps([encoder.name, second.name]))
    args = ["learn", "--db", db, "--broker", broker.url, "--skills-dir", str(skills_dir(tmp_path))]
    assert main([*args, "--republish"]) == 0
    assert capsys.readouterr().out.strip() == "2 head(s) published again"
    got = retained(broker, skill_head_filter("slm"), count=2)
    assert sorted((m.topic, m.payload) for m in got) == sorted(pushed)


def test_the_relays_learn_thread_publishes_the_last_heads_again_at_start(
    tmp_path: Path, encoder: TextEncoder
) -> None:
    from cloud_relay.config import load_settings
    from cloud_relay.learn_loop import LearnLoop

    db = f"sqlite:///{tmp_path / 'relay.db'}"
    store = open_store(db)
    try:
        for i, (text, label) in enumerate(cases()):
            log_case(store, i, text, label)
        pushed: list[tuple[str, bytes]] = []
        learner(store, encoder, pushed).run()
    finally:
        store.close()
    settings = load_settings(
        db=db,
        **{
            "llm.model": "unused",
            "learn.interval_s": 3600,  # no learn run in this test: only the start
            "learn.skills_dir": skills_dir(tmp_path),
        },
    )
    again: list[tuple[str, bytes]] = []
    published = threading.Event()

    def publish(topic: str, payload: bytes) -> None:
        again.append((topic, payload))
        published.set()

    loop = LearnLoop(settings, publish)
    loop.start()
    try:
        assert published.wait(10), "nothing published again at start"
    finally:
        loop.stop()
    assert again == pushed


def retained(broker: PrivateBroker, topic_filter: str, *, count: int) -> list[Inbound]:
    """The retained messages a device subscribing now to ``topic_filter`` gets."""
    got: list[Inbound] = []
    done = threading.Event()

    def on_message(msg: Inbound) -> None:
        got.append(msg)
        if len(got) >= count:
            done.set()

    device = MqttConnection(
        url=BrokerUrl.parse(broker.url),
        client_id=f"device-{uuid.uuid4().hex[:6]}",
        on_connect=lambda: device.subscribe([(topic_filter, 1)]),
        on_message=on_message,
    )
    assert device.start(connect_timeout_s=5)
    try:
        assert done.wait(5), got
    finally:
        device.stop()
    assert all(m.retain for m in got)
    return got
