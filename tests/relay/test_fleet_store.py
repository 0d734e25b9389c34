"""Store migrations 2-3 and the fleet view, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from cloud_relay import render
from cloud_relay.store import (
    Final,
    LogQuery,
    NewEscalation,
    RelayStore,
    StatusUpdate,
    StoreError,
    TelemetrySample,
    open_store,
)
from cloud_relay.store import sql as sqlmod
from edge_slm.contract import Outcome
from tests.relay.fleet import status_update
from tests.relay.migrations import schema_at


def sample(
    device: str = "d1",
    ts: float = 1000.0,
    started_at: float = 900.0,
    edge: int = 0,
    cloud: int = 0,
    fallback: int = 0,
    escalations: int = 0,
    cost: float = 0.0,
) -> TelemetrySample:
    return TelemetrySample(
        device_id=device,
        ts=ts,
        received_at=time.time(),
        started_at=started_at,
        model="smol",
        provider="cpu",
        requests={"edge": edge, "cloud": cloud, "edge-fallback": fallback, "error": 1},
        escalations=escalations,
        cost_avoided_usd=cost,
        latency_ms={"edge": (80.0, 150.0), "cloud": (600.0, 900.0)},
        conditions=["outbox_unwritable"],
        raw=json.dumps({"device_id": device, "ts": ts}),
    )


def status(device: str = "d1", state: str = "online", *, live: bool = True) -> StatusUpdate:
    now = time.time()
    return status_update(device, state, at=now, ts=now - 5, live=live, provider="cuda")


def test_a_version_1_store_is_migrated_and_keeps_its_rows(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with schema_at(monkeypatch, 1):
        old = open_store(store_url)
        # A relay of the previous version logs a row (its INSERT has no new columns).
        old._db.execute(  # type: ignore[attr-defined]
            "INSERT INTO relay_log (device_id, request_id, relay_id, claimed_at, received_at, "
            "outcome) VALUES ('old', 'r0', 'r', 1.0, 1.0, 'ok')"
        )
        old.close()
    new = open_store(store_url)
    try:
        versions = new._db.query("SELECT version FROM relay_schema_version ORDER BY version")  # type: ignore[attr-defined]
        every = [v for v, _ in sqlmod.MIGRATIONS]
        assert [v for (v,) in versions] == [1, 2, 3, 4, 5, 6, 7, 8, 9] == every
        (row,) = new.logs(LogQuery())
        assert (row.request_id, row.text, row.labels, row.sensor, row.skill) == (
            "r0",
            None,
            None,
            None,
            None,
        )
        assert new.devices() == []
    finally:
        new.close()


def test_a_newer_schema_is_refused(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    open_store(store_url).close()  # at the latest version
    with schema_at(monkeypatch, 1), pytest.raises(StoreError, match="newer"):
        open_store(store_url)


def test_escalation_case_round_trips(store: RelayStore) -> None:
    text = "Email [EMAIL] that the washer at [IP] is done; café ✓"
    sensor = [{"name": "washer/state", "value": "done", "unit": None}]
    store.claim(
        NewEscalation(
            device_id="d1",
            request_id="r1",
            relay_id="r",
            received_at=time.time(),
            edge_model="smol",
            text=text,
            labels=["a", "b"],
            sensor=sensor,
        ),
        stale_before=0,
    )
    store.finalize("d1", "r1", Final(outcome=Outcome.OK, answered_at=1.0, reply="{}", latency_ms=1))
    (row,) = store.logs(LogQuery())
    assert row.text == text
    assert row.labels == ["a", "b"]
    assert row.sensor == sensor
    assert row.edge_model == "smol"


def test_telemetry_becomes_latest_and_history(store: RelayStore) -> None:
    assert store.record_telemetry(sample(ts=1000, edge=5, cost=0.5))
    assert store.record_telemetry(sample(ts=1060, edge=8, cloud=2, escalations=2, cost=0.8))
    # A redelivered copy: history deduplicated on (device, ts), the latest unchanged.
    assert not store.record_telemetry(sample(ts=1000, edge=5, cost=0.5))
    (d,) = store.devices()
    assert (d.device_id, d.model, d.provider, d.conditions) == (
        "d1",
        "smol",
        "cpu",
        ["outbox_unwritable"],
    )
    assert (d.totals.edge, d.totals.cloud, d.totals.escalations) == (8, 2, 2)
    assert d.totals.cost_avoided_usd == pytest.approx(0.8)
    assert d.telemetry == {"device_id": "d1", "ts": 1060}
    assert d.telemetry_ts == 1060
    assert d.runs == 1
    assert d.state is None  # no status yet
    assert d.last_seen is not None
    history = store.telemetry_history("d1")
    assert [h.ts for h in history] == [1000, 1060]
    assert history[1].requests == {"edge": 8, "cloud": 2, "edge-fallback": 0, "error": 1}
    assert history[1].latency_ms == {"edge": (80.0, 150.0), "cloud": (600.0, 900.0)}
    assert [h.ts for h in store.telemetry_history(since=1030)] == [1060]


def test_restart_adds_the_previous_runs_last_totals(store: RelayStore) -> None:
    store.record_telemetry(sample(ts=1000, started_at=900, edge=10, escalations=3, cost=1.0))
    store.record_telemetry(sample(ts=1100, started_at=900, edge=20, escalations=4, cost=2.0))
    # The agent restarts: counters start again from zero.
    store.record_telemetry(sample(ts=1300, started_at=1250, edge=1, escalations=1, cost=0.25))
    # A late copy of the old run changes nothing but the history.
    assert not store.record_telemetry(sample(ts=1150, started_at=900, edge=25, cost=2.5))
    store.record_telemetry(sample(ts=1400, started_at=1250, edge=4, escalations=2, cost=0.5))
    (d,) = store.devices()
    assert d.totals.edge == 24
    assert d.totals.escalations == 6
    assert d.totals.error == 2  # one error in each run
    assert d.totals.cost_avoided_usd == pytest.approx(2.5)
    assert d.runs == 2
    assert d.started_at == 1250
    # Windowed: samples from ts 1100 on. Run 900: 2.5 (the late copy) - 1.0; run 1250: 0.5.
    assert store.cost_avoided_since(1100) == {"d1": pytest.approx(2.0)}
    assert store.cost_avoided_since(1350, "d1") == {"d1": pytest.approx(0.25)}
    assert store.cost_avoided_since(5000) == {}


def test_status_online_offline_and_count(store: RelayStore) -> None:
    store.record_status(status("a", "online"))
    store.record_status(status("b", "online", live=False))
    assert store.count_online() == 2
    store.record_status(status("b", "offline"))
    assert store.count_online() == 1
    a, b = store.devices()
    assert (a.state, a.provider, a.version) == ("online", "cuda", "0.1.0")
    assert b.state == "offline"
    assert [d.device_id for d in store.devices("b")] == ["b"]
    # Telemetry then status on one device: both kept on one row.
    store.record_telemetry(sample("a", ts=2000, edge=3))
    (a,) = store.devices("a")
    assert (a.state, a.totals.edge, a.provider) == ("online", 3, "cpu")


def test_the_model_version_follows_the_model(store: RelayStore) -> None:
    def update(model: str | None, version: str | None) -> None:
        s = status("d")
        store.record_status(replace(s, model=model, model_version=version))

    def shown() -> tuple[str | None, str | None]:
        (d,) = store.devices("d")
        return d.model, d.model_version

    update("smol", "9f2c4e1a0b3d")  # installed over the air
    assert shown() == ("smol", "9f2c4e1a0b3d")
    update(None, None)  # the will: names no model, changes nothing
    assert shown() == ("smol", "9f2c4e1a0b3d")
    update("qwen", None)  # back to a configured model: no version, not the old one
    assert shown() == ("qwen", None)
    (d,) = store.devices("d")
    now = time.time()
    assert render.device_dict(d, now=now, stale_after_s=60)["model_version"] is None
    update("qwen", "0123456789ab")
    (d,) = store.devices("d")
    assert render.device_cells(d, now=now, stale_after_s=60)[3] == "qwen@0123456789ab"


def test_retained_status_does_not_pretend_the_device_was_just_seen(store: RelayStore) -> None:
    old = StatusUpdate(
        device_id="gone",
        state="online",
        received_at=time.time(),
        ts=time.time() - 86400,
        live=False,
        model=None,
        provider=None,
        version=None,
        conditions=None,
    )
    store.record_status(old)
    (d,) = store.devices()
    assert d.last_seen == pytest.approx(old.ts)


def test_fleet_migration_is_idempotent(store_url: str, tmp_path: Path) -> None:
    for _ in range(2):
        s = open_store(store_url)
        s.record_telemetry(sample(ts=1000))
        s.close()
    s = open_store(store_url)
    try:
        assert len(s.telemetry_history()) == 1
    finally:
        s.close()
