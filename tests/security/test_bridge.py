"""Device-local broker (edge.conf) bridged to the cloud broker (cloud.conf), both as shipped.

Exactly four topics cross: the device's escalations, retained status and telemetry out,
the cloud's answers in.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_slm.topics import DeviceTopics
from tests.security.conftest import (
    DEVICE_A,
    DEVICE_B,
    RELAY,
    FleetPki,
    TlsClient,
    render_cloud_conf,
    render_edge_conf,
)
from tests.support.broker import PrivateBroker

pytestmark = pytest.mark.broker

A = DeviceTopics("slm", DEVICE_A)
B = DeviceTopics("slm", DEVICE_B)


class LocalClient:
    """A plain app on the device's loopback listener."""

    def __init__(self, port: int) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self.c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"app-{time.monotonic_ns()}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.c.on_message = lambda _c, _u, m: self.messages.append(m)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def bridged(
    fleet_pki: FleetPki, tmp_path: Path
) -> Iterator[tuple[PrivateBroker, PrivateBroker, TlsClient]]:
    cloud_dir, edge_dir = tmp_path / "cloud", tmp_path / "edge"
    cloud_dir.mkdir()
    edge_dir.mkdir()
    cloud = PrivateBroker(extra_config=render_cloud_conf(fleet_pki, cloud_dir), workdir=cloud_dir)
    with cloud:
        relay = TlsClient(cloud.port, fleet_pki, fleet_pki[RELAY])
        assert relay.connect()
        assert relay.subscribe("$share/relays/slm/+/escalation") == 1
        conf = render_edge_conf(fleet_pki, edge_dir, device_id=DEVICE_A, cloud_port=cloud.port)
        with PrivateBroker(extra_config=conf, workdir=edge_dir) as edge:
            # The bridge is up once the cloud broker logs the device's connection.
            deadline = time.monotonic() + 20
            while f"as {DEVICE_A} " not in cloud.log_file.read_text():
                assert time.monotonic() < deadline, edge.log_file.read_text()
                time.sleep(0.1)
            time.sleep(0.5)  # the bridge's SUBSCRIBE to slm/dev-a/cloud
            try:
                yield cloud, edge, relay
            finally:
                relay.close()


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
