"""Real certificates and real mosquitto brokers built from ``deploy/mosquitto``.

The session PKI issues everything the authorization matrix needs. Broker
configs are *rendered* from the deployed files (paths and port substituted), so
the tests exercise exactly what ships; a missing substitution fails loudly
instead of silently testing something else.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import queue
import shutil
import ssl
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from cloud_relay.authz import AclType
from cloud_relay.pki import CertKind, Pki
from tests.support.broker import PrivateBroker

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "mosquitto"
CLOUD_CONF = DEPLOY / "cloud.conf"
EDGE_CONF = DEPLOY / "edge.conf"

DEVICE_A = "dev-a"
DEVICE_B = "dev-b"
RELAY = "relay-1"
EXPIRED = "dev-expired"
REVOKED = "dev-revoked"
APP = "app-1"  # a LAN app of device A (test_agent_tls)
NOT_AUTHORIZED = 0x87
QUIET_S = 1.0  # how long "nothing arrives" is watched; positive rows arrive in ms


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class FleetPki:
    dir: Path
    ca: Path
    crl: Path
    server: Identity
    ids: dict[str, Identity] = field(default_factory=dict)

    def __getitem__(self, cn: str) -> Identity:
        return self.ids[cn]


@pytest.fixture(scope="session")
def fleet_pki(tmp_path_factory: pytest.TempPathFactory) -> FleetPki:
    root = tmp_path_factory.mktemp("pki")
    pki = Pki(root / "ca")
    pki.init_ca("test fleet CA")
    keep = root / "keys"  # copies of keys the PKI deletes on revoke
    keep.mkdir()
    ids: dict[str, Identity] = {}

    def add(kind: CertKind, cn: str, **kw: Any) -> Identity:
        row = pki.issue(kind, cn, **kw)
        assert row.key is not None
        key = keep / f"{cn}.key"
        shutil.copy2(pki.dir / row.key, key)
        ids[cn] = Identity(cert=pki.dir / row.cert, key=key)
        return ids[cn]

    server = add(CertKind.SERVER, "localhost", san=["localhost", "127.0.0.1"])
    for cn in (DEVICE_A, DEVICE_B):
        add(CertKind.DEVICE, cn)
    add(CertKind.RELAY, RELAY)
    add(CertKind.DEVICE, APP)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    add(CertKind.DEVICE, EXPIRED, days=1, not_before=past)
    add(CertKind.DEVICE, REVOKED)
    pki.revoke(REVOKED)
    return FleetPki(dir=pki.dir, ca=pki.ca_cert_path, crl=pki.crl_path, server=server, ids=ids)


def _substitute(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"{old!r} not found in the deployed config: update the test renderer"
        text = text.replace(old, new)
    return text


def render_cloud_conf(
    fleet: FleetPki,
    workdir: Path,
    *,
    grants: Mapping[str, Sequence[tuple[AclType, str]]] | None = None,
    crl: Path | None = None,
) -> str:
    """``deploy/mosquitto/cloud.conf`` for a PrivateBroker in ``workdir``.

    PrivateBroker writes the ``listener <free port> 127.0.0.1`` line; the deployed
    file's own ``listener 8883`` line is dropped so every listener option of the
    deployed file applies to that one. ``log_dest`` lines are dropped (the broker
    logs to its own file). Authorization is the fleet PKI's own
    ``dynamic-security.json`` as ``cloud-relay pki`` wrote it, plus ``grants``
    (username -> ACLs, in a role of their own) where a test needs a documented
    addition.
    """
    dynsec = json.loads(Pki(fleet.dir).dynsec_path.read_text())
    for username, acls in (grants or {}).items():
        (client,) = [c for c in dynsec["clients"] if c["username"] == username]
        role = f"test-extra-{username}"
        client["roles"].append({"rolename": role})
        dynsec["roles"].append(
            {
                "rolename": role,
                "acls": [
                    {"acltype": kind.value, "topic": topic, "priority": 0, "allow": True}
                    for kind, topic in acls
                ],
            }
        )
    dynsec_file = workdir / "dynamic-security.json"
    dynsec_file.write_text(json.dumps(dynsec, indent=2))
    text = _substitute(
        CLOUD_CONF.read_text(),
        {
            "\nlistener 8883\n": "\n",
            "/etc/mosquitto/certs/ca.crt": str(fleet.ca),
            "/etc/mosquitto/certs/server.crt": str(fleet.server.cert),
            "/etc/mosquitto/certs/server.key": str(fleet.server.key),
            "/etc/mosquitto/certs/crl.pem": str(crl or fleet.crl),
            "/etc/mosquitto/dynamic-security.json": str(dynsec_file),
            "/var/lib/mosquitto/": f"{workdir}/",
        },
    )
    return _for_test_process(text)


def render_edge_conf(fleet: FleetPki, workdir: Path, *, device_id: str, cloud_port: int) -> str:
    """``deploy/mosquitto/edge.conf`` for device ``device_id``, bridged to a test cloud broker.

    As for the cloud, PrivateBroker supplies the loopback listener on a free port.
    """
    device = fleet[device_id]
    text = _substitute(
        EDGE_CONF.read_text(),
        {
            "\nlistener 1883 127.0.0.1\n": "\n",
            "CLOUD_HOST:8883": f"localhost:{cloud_port}",
            "DEVICE_ID": device_id,
            "/etc/mosquitto/certs/ca.crt": str(fleet.ca),
            "/etc/mosquitto/certs/device.crt": str(device.cert),
            "/etc/mosquitto/certs/device.key": str(device.key),
            "/var/lib/mosquitto/": f"{workdir}/",
        },
    )
    return _for_test_process(text)


def _for_test_process(text: str) -> str:
    lines = [ln for ln in text.splitlines() if not ln.startswith("log_dest")]
    # Started as root, mosquitto drops to the `mosquitto` user, which cannot enter
    # pytest's 0700 temporary directories; `user` names the account to "drop" to,
    # so under root stay root. Ignored when not started as root.
    lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def cloud_broker(fleet_pki: FleetPki, tmp_path: Path) -> Iterator[PrivateBroker]:
    workdir = tmp_path / "cloud"
    workdir.mkdir()
    extra = render_cloud_conf(fleet_pki, workdir)
    with PrivateBroker(extra_config=extra, workdir=workdir) as broker:
        yield broker


class TlsClient:
    """A paho MQTT v5 client with a fleet certificate, recording what the broker says."""

    def __init__(
        self,
        port: int,
        fleet: FleetPki,
        identity: Identity | None,
        *,
        client_id: str | None = None,
        username: str | None = None,
    ) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connack: ReasonCode | None = None
        self.disconnects: list[ReasonCode] = []
        self._connected = threading.Event()
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._pubacks: dict[int, ReasonCode] = {}
        self._acked = threading.Condition()
        c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"c-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if username is not None:
            c.username_pw_set(username)
        c.tls_set(
            ca_certs=str(fleet.ca),
            certfile=str(identity.cert) if identity else None,
            keyfile=str(identity.key) if identity else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        self._client = c
        self.port = port

    # -- callbacks (paho network thread) -------------------------------------

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.connack = rc
        if not rc.is_failure:
            self._connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.disconnects.append(rc)
        self._connected.clear()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        with self._acked:
            self._subacks[mid] = rcs
            self._acked.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._acked:
            self._pubacks[mid] = rc
            self._acked.notify_all()

    # -- operations ------------------------------------------------------------

    def connect(self, timeout: float = 5.0) -> bool:
        """Whether a successful CONNACK arrives; a refused handshake returns False."""
        try:
            self._client.connect("127.0.0.1", self.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return False
        self._client.loop_start()
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(self, topic: str, qos: int = 1) -> int:
        """SUBACK reason code (value) for ``topic``."""
        _rc, mid = self._client.subscribe(topic, qos)
        assert mid is not None
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self._subacks, 5), f"no SUBACK: {topic}"
            return int(self._subacks[mid][0].value)

    def publish(
        self, topic: str, payload: bytes = b"x", *, qos: int = 1, retain: bool = False
    ) -> int:
        """PUBACK reason code (value); 0 = accepted, 0x87 = not authorized."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        with self._acked:
            assert self._acked.wait_for(lambda: info.mid in self._pubacks, 5), f"no PUBACK: {topic}"
            return int(self._pubacks[info.mid].value)

    def received(self, timeout: float = QUIET_S) -> list[paho.MQTTMessage]:
        """Everything delivered within ``timeout``."""
        got: list[paho.MQTTMessage] = []
        try:
            got.append(self.messages.get(timeout=timeout))
            while True:
                got.append(self.messages.get(timeout=0.2))
        except queue.Empty:
            return got

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def connect(cloud_broker: PrivateBroker, fleet_pki: FleetPki) -> Iterator[Any]:
    """``connect(cn | None, client_id=..., username=...) -> TlsClient`` on the cloud broker."""
    made: list[TlsClient] = []

    def make(
        cn: str | None,
        *,
        client_id: str | None = None,
        username: str | None = None,
        expect: bool = True,
        port: int | None = None,
    ) -> TlsClient:
        client = TlsClient(
            port or cloud_broker.port,
            fleet_pki,
            fleet_pki[cn] if cn else None,
            client_id=client_id,
            username=username,
        )
        made.append(client)
        ok = client.connect()
        assert ok is expect, f"{cn}: connected={ok}, expected {expect} (CONNACK {client.connack})"
        return client

    yield make
    for client in made:
        client.close()


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
