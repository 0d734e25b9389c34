"""A device broker and a cloud broker joined by the shipped bridge, for fault tests.

Both brokers run the deployed configs (``deploy/mosquitto/edge.conf`` and
``cloud.conf`` with its ACL), rendered by the same functions tests/security uses,
with a per-test PKI from :mod:`cloud_relay.pki`: the device broker bridges to the
cloud broker over mutual TLS exactly as on a device, and the relay connects to the
cloud broker with its own certificate. Nothing is downgraded to plain TCP.

The link is cut by stopping the cloud broker (SIGTERM: it saves its persistence
file, as a broker being restarted or a cloud outage would) and healed by starting
it again on the same port from the same directory. The bridge then reconnects
with its shipped ``restart_timeout 5 120`` backoff, so a heal takes seconds to
about two minutes, as it would in the field.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from cloud_relay.pki import CertKind, Pki
from tests.security.conftest import FleetPki, Identity, render_cloud_conf, render_edge_conf
from tests.support.app import AppClient
from tests.support.broker import PrivateBroker

RELAY_CN = "relay-1"  # a relay: the PKI's dynamic-security.json gives it the relay role
LINK_CUT_METHOD = "cloud broker stopped (SIGTERM) and restarted on the same port"


def make_pki(root: Path, device_id: str) -> FleetPki:
    """A fleet CA with a server certificate, one device and relay-1."""
    pki = Pki(root / "ca")
    pki.init_ca("fault-test fleet CA")
    ids: dict[str, Identity] = {}

    def add(kind: CertKind, cn: str, san: tuple[str, ...] = ()) -> Identity:
        row = pki.issue(kind, cn, san=san)
        assert row.key is not None
        ids[cn] = Identity(cert=pki.dir / row.cert, key=pki.dir / row.key)
        return ids[cn]

    server = add(CertKind.SERVER, "localhost", san=("localhost", "127.0.0.1"))
    add(CertKind.DEVICE, device_id)
    add(CertKind.RELAY, RELAY_CN)
    return FleetPki(dir=pki.dir, ca=pki.ca_cert_path, crl=pki.crl_path, server=server, ids=ids)


@dataclass
class BridgedBrokers:
    """``edge`` (apps and the agent, plain loopback) -> TLS bridge -> ``cloud`` (relays)."""

    fleet: FleetPki
    device_id: str
    cloud: PrivateBroker
    edge: PrivateBroker

    @classmethod
    def start(cls, root: Path, device_id: str) -> BridgedBrokers:
        fleet = make_pki(root / "pki", device_id)
        cloud_dir, edge_dir = root / "cloud", root / "edge"
        cloud_dir.mkdir()
        edge_dir.mkdir()
        cloud = PrivateBroker(
            extra_config=render_cloud_conf(fleet, cloud_dir), workdir=cloud_dir
        ).start()
        conf = render_edge_conf(fleet, edge_dir, device_id=device_id, cloud_port=cloud.port)
        try:
            edge = PrivateBroker(extra_config=conf, workdir=edge_dir).start()
        except Exception:
            cloud.stop()
            raise
        brokers = cls(fleet=fleet, device_id=device_id, cloud=cloud, edge=edge)
        brokers.wait_bridge_up(since=0)
        return brokers

    # -- the relay's side -------------------------------------------------------

    @property
    def cloud_url(self) -> str:
        return f"mqtts://localhost:{self.cloud.port}"

    def relay_env(self) -> dict[str, str]:
        """``CLOUD_RELAY_*`` settings for a relay with relay-1's certificate."""
        relay = self.fleet[RELAY_CN]
        return {
            "CLOUD_RELAY_MQTT__CA_FILE": str(self.fleet.ca),
            "CLOUD_RELAY_MQTT__CERT_FILE": str(relay.cert),
            "CLOUD_RELAY_MQTT__KEY_FILE": str(relay.key),
        }

    # -- the link -----------------------------------------------------------------

    def _cloud_log(self) -> str:
        path = self.cloud.log_file
        return path.read_text(errors="replace") if path.exists() else ""

    def bridge_connects(self) -> int:
        """How many times the bridge (username = the device's CN) has connected."""
        return self._cloud_log().count(f" as {self.device_id} ")

    def relay_connects(self) -> int:
        return self._cloud_log().count(f"u'{RELAY_CN}'")

    def wait_bridge_up(self, since: int, timeout: float = 30.0) -> float:
        """Wait for bridge connection number ``since + 1``; return the seconds waited."""
        start = time.monotonic()
        while self.bridge_connects() <= since:
            if time.monotonic() - start > timeout:
                raise AssertionError(
                    f"bridge not up within {timeout}s:\n{self.edge.log_file.read_text()[-2000:]}"
                )
            time.sleep(0.1)
        time.sleep(0.3)  # the bridge's SUBSCRIBE to slm/<id>/cloud follows the CONNACK
        return time.monotonic() - start

    def wait_relay_up(self, since: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.relay_connects() <= since:
            assert time.monotonic() < deadline, f"relay not connected within {timeout}s"
            time.sleep(0.1)
        time.sleep(0.3)  # its $share SUBSCRIBE

    def cut(self) -> None:
        self.cloud.stop()

    def heal(self) -> None:
        self.cloud.start()

    def close(self) -> None:
        self.edge.stop()
        self.cloud.stop()


# -- app-side timing (shared by the fault tests) ------------------------------------------


@dataclass(frozen=True)
class TimedReply:
    at: float  # time.monotonic() when the app received it
    payload: dict[str, Any]


class TimedApp(AppClient):
    """An :class:`AppClient` that stamps each reply on arrival and files it by request id."""

    def __init__(self, broker_port: int) -> None:
        self.sent: dict[str, float] = {}
        self.by_id: dict[str, list[TimedReply]] = defaultdict(list)
        self._lock = threading.Lock()
        super().__init__(broker_port)
        self.reply_topic = f"apps/{uuid.uuid4().hex}/reply"
        self.subscribe(self.reply_topic)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        reply = TimedReply(time.monotonic(), json.loads(msg.payload))
        with self._lock:
            self.by_id[str(reply.payload.get("id"))].append(reply)

    def ask(self, request_topic: str, payload: dict[str, Any]) -> None:
        """Publish ``payload`` (its ``id`` set) with ``sent_at`` stamped now."""
        with self._lock:
            self.sent[payload["id"]] = time.monotonic()
        self.publish(
            request_topic, {**payload, "sent_at": time.time()}, response_topic=self.reply_topic
        )

    def replies_for(self, request_id: str) -> list[TimedReply]:
        with self._lock:
            return list(self.by_id.get(request_id, []))

    def first(self, request_id: str) -> TimedReply | None:
        """The first non-correction reply."""
        found = [r for r in self.replies_for(request_id) if not r.payload.get("supersedes")]
        return found[0] if found else None

    def latency_s(self, request_id: str) -> float | None:
        first = self.first(request_id)
        return None if first is None else first.at - self.sent[request_id]

    def wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
            time.sleep(0.1)


def outbox_state(path: Path) -> tuple[int, dict[str, int]]:
    """(rows, counters) of an agent's SQLite outbox, read directly (WAL allows it)."""
    if not path.exists():
        return 0, {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
    finally:
        db.close()
    return int(rows), {str(k): int(v) for k, v in counters.items()}


def outbox_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return {str(r[0]) for r in db.execute("SELECT request_id FROM outbox").fetchall()}
    finally:
        db.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); no interpolation on small samples."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def relay_rows(db: str) -> list[dict[str, Any]]:
    """``cloud-relay logs --json``: the relay's log rows, as an operator reads them."""
    out = subprocess.run(
        [sys.executable, "-m", "cloud_relay", "logs", "--db", db, "--json", "--limit", "10000"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
