"""Store migrations 5, 7 and 9, the learn loop's data: labelled cases per skill, pushed heads,
the head versions devices report, and the cloud's paraphrases, on SQLite and on a real
PostgreSQL."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from cloud_relay import render
from cloud_relay.store import (
    Final,
    NewEscalation,
    Paraphrase,
    PushedHead,
    RelayStore,
    open_store,
)
from edge_slm.contract import Outcome
from tests.relay.fleet import status_update
from tests.relay.migrations import schema_at

MINILM, MPNET = "minilm-l6-v2-int8", "mpnet-base-v2-int8"


def _case(
    store: RelayStore,
    request_id: str,
    *,
    skill: str | None = "home",
    text: str | None = "turn off the lights",
    cloud_label: str | None = "lights_off",
    outcome: Outcome = Outcome.OK,
    reason: str = "low_confidence",
    received_at: float | None = None,
    labels: list[str] | None = None,
) -> None:
    store.claim(
        NewEscalation(
            device_id="d1",
            request_id=request_id,
            relay_id="r",
            received_at=received_at if received_at is not None else time.time(),
            task="classify",
            reason=reason,
            text=text,
            labels=labels if labels is not None else ["lights_on", "lights_off"],
            skill=skill,
        ),
        stale_before=0,
    )
    store.finalize(
        "d1",
        request_id,
        Final(
            outcome=outcome,
            answered_at=time.time(),
            reply="{}",
            latency_ms=1.0,
            cloud_label=cloud_label,
        ),
    )


def test_labelled_cases_are_the_skills_answered_ones_with_text_and_label(
    store: RelayStore,
) -> None:
    now = time.time()
    _case(store, "keep-old", received_at=now - 10)
    _case(store, "keep-shadow", reason="shadow", cloud_label="lights_on", received_at=now - 5)
    _case(store, "other-skill", skill="sensors")
    _case(store, "no-skill", skill=None)  # ad-hoc labels, or logged before migration 5
    _case(store, "no-text", text=None)  # store_prompts off: nothing to learn from
    _case(store, "no-label", cloud_label=None)
    _case(store, "failed", outcome=Outcome.LLM_ERROR)
    cases = store.labelled_cases("home")
    assert [c.request_id for c in cases] == ["keep-shadow", "keep-old"]  # newest first
    shadow, old = cases
    assert (shadow.label, shadow.shadow, shadow.text) == ("lights_on", True, "turn off the lights")
    assert (old.label, old.shadow, old.device_id) == ("lights_off", False, "d1")
    assert [c.request_id for c in store.labelled_cases("home", limit=1)] == ["keep-shadow"]
    assert store.labelled_cases("nothing") == []


def test_ad_hoc_cases_are_the_answered_ones_without_a_skill_with_their_labels(
    store: RelayStore,
) -> None:
    now = time.time()
    _case(store, "old", skill=None, received_at=now - 10)
    _case(store, "new", skill=None, labels=["open", "close"], cloud_label="open")
    _case(store, "skill", skill="home")  # a skill's: learned as the skill
    _case(store, "no-text", skill=None, text=None)
    _case(store, "no-label", skill=None, cloud_label=None)
    _case(store, "failed", skill=None, outcome=Outcome.LLM_ERROR)
    cases = store.ad_hoc_cases(limit=10)
    assert [(c.request_id, c.labels, c.label) for c in cases] == [
        ("new", ("open", "close"), "open"),
        ("old", ("lights_on", "lights_off"), "lights_off"),
    ]
    assert [c.request_id for c in store.ad_hoc_cases(limit=1)] == ["new"]
    assert store.labelled_cases("home")[0].labels == ()


def test_pushed_heads_are_kept_and_the_latest_read_back(store: RelayStore) -> None:
    assert store.latest_head("home", MINILM) is None
    assert store.head_version("home") == 0
    assert store.head_names() == []
    first = PushedHead(
        skill="home", embedder=MINILM, version=1, payload='{"v":1}', pushed_at=10.0, cases=30
    )
    assert store.record_head(first)
    assert store.record_head(replace(first, version=2, payload='{"v":2}', cases=45))
    assert store.record_head(replace(first, skill="sensors", version=7))
    # Version 2 is taken (another relay on this store pushed it): refused, first one kept.
    assert not store.record_head(replace(first, version=2, payload='{"v":"late"}'))
    latest = store.latest_head("home", MINILM)
    assert latest is not None
    assert (latest.embedder, latest.version, latest.payload, latest.cases) == (
        MINILM,
        2,
        '{"v":2}',
        45,
    )
    other = store.latest_head("sensors", MINILM)
    assert other is not None
    assert other.version == 7
    assert store.head_names() == ["home", "sensors"]


def test_heads_pushed_before_migration_9_are_filed_under_their_encoder(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with schema_at(monkeypatch, 8):
        old = open_store(store_url)
        # A relay of the previous version pushed version 3: its encoder only in the JSON.
        old._db.execute(  # type: ignore[attr-defined]
            "INSERT INTO skill_head (skill, version, payload, pushed_at, cases) "
            "VALUES ('home', 3, ?, 5.0, 40)",
            (json.dumps({"v": 1, "skill": "home", "version": 3, "embedder": MPNET}),),
        )
        old.close()
    new = open_store(store_url)
    try:
        got = new.latest_head("home", MPNET)
        assert got is not None
        assert (got.embedder, got.version, got.cases) == (MPNET, 3, 40)
        assert new.latest_head("home", MINILM) is None
        assert new.head_version("home") == 3  # the next push, on any encoder, is 4
    finally:
        new.close()


def test_heads_are_kept_per_encoder_on_one_version_sequence(store: RelayStore) -> None:
    minilm = PushedHead(
        skill="home", embedder=MINILM, version=1, payload='{"v":1}', pushed_at=10.0, cases=30
    )
    assert store.record_head(minilm)
    assert store.latest_head("home", MPNET) is None  # no head for that encoder yet
    # The other encoder's first head takes the skill's next version, not its own 1.
    assert not store.record_head(replace(minilm, embedder=MPNET))
    mpnet = replace(minilm, embedder=MPNET, version=store.head_version("home") + 1)
    assert store.record_head(mpnet)
    assert store.head_version("home") == 2
    got = store.latest_head("home", MPNET)
    assert got is not None
    assert (got.embedder, got.version) == (MPNET, 2)
    back = store.latest_head("home", MINILM)
    assert back is not None
    assert (back.embedder, back.version) == (MINILM, 1)


def test_devices_show_the_head_versions_of_their_status(store: RelayStore) -> None:
    base = status_update()
    store.record_status(replace(base, heads={"home_intents": 0, "sensor_state": 0}))
    store.record_status(replace(base, heads={"home_intents": 3, "sensor_state": 0}))
    (d,) = store.devices("d")
    assert d.heads == {"home_intents": 3, "sensor_state": 0}
    store.record_status(replace(base, state="offline"))  # the will: names no heads
    (d,) = store.devices("d")
    assert d.heads == {"home_intents": 3, "sensor_state": 0}
    now = time.time()
    cells = render.device_cells(d, now=now, stale_after_s=60)
    assert cells[render.DEVICE_HEADERS.index("heads")] == "home_intents@3,sensor_state@0"
    assert render.device_dict(d, now=now, stale_after_s=60)["heads"] == d.heads
    # Learned label sets are counted in the table; the JSON lists them.
    sets = {"_labels-9084d06c7401c908": 2, "_labels-0123456789abcdef": 1}
    store.record_status(replace(base, heads={"home_intents": 3, **sets}))
    (d,) = store.devices("d")
    cells = render.device_cells(d, now=now, stale_after_s=60)
    assert cells[render.DEVICE_HEADERS.index("heads")] == "home_intents@3,+2 label sets"
    assert render.device_dict(d, now=now, stale_after_s=60)["heads"] == {"home_intents": 3, **sets}


def test_devices_show_the_encoder_of_their_status(store: RelayStore) -> None:
    base = status_update()
    store.record_status(replace(base, embedder=MPNET))
    store.record_status(replace(base, state="offline"))  # the will: made before it loaded
    (d,) = store.devices("d")
    assert d.embedder == MPNET
    now = time.time()
    cells = render.device_cells(d, now=now, stale_after_s=60)
    assert cells[render.DEVICE_HEADERS.index("encoder")] == MPNET
    assert render.device_dict(d, now=now, stale_after_s=60)["embedder"] == MPNET
    store.record_status(base)  # online without an encoder: the embedding stage is off
    (d,) = store.devices("d")
    assert d.embedder is None
    assert render.device_cells(d, now=now, stale_after_s=60)[6] == "-"


def test_paraphrases_are_kept_per_skill_text_in_order_and_written_once(
    store: RelayStore,
) -> None:
    written = [
        Paraphrase("lights_on", "lights up please"),
        Paraphrase("lights_off", "it's too bright, lights off"),
        Paraphrase("lights_on", "need some light in here"),
    ]
    assert store.paraphrases("home", "fp1") == []
    store.record_paraphrases("home", "fp1", "gpt-x", written)
    assert store.paraphrases("home", "fp1") == written
    # Another version of the skill's text, and another skill, keep their own.
    assert store.paraphrases("home", "fp2") == []
    assert store.paraphrases("other", "fp1") == []
    # A second relay recording the same version adds nothing it already has.
    store.record_paraphrases("home", "fp1", "gpt-x", written[:2])
    assert store.paraphrases("home", "fp1") == written
