"""The cloud broker's authorization matrix, against a real mosquitto with real certificates.

The broker is ``deploy/mosquitto/cloud.conf`` as shipped, with the
``dynamic-security.json`` that ``cloud-relay pki`` wrote for the session PKI
(see ``render_cloud_conf``). Every denied row also asserts that nothing leaked to
a would-be victim; positive rows (first) prove the same observation would have
seen the message.

What mosquitto 2.0.11 with its dynamic security plugin does, as these tests pin down:

* a denied PUBLISH gets PUBACK 0x87 (MQTT v5 "Not authorized") and is dropped;
* a SUBSCRIBE outside one's grants gets SUBACK 0x87 and no subscription (with
  ``acl_file`` it was always granted, eclipse/mosquitto#2042, which let a device
  join the relays' share group and black-hole escalations:
  ``test_device_cannot_join_the_relay_share_group``); delivery is checked too;
* a certificate of the fleet CA whose CN has no entry in the broker's file
  connects but may do nothing;
* the client id is free-form: the username is the certificate CN whatever the
  client sends, and no rule depends on the client id, so a chosen client id gains
  nothing -- except taking over another client's *connection* (MQTT 5 §3.1.4:
  the broker disconnects the older one), which mosquitto cannot restrict.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud_relay.authz import DEFAULT_SHARE_GROUP
from cloud_relay.pki import CertKind, Pki
from edge_slm.topics import relay_status, relay_status_filter, skill_head, skill_head_filter
from tests.security.conftest import (
    DEVICE_A,
    DEVICE_B,
    EXPIRED,
    NOT_AUTHORIZED,
    RELAY,
    REVOKED,
    FleetPki,
    Identity,
    TlsClient,
    render_cloud_conf,
)
from tests.support.broker import PrivateBroker

pytestmark = pytest.mark.broker

SHARE = f"$share/{DEFAULT_SHARE_GROUP}/slm/+/escalation"
TELEMETRY_SHARE = f"$share/{DEFAULT_SHARE_GROUP}/slm/+/telemetry"
CONTROL = "$CONTROL/dynamic-security/v1"  # the plugin's admin API: nobody is granted it
# PUBACK 0x00 Success, or 0x10 "No matching subscribers" (MQTT 5 §3.4.2.1).
ACCEPTED = (0x00, 0x10)
MINILM, MPNET = "minilm-l6-v2-int8", "mpnet-base-v2-int8"  # two encoders' heads
Connect = Callable[..., TlsClient]


def esc(device: str) -> str:
    return f"slm/{device}/escalation"


def cloud(device: str) -> str:
    return f"slm/{device}/cloud"


def status(device: str) -> str:
    return f"slm/{device}/status"


def telemetry(device: str) -> str:
    return f"slm/{device}/telemetry"


@pytest.fixture
def relay(connect: Connect) -> TlsClient:
    client = connect(RELAY)
    assert client.subscribe(SHARE) == 1
    assert client.subscribe(TELEMETRY_SHARE) == 1
    assert client.subscribe("slm/+/status") == 1
    return client


# -- positive rows ------------------------------------------------------------------------


def test_device_escalation_reaches_relay_share_group(connect: Connect, relay: TlsClient) -> None:
    a = connect(DEVICE_A)
    assert a.publish(esc(DEVICE_A), b"case") in ACCEPTED
    got = relay.received()
    assert [(m.topic, m.payload) for m in got] == [(esc(DEVICE_A), b"case")]


def test_relay_answer_reaches_device(connect: Connect, relay: TlsClient) -> None:
    a = connect(DEVICE_A)
    assert a.subscribe(cloud(DEVICE_A)) == 1
    assert relay.publish(cloud(DEVICE_A), b"answer") in ACCEPTED
    assert [m.payload for m in a.received()] == [b"answer"]


def test_relay_online_reaches_devices(connect: Connect, relay: TlsClient) -> None:
    a = connect(DEVICE_A)
    assert a.subscribe(relay_status_filter("slm")) == 1
    assert relay.publish(relay_status("slm", RELAY), b"online") in ACCEPTED
    assert [m.payload for m in a.received()] == [b"online"]


def test_device_status_is_retained_for_relays(connect: Connect, relay: TlsClient) -> None:
    a = connect(DEVICE_A)
    assert a.publish(status(DEVICE_A), b"online", retain=True) in ACCEPTED
    assert [m.payload for m in relay.received()] == [b"online"]


def test_device_telemetry_reaches_relays(connect: Connect, relay: TlsClient) -> None:
    a = connect(DEVICE_A)
    assert a.publish(telemetry(DEVICE_A), b"counters") in ACCEPTED
    assert [(m.topic, m.payload) for m in relay.received()] == [(telemetry(DEVICE_A), b"counters")]


def test_only_the_relay_configures_a_device(connect: Connect, relay: TlsClient) -> None:
    a = connect(DEVICE_A)
    assert a.subscribe(f"slm/{DEVICE_A}/config") == 1
    assert relay.publish(f"slm/{DEVICE_A}/config", b"thresholds", retain=True) in ACCEPTED
    assert [m.payload for m in a.received()] == [b"thresholds"]
    b = connect(DEVICE_B)
    for topic in (f"slm/{DEVICE_A}/config", f"slm/{DEVICE_B}/config"):
        assert b.publish(topic, b"forged", retain=True) == NOT_AUTHORIZED
    assert a.received(0.3) == []


def test_only_the_relay_pushes_skill_heads(connect: Connect, relay: TlsClient) -> None:
    head = skill_head("slm", "home_intents", MINILM)
    other_encoder = skill_head("slm", "home_intents", MPNET)
    assert relay.publish(head, b"head-v1", retain=True) in ACCEPTED
    assert relay.publish(other_encoder, b"mpnet-v2", retain=True) in ACCEPTED
    a = connect(DEVICE_A)  # subscribes after the push: the retained head is delivered
    # Its own encoder's heads, granted by pattern: only that encoder's come.
    assert a.subscribe(skill_head_filter("slm", MINILM)) == 1
    assert [(m.topic, m.payload) for m in a.received()] == [(head, b"head-v1")]
    b = connect(DEVICE_B)
    assert b.publish(head, b"forged", retain=True) == NOT_AUTHORIZED
    assert b.publish(skill_head("slm", "other", MINILM), b"forged", retain=True) == NOT_AUTHORIZED
    assert a.received(0.3) == []
    # Nor was a forged head retained for a device subscribing later.
    late = connect(DEVICE_B, client_id="dev-b-late")
    assert late.subscribe(skill_head_filter("slm", MINILM)) == 1
    assert [m.payload for m in late.received()] == [b"head-v1"]
    # The pattern admits a name or `+` at the encoder level, nothing wider.
    for wider in ("slm/_skills/#", "slm/_skills/+/#", "slm/_skills/+/head/#"):
        assert late.subscribe(wider) == NOT_AUTHORIZED, wider


# -- publishing outside one's own topics ----------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        esc(DEVICE_B),
        status(DEVICE_B),
        telemetry(DEVICE_B),
        cloud(DEVICE_B),
        cloud(DEVICE_A),
        "slm/dev-a/request",
        relay_status("slm", RELAY),
        skill_head("slm", "home_intents", MINILM),
    ],
    ids=[
        "B-escalation",
        "B-status",
        "B-telemetry",
        "B-cloud",
        "own-cloud",
        "own-request",
        "relay-status",
        "skill-head",
    ],
)
def test_device_cannot_publish(connect: Connect, relay: TlsClient, topic: str) -> None:
    a = connect(DEVICE_A)
    b = connect(DEVICE_B)
    assert b.subscribe(cloud(DEVICE_B)) == 1
    victim_a = connect(RELAY, client_id="relay-1-watch")  # reads status, not share group
    assert victim_a.subscribe("slm/+/status") == 1
    assert victim_a.subscribe("slm/+/telemetry") == 1
    assert a.subscribe(cloud(DEVICE_A)) == 1
    assert a.publish(topic, b"forged", retain=topic.endswith("status")) == NOT_AUTHORIZED
    assert relay.received() == []
    assert b.received(0.2) == []
    assert a.received(0.2) == []
    assert victim_a.received(0.2) == []


def test_denied_retained_status_is_not_stored(connect: Connect) -> None:
    a = connect(DEVICE_A)
    assert a.publish(status(DEVICE_B), b"offline", retain=True) == NOT_AUTHORIZED
    late = connect(RELAY)
    assert late.subscribe("slm/+/status") == 1
    assert late.received() == []


def test_relay_cannot_forge_escalations_or_status(connect: Connect, relay: TlsClient) -> None:
    other = connect("relay-1", client_id="relay-1-b")
    assert other.publish(esc(DEVICE_A)) == NOT_AUTHORIZED
    assert other.publish(status(DEVICE_A), retain=True) == NOT_AUTHORIZED
    assert other.publish(telemetry(DEVICE_A)) == NOT_AUTHORIZED
    assert relay.received() == []


def test_nobody_reaches_the_plugin_admin_api(connect: Connect, relay: TlsClient) -> None:
    a = connect(DEVICE_A)
    payload = b'{"commands":[{"command":"createClient","username":"x"}]}'
    for client in (a, relay):
        assert client.publish(CONTROL, payload) == NOT_AUTHORIZED
        assert client.subscribe("$CONTROL/#") == NOT_AUTHORIZED


# -- subscribing outside one's own topics ---------------------------------------------------


@pytest.mark.parametrize(
    "topic_filter",
    [
        "slm/#",
        "#",
        "+/#",
        "$SYS/#",
        "$CONTROL/#",
        cloud(DEVICE_B),
        f"slm/{DEVICE_B}/config",
        "slm/+/cloud",
        "slm/+/escalation",
        "slm/+/status",
        "slm/+/telemetry",
        esc(DEVICE_A),
        SHARE,
        TELEMETRY_SHARE,
        f"$share/x/{cloud(DEVICE_B)}",
        f"$share/x/{cloud(DEVICE_A)}",
    ],
)
def test_device_reads_nothing_of_others(
    connect: Connect, relay: TlsClient, topic_filter: str
) -> None:
    a = connect(DEVICE_A)
    b = connect(DEVICE_B)
    # The plugin refuses the SUBSCRIBE itself; delivery is checked as well.
    assert a.subscribe(topic_filter) == NOT_AUTHORIZED
    assert b.publish(esc(DEVICE_B), b"b-case") in ACCEPTED
    assert b.publish(status(DEVICE_B), b"b-status", retain=True) in ACCEPTED
    assert b.publish(telemetry(DEVICE_B), b"b-telemetry") in ACCEPTED
    assert relay.publish(cloud(DEVICE_B), b"b-answer") in ACCEPTED
    # $SYS/broker/version & co. are retained: they would arrive at once if readable.
    assert a.received() == []


@pytest.mark.parametrize("share", [SHARE, TELEMETRY_SHARE])
def test_device_cannot_join_the_relay_share_group(
    connect: Connect, relay: TlsClient, share: str
) -> None:
    """The row acl_file could not close: a device in the relays' group is dealt every
    other message (round robin, MQTT 5 §4.8.2) and, unable to read it, black-holes it.
    The plugin refuses the SUBSCRIBE, so every message still reaches the relay."""
    intruder = connect(DEVICE_B)
    assert intruder.subscribe(share) == NOT_AUTHORIZED
    a = connect(DEVICE_A)
    topic = esc(DEVICE_A) if share == SHARE else telemetry(DEVICE_A)
    sent = [str(i).encode() for i in range(8)]
    for payload in sent:
        assert a.publish(topic, payload) in ACCEPTED
    got = relay.received()
    assert [(m.topic, m.payload) for m in got] == [(topic, p) for p in sent]
    assert intruder.received(0.2) == []


def test_fleet_certificate_without_broker_entry_gets_nothing(
    connect: Connect, relay: TlsClient, fleet_pki: FleetPki
) -> None:
    """Issued after the broker loaded its dynamic-security.json: TLS accepts the
    certificate, the plugin knows no such client. (Install the new file and restart.)"""
    pki = Pki(fleet_pki.dir)
    row = pki.issue(CertKind.DEVICE, "dev-late")
    assert row.key is not None
    assert '"username": "dev-late"' in pki.dynsec_path.read_text()  # the PKI's file has it
    fleet_pki.ids["dev-late"] = Identity(cert=pki.dir / row.cert, key=pki.dir / row.key)
    late = connect("dev-late")
    assert late.publish(esc("dev-late")) == NOT_AUTHORIZED
    assert late.subscribe(cloud("dev-late")) == NOT_AUTHORIZED
    assert relay.received() == []


# -- identities -----------------------------------------------------------------------------


def test_username_in_connect_is_ignored(connect: Connect, relay: TlsClient) -> None:
    a = connect(DEVICE_A, username=DEVICE_B)
    assert a.publish(esc(DEVICE_B)) == NOT_AUTHORIZED
    assert a.publish(esc(DEVICE_A), b"mine") in ACCEPTED
    assert [m.topic for m in relay.received()] == [esc(DEVICE_A)]


@pytest.mark.parametrize(
    ("client_id", "username"), [("#", None), ("+", None), (None, "#"), (None, "+"), ("#", "#")]
)
def test_wildcard_client_id_or_username_gains_nothing(
    connect: Connect, relay: TlsClient, client_id: str | None, username: str | None
) -> None:
    a = connect(DEVICE_A, client_id=client_id, username=username)
    b = connect(DEVICE_B)
    assert b.subscribe(cloud(DEVICE_B)) == 1
    a.subscribe("#")
    for topic in (esc(DEVICE_B), status(DEVICE_B), telemetry(DEVICE_B), cloud(DEVICE_B)):
        assert a.publish(topic) == NOT_AUTHORIZED
    assert b.publish(esc(DEVICE_B), b"b") in ACCEPTED
    assert relay.publish(cloud(DEVICE_B), b"b-answer") in ACCEPTED
    assert a.received() == []
    assert [m.payload for m in b.received(0.3)] == [b"b-answer"]


def test_client_id_of_another_device_grants_none_of_its_rights(
    connect: Connect, relay: TlsClient
) -> None:
    """A takes B's client id while B is connected: B is disconnected (MQTT 5 §3.1.4-3;
    mosquitto cannot bind client id to CN -- a known limitation: a device can knock
    another off-line if it knows its client id), but A does not become B."""
    b = connect(DEVICE_B, client_id=DEVICE_B)
    assert b.subscribe(cloud(DEVICE_B)) == 1
    a = connect(DEVICE_A, client_id=DEVICE_B)
    deadline = time.monotonic() + 5
    while b.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not b.connected, "session takeover: the older connection is closed"
    b._client.disconnect()  # stop paho's auto-reconnect from fighting A for the id
    b._client.loop_stop()
    # The taken-over session (B's subscription to slm/dev-b/cloud) delivers nothing to A.
    assert relay.publish(cloud(DEVICE_B), b"for-b") in ACCEPTED
    assert a.received() == []
    for topic in (esc(DEVICE_B), status(DEVICE_B), cloud(DEVICE_B)):
        assert a.publish(topic) == NOT_AUTHORIZED
    assert relay.received() == []


def test_no_certificate_refused(connect: Connect) -> None:
    connect(None, expect=False)


def test_revoked_certificate_refused(connect: Connect) -> None:
    connect(REVOKED, expect=False)


def test_expired_certificate_refused(connect: Connect) -> None:
    connect(EXPIRED, expect=False)


def test_server_certificate_is_no_client_certificate(connect: Connect, fleet_pki: FleetPki) -> None:
    # serverAuth EKU only: OpenSSL's ssl_client purpose check refuses it.
    fleet_pki.ids["server-as-client"] = fleet_pki.server
    connect("server-as-client", expect=False)


def test_certificate_of_another_ca_refused(
    connect: Connect, fleet_pki: FleetPki, tmp_path: Path
) -> None:
    rogue = Pki(tmp_path / "rogue")
    rogue.init_ca("rogue CA")
    row = rogue.issue(CertKind.DEVICE, DEVICE_B)
    assert row.key is not None
    fleet_pki.ids["rogue-b"] = Identity(cert=rogue.dir / row.cert, key=rogue.dir / row.key)
    connect("rogue-b", expect=False)


# -- revocation on a running broker -------------------------------------------------------


def _own_fleet(root: Path) -> tuple[Pki, FleetPki]:
    pki = Pki(root / "ca")
    pki.init_ca("reload CA")
    ids: dict[str, Identity] = {}
    for kind, cn, san in (
        (CertKind.SERVER, "localhost", ["localhost", "127.0.0.1"]),
        (CertKind.DEVICE, DEVICE_A, []),
        (CertKind.DEVICE, DEVICE_B, []),
    ):
        row = pki.issue(kind, cn, san=san)
        assert row.key is not None
        key = root / f"{cn}.key"
        key.write_bytes((pki.dir / row.key).read_bytes())
        ids[cn] = Identity(cert=pki.dir / row.cert, key=key)
    fleet = FleetPki(
        dir=pki.dir, ca=pki.ca_cert_path, crl=pki.crl_path, server=ids["localhost"], ids=ids
    )
    return pki, fleet


def _connects(port: int, fleet: FleetPki, cn: str) -> bool:
    client = TlsClient(port, fleet, fleet[cn])
    try:
        return client.connect(timeout=3)
    finally:
        client.close()


def test_revocation_takes_effect_on_sighup(tmp_path: Path) -> None:
    """mosquitto 2.0.11 re-reads the listener's TLS files, crlfile included, on SIGHUP:
    after ``pki revoke``, copy crl.pem to the broker and ``systemctl reload mosquitto``.
    Until then the loaded CRL is the old one. (Whether a reload drops a revoked client's
    established connection is not checked here; restart the broker to be sure.)"""
    pki, fleet = _own_fleet(tmp_path)
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = PrivateBroker(extra_config=render_cloud_conf(fleet, workdir), workdir=workdir)
    with broker:
        assert _connects(broker.port, fleet, DEVICE_A)
        pki.revoke(DEVICE_A)
        assert _connects(broker.port, fleet, DEVICE_A), "the loaded CRL is still the old one"
        assert broker._proc is not None
        broker._proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert not _connects(broker.port, fleet, DEVICE_A)
        assert _connects(broker.port, fleet, DEVICE_B)


def test_broker_authorization_changes_on_restart(tmp_path: Path) -> None:
    """The procedure of README "Security model": ``pki issue-device`` / ``pki revoke``
    rewrite dynamic-security.json; installed on the broker, it applies from the next
    restart (the 2.0.11 plugin ignores SIGHUP). A revoked device then has no rights
    even on a broker still holding the old CRL."""
    pki, fleet = _own_fleet(tmp_path)
    workdir = tmp_path / "broker"
    workdir.mkdir()
    stale_crl = tmp_path / "stale-crl.pem"
    stale_crl.write_bytes(fleet.crl.read_bytes())

    def install() -> str:  # copy the PKI's current files to the broker, as an operator would
        return render_cloud_conf(fleet, workdir, crl=stale_crl)

    broker = PrivateBroker(extra_config=install(), workdir=workdir)
    with broker:
        row = pki.issue(CertKind.DEVICE, "dev-new")
        assert row.key is not None
        fleet.ids["dev-new"] = Identity(cert=pki.dir / row.cert, key=pki.dir / row.key)
        pki.revoke(DEVICE_A)
        install()
        assert broker._proc is not None
        broker._proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert _publishes(broker.port, fleet, "dev-new") == NOT_AUTHORIZED, "not before restart"
        assert _publishes(broker.port, fleet, DEVICE_A) in ACCEPTED
        broker.restart()
        assert _publishes(broker.port, fleet, "dev-new") in ACCEPTED
        assert _publishes(broker.port, fleet, DEVICE_A) == NOT_AUTHORIZED  # old CRL: connects
        assert _publishes(broker.port, fleet, DEVICE_B) in ACCEPTED


def _publishes(port: int, fleet: FleetPki, cn: str) -> int:
    """PUBACK reason code for ``cn`` publishing its own escalation."""
    client = TlsClient(port, fleet, fleet[cn])
    try:
        assert client.connect(timeout=3), cn
        return client.publish(esc(cn))
    finally:
        client.close()
