"""Device-local broker (edge.conf) bridged to the cloud broker (cloud.conf), both as shipped.

Exactly these topics cross: the device's escalations, retained status and telemetry out;
the cloud's answers, its config and desired model, the relays' online/offline and the
skill heads they push in.
"""

from __future__ import annotations

import time

import pytest

from edge_slm.topics import (
    DeviceTopics,
    relay_status,
    relay_status_filter,
    skill_head,
    skill_head_filter,
)
from tests.security.conftest import DEVICE_A, DEVICE_B, RELAY, FleetPki, LocalClient, TlsClient
from tests.support.broker import PrivateBroker

pytestmark = pytest.mark.broker

A = DeviceTopics("slm", DEVICE_A)
B = DeviceTopics("slm", DEVICE_B)


def test_escalation_goes_out_answer_comes_in(
    bridged: tuple[PrivateBroker, PrivateBroker, TlsClient],
) -> None:
    cloud, edge, relay = bridged
    assert f"u'{DEVICE_A}'" in cloud.log_file.read_text()  # the bridge is the device's CN
    app = LocalClient(edge.port)
    try:
        app.c.subscribe(A.cloud, 1)
        time.sleep(0.3)
        app.c.publish(A.escalation, b"case", qos=1).wait_for_publish(5)
        assert [(m.topic, m.payload) for m in relay.received(5)] == [(A.escalation, b"case")]
        assert relay.publish(A.cloud, b"answer") in (0, 0x10)
        deadline = time.monotonic() + 5
        while not app.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(m.topic, m.payload) for m in app.messages] == [(A.cloud, b"answer")]
    finally:
        app.close()


def test_a_relay_coming_online_is_heard_on_the_device(
    bridged: tuple[PrivateBroker, PrivateBroker, TlsClient],
) -> None:
    _cloud, edge, relay = bridged
    app = LocalClient(edge.port)  # stands in for the agent, which re-sends its outbox on it
    try:
        app.c.subscribe(relay_status_filter("slm"), 1)
        time.sleep(0.3)
        assert relay.publish(relay_status("slm", RELAY), b"online") in (0, 0x10)
        deadline = time.monotonic() + 5
        while not app.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(m.topic, m.payload) for m in app.messages] == [
            (relay_status("slm", RELAY), b"online")
        ]
    finally:
        app.close()


def test_a_pushed_skill_head_comes_in_retained(
    bridged: tuple[PrivateBroker, PrivateBroker, TlsClient],
) -> None:
    _cloud, edge, relay = bridged
    head = skill_head("slm", "home_intents", "minilm-l6-v2-int8")
    assert relay.publish(head, b"head-v1", retain=True) in (0, 0x10)
    time.sleep(0.5)  # the bridge carries it in and the edge broker retains it
    app = LocalClient(edge.port)  # the agent, subscribing after the push
    try:
        app.c.subscribe(skill_head_filter("slm", "minilm-l6-v2-int8"), 1)
        deadline = time.monotonic() + 5
        while not app.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(m.topic, m.payload) for m in app.messages] == [(head, b"head-v1")]
    finally:
        app.close()


def test_status_and_telemetry_go_out(
    bridged: tuple[PrivateBroker, PrivateBroker, TlsClient], fleet_pki: FleetPki
) -> None:
    cloud, edge, _relay = bridged
    fleet = TlsClient(cloud.port, fleet_pki, fleet_pki[RELAY], client_id="relay-fleet")
    assert fleet.connect()
    assert fleet.subscribe("slm/+/telemetry") == 1
    app = LocalClient(edge.port)  # stands in for the agent
    try:
        app.c.publish(A.status, b"online", qos=1, retain=True).wait_for_publish(5)
        app.c.publish(A.telemetry, b"counters", qos=1).wait_for_publish(5)
        assert [(m.topic, m.payload) for m in fleet.received(5)] == [(A.telemetry, b"counters")]
        # The status is retained in the cloud too: a relay starting later still learns it.
        late = TlsClient(cloud.port, fleet_pki, fleet_pki[RELAY], client_id="relay-late")
        assert late.connect()
        try:
            assert late.subscribe("slm/+/status") == 1
            assert [(m.topic, m.payload) for m in late.received(5)] == [(A.status, b"online")]
        finally:
            late.close()
    finally:
        app.close()
        fleet.close()


def test_nothing_else_crosses(
    bridged: tuple[PrivateBroker, PrivateBroker, TlsClient], fleet_pki: FleetPki
) -> None:
    cloud, edge, relay = bridged
    spy = TlsClient(cloud.port, fleet_pki, fleet_pki[RELAY], client_id="relay-spy")
    assert spy.connect()
    spy.subscribe("slm/+/status")
    app = LocalClient(edge.port)
    try:
        app.c.subscribe("#", 1)
        time.sleep(0.3)
        # Device-local traffic stays local.
        for topic in (A.request, A.response, B.status, B.telemetry, B.escalation, "other/topic"):
            app.c.publish(topic, b"local", qos=1).wait_for_publish(5)
        assert relay.received() == []
        assert spy.received(0.2) == []
        # Cloud traffic for another device never reaches this one.
        app.messages.clear()
        assert relay.publish(B.cloud, b"for-b") in (0, 0x10)
        time.sleep(1.0)
        assert [m.topic for m in app.messages] == []
    finally:
        app.close()
        spy.close()
