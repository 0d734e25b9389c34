"""The real edge-agent over mutual TLS: it connects with its certificate and answers.

Which broker does the agent talk to over TLS? Apps send requests to the agent on
the *device-local* broker (deploy/mosquitto/edge.conf, loopback, no TLS); on
the cloud broker the device may only send escalations/status and read answers,
and the cloud ACL deliberately grants no request/response topics: widening it
would let the cloud broker carry app traffic that has no business leaving the
device. The TLS case for the agent is a device-local broker that apps reach over
the LAN with fleet certificates. So this test runs the cloud broker's TLS
listener as shipped (mTLS, CN = username, CRL) with the authorization
``cloud-relay pki`` generates plus the device-local grants such a broker would
add (``DEVICE_LOCAL_GRANTS`` below), and checks the negative too: under the
generated cloud authorization alone nobody's request reaches the agent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_relay.authz import AclType
from edge_slm.topics import DeviceTopics, status_wildcard
from tests.security.conftest import (
    APP,
    DEVICE_A,
    NOT_AUTHORIZED,
    RELAY,
    FleetPki,
    TlsClient,
    render_cloud_conf,
)
from tests.support.agent import AgentProcess
from tests.support.broker import PrivateBroker

pytestmark = pytest.mark.broker

TOPICS = DeviceTopics("slm", DEVICE_A)
# Device-local broker over TLS: the agent (CN = device id) serves its requests ...
# ... and a LAN app of this device may ask it.
DEVICE_LOCAL_GRANTS = {
    DEVICE_A: [
        (AclType.SUBSCRIBE, TOPICS.request_filter()),
        (AclType.RECEIVE, TOPICS.request_filter()),
        (AclType.PUBLISH, TOPICS.response),
    ],
    APP: [
        (AclType.PUBLISH, TOPICS.request_filter()),
        (AclType.SUBSCRIBE, TOPICS.response),
        (AclType.RECEIVE, TOPICS.response),
    ],
}


def _broker(
    fleet: FleetPki, workdir: Path, grants: dict[str, list[tuple[AclType, str]]]
) -> PrivateBroker:
    workdir.mkdir()
    return PrivateBroker(
        extra_config=render_cloud_conf(fleet, workdir, grants=grants), workdir=workdir
    )


def _start_agent(port: int, fleet: FleetPki, tmp_path: Path) -> AgentProcess:
    a = fleet[DEVICE_A]
    return AgentProcess(
        broker_url=f"mqtts://127.0.0.1:{port}",
        device_id=DEVICE_A,
        log_path=tmp_path / "agent.log",
        EDGE_AGENT_MQTT__CA_FILE=str(fleet.ca),
        EDGE_AGENT_MQTT__CERT_FILE=str(a.cert),
        EDGE_AGENT_MQTT__KEY_FILE=str(a.key),
        EDGE_AGENT_CLOUD__ENABLED="false",
        EDGE_AGENT_OUTBOX__PATH=str(tmp_path / "outbox.db"),
    )


def _wait_online(watcher: TlsClient, agent: AgentProcess, timeout: float = 90.0) -> None:
    for msg in watcher.received(timeout):
        if json.loads(msg.payload).get("state") == "online":
            return
    raise AssertionError(f"no online status; agent log: {agent.log_path.read_text()[-3000:]}")


@pytest.fixture
def agent_on(
    fleet_pki: FleetPki, tmp_path: Path, model_dir: Path
) -> Iterator[tuple[PrivateBroker, AgentProcess, TlsClient]]:
    del model_dir
    with _broker(fleet_pki, tmp_path / "broker", DEVICE_LOCAL_GRANTS) as broker:
        watcher = TlsClient(broker.port, fleet_pki, fleet_pki[RELAY])  # relays read status
        assert watcher.connect()
        assert watcher.subscribe(status_wildcard(TOPICS.prefix)) == 1
        agent = _start_agent(broker.port, fleet_pki, tmp_path)
        try:
            _wait_online(watcher, agent)
            yield broker, agent, watcher
        finally:
            agent.close()
            watcher.close()


def test_agent_answers_over_mutual_tls(
    agent_on: tuple[PrivateBroker, AgentProcess, TlsClient], fleet_pki: FleetPki
) -> None:
    broker, agent, _watcher = agent_on
    app = TlsClient(broker.port, fleet_pki, fleet_pki[APP])
    assert app.connect()
    try:
        assert app.subscribe(TOPICS.response) == 1
        request = {
            "v": 1,
            "kind": "voice",
            "text": "turn on the kitchen lights",
            "task": "classify",
            "labels": ["lights_on", "lights_off", "play_music"],
            "id": uuid.uuid4().hex,
        }
        assert app.publish(TOPICS.request, json.dumps(request).encode()) in (0, 0x10)
        replies = app.received(60)
        assert replies, f"no reply; agent log: {agent.log_path.read_text()[-3000:]}"
        answer = json.loads(replies[0].payload)
        assert answer["ok"] is True, answer
        assert answer["source"] == "edge"
        # The broker saw the agent under its certificate's CN.
        log = broker.log_file.read_text()
        assert f"u'{DEVICE_A}'" in log
        assert f"as edge-agent-{DEVICE_A}" in log
    finally:
        app.close()
    assert agent.terminate() == 0


def test_shipped_cloud_acl_carries_no_app_traffic(fleet_pki: FleetPki, tmp_path: Path) -> None:
    """Without the device-local grants, an app cannot even send a request over the cloud."""
    with _broker(fleet_pki, tmp_path / "broker", {}) as broker:
        app = TlsClient(broker.port, fleet_pki, fleet_pki[APP])
        device = TlsClient(broker.port, fleet_pki, fleet_pki[DEVICE_A])
        assert app.connect()
        assert device.connect()
        try:
            assert device.subscribe(TOPICS.request_filter()) == NOT_AUTHORIZED
            assert app.publish(TOPICS.request, b"{}") == NOT_AUTHORIZED
            assert device.publish(TOPICS.response, b"{}") == NOT_AUTHORIZED
            assert device.received() == []
        finally:
            app.close()
            device.close()
