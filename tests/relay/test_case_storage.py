"""The escalation's case is logged exactly as received (redacted on the device), or not at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_relay.store import LogQuery, RelayStore, open_store
from tests.relay.faultserver import FaultServer, Step
from tests.relay.test_handling import Rig

# What a device's redactor leaves: placeholders, plus text that must not be "normalized".
REDACTED = "Call [PHONE] or mail [EMAIL]  about\tthe [IBAN] bill — naïve café ✓ <b>&amp;</b>"
SENSOR = [{"name": "meter/kwh", "value": 12.5, "unit": "kWh", "ts": "2025-06-01T12:00:00Z"}]


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer().running() as s:
        s.default = Step(content="b")
        yield s


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RelayStore]:
    s = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    yield s
    s.close()


def test_stored_text_is_exactly_the_redacted_text_received(
    server: FaultServer, store: RelayStore
) -> None:
    rig = Rig(server, store)
    rig.send(
        rid="c1",
        task="classify",
        text=REDACTED,
        labels=["a", "b"],
        sensor=SENSOR,
        edge={"label": "a", "answer": "a", "confidence": 0.3, "model": "smol-v2"},
    )
    (row,) = store.logs(LogQuery())
    assert row.text == REDACTED
    assert row.labels == ["a", "b"]
    assert row.sensor == SENSOR
    assert row.edge_model == "smol-v2"
    assert (row.cloud_label, row.edge_label, row.agreement) == ("b", "a", False)


def test_store_prompts_off_keeps_no_case(server: FaultServer, store: RelayStore) -> None:
    rig = Rig(server, store)
    rig.settings.store_prompts = False
    rig.send(rid="c2", text=REDACTED, sensor=SENSOR)
    (row,) = store.logs(LogQuery())
    assert (row.text, row.labels, row.sensor) == (None, None, None)
    assert row.outcome is not None


def test_store_prompts_off_keeps_no_schema_but_the_answers(
    server: FaultServer, store: RelayStore
) -> None:
    """The schema (like an act request's tools) is part of the case; the objects are answers,
    logged like the answer texts."""
    server.default = Step(content='{"room":"bedroom"}')
    rig = Rig(server, store)
    rig.settings.store_prompts = False
    schema = {"type": "object", "properties": {"room": {"type": "string"}}}
    edge = {"answer": '{"room":"bed"}', "data": {"room": "bed"}, "confidence": 0.2, "model": "m"}
    rig.send(rid="c3", task="extract", text=REDACTED, schema=schema, edge=edge)
    (row,) = store.logs(LogQuery())
    assert (row.text, row.json_schema) == (None, None)
    assert (row.edge_data, row.cloud_data) == ({"room": "bed"}, {"room": "bedroom"})
