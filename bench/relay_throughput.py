"""Relay throughput: escalations per second through ``cloud-relay run``, and added latency.

Setup, all on loopback in one process tree: a private mosquitto (TCP_NODELAY), an
instant OpenAI-compatible stub (``bench/_stub_llm.py``: raw asyncio, keep-alive, one
fixed completion), and 1 or 2 real ``python -m cloud_relay run`` processes in one
shared-subscription group, with the log store in SQLite (a file, the default) or
PostgreSQL (a fresh database on 127.0.0.1:5432, dropped afterwards). The relays run
with ``CLOUD_RELAY_LIMITS__RATE_PER_MINUTE=0`` and ``DAILY_TOKENS=0`` (no per-device
limits), a raised ``MAX_CONCURRENCY`` and ``QUEUE_SIZE``, and their normal INFO JSON log.

The driver (this process, one paho MQTT v5 connection, TCP_NODELAY) publishes
pre-built ``Escalation`` payloads at QoS 1 on ``slm/<device>/escalation`` from 50
device ids, each with Correlation Data = request id and the ``device_id`` user
property, exactly as the agent does, and takes every ``CloudReply`` on ``slm/+/cloud``.

* **Open loop at a fixed rate** (``--rates``, ``--duration`` s each): latency =
  reply arrival - publish call; *added latency* = that minus the stub's median service
  time in the same run (it is microseconds: the stub is instant).
* **Saturation:** ``--saturate`` escalations as fast as possible with at most
  ``--window`` unanswered; completed CloudReplies / (last reply - first publish).
* **Baseline in the same run:** an echo responder (one paho client in the same share
  group, answering each escalation with a fixed CloudReply, no store, no HTTP): the
  ceiling of this driver + broker on this machine.

CPU is read from /proc for every process of the tree, so each row also gives the
relay's CPU milliseconds per escalation, and the CPU other people's work took.
``--profile`` adds one saturation run of a single SQLite relay under ``py-spy record``
and prints where its threads spend their time (inclusive share per function);
``--profile-gil`` samples only the thread holding the GIL, i.e. where the CPU goes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench._common import (
    RESULTS_DIR,
    cpu_busy_s,
    percentile,
    proc_cpu_s,
    report,
    table,
    wait_for_quiet,
)
from edge_slm.topics import DeviceTopics, escalation_subscription, fleet_filter
from tests.relay.device import escalation
from tests.support.broker import PrivateBroker, free_port
from tests.support.procs import Relay

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
#: The relay's default topic prefix, which the relay under test runs with.
PREFIX = "slm"
DEVICES = [f"bench-dev-{i:02d}" for i in range(50)]
TARGET_PER_S = 1000.0
TARGET_P99_MS = 20.0
ECHO_REPLY = json.dumps(
    {"v": 1, "id": "x", "device_id": "x", "ok": True, "outcome": "ok", "latency_ms": 0.0}
).encode()


def _nodelay(_c: Any, _u: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _client(port: int, name: str) -> paho.Client:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{uuid.uuid4().hex[:6]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.on_socket_open = _nodelay
    client.max_inflight_messages_set(2000)  # paho's default of 20 would pace the driver
    client.max_queued_messages_set(0)
    return client


# -- echo responder (baseline) -------------------------------------------------


def run_echo(port: int, group: str) -> None:
    client = _client(port, "bench-echo")

    def on_message(c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        device = msg.topic.split("/")[1]
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = getattr(msg.properties, "CorrelationData", b"")
        c.publish(DeviceTopics(PREFIX, device).cloud, ECHO_REPLY, qos=1, properties=props)

    client.on_message = on_message
    client.on_connect = lambda c, *_a: c.subscribe(escalation_subscription(PREFIX, group), 1)
    client.connect("127.0.0.1", port)
    print("echo ready", flush=True)
    client.loop_forever()


# -- driver ----------------------------------------------------------------------


class Driver:
    def __init__(self, port: int) -> None:
        self._client = _client(port, "bench-driver")
        self.arrivals: list[tuple[float, bytes, bytes]] = []
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_a: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        self._client.subscribe(fleet_filter(PREFIX, "cloud"), 1)
        if not subscribed.wait(5):
            raise TimeoutError(f"no SUBACK for {fleet_filter(PREFIX, 'cloud')}")

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        corr = getattr(msg.properties, "CorrelationData", b"") or b""
        self.arrivals.append((time.perf_counter(), bytes(corr), bytes(msg.payload)))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @staticmethod
    def build(n: int) -> list[tuple[str, bytes, Properties, bytes]]:
        """Pre-built escalations: the publishing loop only calls publish()."""
        msgs = []
        for i in range(n):
            device = DEVICES[i % len(DEVICES)]
            rid = uuid.uuid4().hex
            body = escalation(device, rid, deadline_ms=600_000, expires_at=time.time() + 900)
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = rid.encode()
            props.MessageExpiryInterval = 900
            props.UserProperty = [("device_id", device)]
            topic = DeviceTopics(PREFIX, device).escalation
            msgs.append((topic, json.dumps(body).encode(), props, rid.encode()))
        return msgs

    def run(self, n: int, *, rate: float | None, window: int) -> dict[str, Any]:
        msgs = self.build(n)
        self.arrivals = []
        sent: dict[bytes, float] = {}
        t0 = time.perf_counter()
        for i, (topic, payload, props, corr) in enumerate(msgs):
            if rate:
                due = t0 + i / rate
                while (wait := due - time.perf_counter()) > 0:
                    time.sleep(wait)
            while len(sent) - len(self.arrivals) >= window:
                time.sleep(0.0002)
            sent[corr] = time.perf_counter()
            self._client.publish(topic, payload, qos=1, properties=props)
        publish_s = time.perf_counter() - t0
        deadline = time.monotonic() + max(15.0, n / 200)
        while len(self.arrivals) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # catch duplicates, if any
        return self._analyse(sent, list(self.arrivals), publish_s)

    @staticmethod
    def _analyse(
        sent: dict[bytes, float], arrivals: list[tuple[float, bytes, bytes]], publish_s: float
    ) -> dict[str, Any]:
        rtts: list[float] = []
        relay_ms: list[float] = []
        outcomes: collections.Counter[str] = collections.Counter()
        seen: set[bytes] = set()
        last = 0.0
        for when, corr, payload in arrivals:
            if corr not in sent or corr in seen:
                outcomes["duplicate_or_foreign"] += 1
                continue
            seen.add(corr)
            reply = json.loads(payload)
            outcomes[reply.get("outcome", "?") if reply.get("ok") else "error"] += 1
            if reply.get("ok"):
                rtts.append((when - sent[corr]) * 1000)
                if reply.get("latency_ms") is not None:
                    relay_ms.append(float(reply["latency_ms"]))
                last = max(last, when)
        first = min(sent.values())
        completed = len(rtts)
        return {
            "sent": len(sent),
            "completed_ok": completed,
            "missing": len(sent) - len(seen),
            "outcomes": dict(outcomes),
            "offered_per_s": len(sent) / publish_s,
            "completed_per_s": completed / (last - first) if completed else 0.0,
            "rtt_p50_ms": percentile(rtts, 50),
            "rtt_p99_ms": percentile(rtts, 99),
            "relay_latency_p50_ms": percentile(relay_ms, 50),
            "relay_latency_p99_ms": percentile(relay_ms, 99),
        }


# -- the system under test -----------------------------------------------------


@contextmanager
def postgres_db() -> Iterator[str]:
    import psycopg

    name = f"bench_relay_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def responders(  # noqa: PLR0917 - a bench helper
    kind: str, processes: int, broker: PrivateBroker, stub_url: str, workdir: Path, concurrency: int
) -> Iterator[list[int]]:
    """Start ``processes`` relays (kind sqlite/postgres) or echo responders; yield their pids."""
    with ExitStack() as stack:
        if kind == "echo":
            procs = []
            for i in range(processes):
                log = (workdir / f"echo{i}.log").open("wb")
                stack.callback(log.close)
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.relay_throughput", "--worker", "echo",
                     "--port", str(broker.port)],
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
                stack.callback(proc.wait)
                stack.callback(proc.terminate)
                procs.append(proc)
            time.sleep(1.0)
            yield [p.pid for p in procs]
            return
        if kind == "sqlite":
            db = f"sqlite:///{workdir / 'relay.db'}"
        else:
            db = stack.enter_context(postgres_db())
            if kind == "postgres-async":  # commits not waited for on the server's disk
                db += "?options=" + quote("-c synchronous_commit=off")
        relays = []
        for i in range(processes):
            relay = Relay(
                broker_url=broker.url,
                llm_url=stub_url,
                model="bench-stub",
                ready=True,
                db=db,
                log_path=workdir / f"relay{i}.log",
                CLOUD_RELAY_LIMITS__RATE_PER_MINUTE="0",
                CLOUD_RELAY_LIMITS__DAILY_TOKENS="0",
                CLOUD_RELAY_LIMITS__MAX_CONCURRENCY=str(concurrency),
                CLOUD_RELAY_LIMITS__QUEUE_SIZE="20000",
            )
            stack.callback(relay.stop)
            relays.append(relay)
        yield [r.proc.pid for r in relays]


def _stub_stats(stub_url: str) -> dict[str, Any]:
    base = stub_url.rsplit("/v1", 1)[0]
    result: dict[str, Any] = httpx.get(f"{base}/stats?reset=1", timeout=5).json()
    return result


def measure(
    driver: Driver,
    *,
    label: dict[str, Any],
    n: int,
    rate: float | None,
    window: int,
    pids: list[int],
    stub_url: str,
    quiet_wait: float,
) -> dict[str, Any]:
    wait_for_quiet(quiet_wait)
    _stub_stats(stub_url)
    tree = [os.getpid(), *pids]
    cpu0 = {p: proc_cpu_s(p) for p in tree}
    busy0, t0 = cpu_busy_s(), time.perf_counter()
    row = driver.run(n, rate=rate, window=window)
    elapsed = time.perf_counter() - t0
    cpu = {p: proc_cpu_s(p) - cpu0[p] for p in tree}
    stub = _stub_stats(stub_url)
    service = stub["service_p50_ms"] if stub["requests"] else 0.0
    responders_cpu = sum(cpu[p] for p in pids[2:])  # pids = broker, stub, responders...
    row.update(label)
    row.update(
        {
            "rate": rate or "max",
            "stub_requests": stub["requests"],
            "stub_service_p50_ms": service,
            "added_p50_ms": row["rtt_p50_ms"] - service,
            "added_p99_ms": row["rtt_p99_ms"] - service,
            "responder_cpu_ms_per_msg": 1000 * responders_cpu / max(1, row["completed_ok"]),
            "responder_cores": responders_cpu / elapsed,
            "broker_cores": cpu[pids[0]] / elapsed,
            "stub_cores": cpu[pids[1]] / elapsed,
            "driver_cores": cpu[os.getpid()] / elapsed,
            "foreign_cpu_share": max(0.0, (cpu_busy_s() - busy0 - sum(cpu.values())) / elapsed),
        }
    )
    return row


def _collapsed(raw: Path) -> Iterator[tuple[str, int]]:
    """(stack, sample count) per line of py-spy's collapsed-stack output."""
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if stack:
            yield stack, int(count_s)


def _profile_summary(raw: Path, top: int = 30) -> list[tuple[str, float, float]]:
    """(function, inclusive %, self %) from py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, count in _collapsed(raw):
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  for f in stack.split(";")]  # fmt: skip
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    return [(f, 100 * c / total, 100 * own[f] / total) for f, c in inclusive.most_common(top)]


#: (category, substrings of a frame's file): a sample goes to the category of the deepest
#: frame that matches, so a log call inside the store counts as logging.
CATEGORIES = (
    ("log store (SQLite/PostgreSQL)", ("store/", "sqlite3", "psycopg")),
    ("LLM HTTP client (httpx/httpcore/http11)", ("httpx", "httpcore", "h11", "http11.py")),
    ("logging (structlog/stdlib)", ("structlog", "logging/", "edge_slm/logs")),
    ("MQTT (paho)", ("paho", "edge_slm/mqtt")),
    ("validation/JSON (pydantic, json)", ("pydantic", "json/", "edge_slm/contract/", "intake.py")),
    ("other relay code", ("cloud_relay/",)),
    ("asyncio event loop (select, scheduling)", ("asyncio/", "selectors.py")),
)


def profile_categories(raw: Path) -> list[tuple[str, float]]:
    """Share of py-spy samples per category (deepest matching frame wins)."""
    shares: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, count in _collapsed(raw):
        total += count
        found = "other (threading, queue, stdlib)"
        for frame in reversed(stack.split(";")):
            where = frame.rsplit("(", 1)[-1]
            hit = next((c for c, keys in CATEGORIES if any(k in where for k in keys)), None)
            if hit:
                found = hit
                break
        shares[found] += count
    return [(c, 100 * n / total) for c, n in shares.most_common()]


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(prog="python -m bench.relay_throughput", description=__doc__)
    parser.add_argument(
        "--stores",
        default="sqlite,postgres",
        help="comma list of sqlite, postgres and postgres-async (PostgreSQL with "
        "synchronous_commit=off in the URL); default sqlite,postgres",
    )
    parser.add_argument("--processes", default="1,2", help="relay processes per run, comma list")
    parser.add_argument("--rates", default="250,500,1000", help="open-loop rates, escalations/s")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per open-loop rate")
    parser.add_argument("--saturate", type=int, default=3000, help="escalations, max speed")
    parser.add_argument("--window", type=int, default=400, help="max unanswered at saturation")
    parser.add_argument("--concurrency", type=int, default=16, help="relay MAX_CONCURRENCY")
    parser.add_argument("--profile", action="store_true", help="add a py-spy profiled run")
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="profile only the thread holding the GIL (py-spy --gil): shares of CPU, not of "
        "thread time (threads blocked in select or on a queue are left out)",
    )
    parser.add_argument("--quiet-wait", type=float, default=60, help="seconds to wait for idle")
    parser.add_argument("--worker", choices=("echo",), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "echo":
        run_echo(args.port, "relays")
        return 0

    rates = [float(r) for r in args.rates.split(",") if r]
    kinds = ["echo", *[s for s in args.stores.split(",") if s]]
    counts = [int(p) for p in args.processes.split(",") if p]
    rows: list[dict[str, Any]] = []
    profile: list[tuple[str, float, float]] = []
    categories: list[tuple[str, float]] = []
    stub_port = free_port()
    stub_url = f"http://127.0.0.1:{stub_port}/v1"
    with ExitStack() as outer:
        tmp = Path(outer.enter_context(tempfile.TemporaryDirectory(prefix="bench-relay-")))
        stub_log = outer.enter_context((tmp / "stub.log").open("wb"))
        stub = subprocess.Popen(
            [sys.executable, "-m", "bench._stub_llm", "--port", str(stub_port)],
            stdout=stub_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        outer.callback(stub.wait)
        outer.callback(stub.terminate)
        for _ in range(100):
            try:
                _stub_stats(stub_url)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        plan = [(k, p) for k in kinds for p in counts] + ([("sqlite-profiled", 1)] * args.profile)
        for kind, procs in plan:
            workdir = tmp / f"{kind}-{procs}"
            workdir.mkdir()
            store = "sqlite" if kind == "sqlite-profiled" else kind
            with (
                PrivateBroker() as broker,
                responders(store, procs, broker, stub_url, workdir, args.concurrency) as pids,
            ):
                assert broker._proc is not None
                tree = [broker._proc.pid, stub.pid, *pids]
                driver = Driver(broker.port)
                label = {"responder": "echo" if kind == "echo" else "relay", "store": store,
                         "processes": procs}  # fmt: skip
                common = {"pids": tree, "stub_url": stub_url, "quiet_wait": args.quiet_wait}
                try:
                    driver.run(200, rate=None, window=args.window)  # warm-up
                    if kind == "sqlite-profiled":
                        raw = RESULTS_DIR / "relay_profile.txt"
                        spy = subprocess.Popen(
                            ["py-spy", "record", "--nonblocking", *["--gil"] * args.profile_gil,
                             "-p", str(pids[0]),
                             "-r", "250", "-f", "raw", "-o", str(raw)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        )  # fmt: skip
                        time.sleep(1.0)
                        row = measure(driver, label=label, n=args.saturate, rate=None,
                                      window=args.window, **common)  # fmt: skip
                        row["profiled"] = True
                        rows.append(row)
                        spy.send_signal(2)
                        spy.wait(30)
                        profile = _profile_summary(raw)
                        categories = profile_categories(raw)
                        continue
                    for rate in rates:
                        n = int(rate * args.duration)
                        rows.append(measure(driver, label=label, n=n, rate=rate,
                                            window=args.window, **common))  # fmt: skip
                        print(f"{kind} x{procs} @{rate:.0f}/s done", flush=True)
                    rows.append(measure(driver, label=label, n=args.saturate, rate=None,
                                        window=args.window, **common))  # fmt: skip
                    print(f"{kind} x{procs} saturation done", flush=True)
                finally:
                    driver.close()

    # Ratios against the echo baseline of the same run, at saturation.
    sat = {(r["responder"], r["store"], r["processes"]): r for r in rows if r["rate"] == "max"}
    for r in rows:
        base = sat.get(("echo", "echo", r["processes"]))
        if base and r["rate"] == "max" and r["responder"] == "relay":
            r["throughput_vs_echo"] = r["completed_per_s"] / base["completed_per_s"]
        r["target_met"] = (
            r["responder"] == "relay"
            and r["processes"] == 1
            and r["completed_per_s"] >= TARGET_PER_S
            and r["added_p99_ms"] < TARGET_P99_MS
        )
    cols = ["rate", "offered_per_s", "completed_per_s", "completed_ok", "missing"]
    cols += ["added_p50_ms", "added_p99_ms", "relay_latency_p50_ms", "relay_latency_p99_ms"]
    cols += ["responder_cpu_ms_per_msg", "responder_cores", "broker_cores", "driver_cores"]
    cols += ["foreign_cpu_share", "throughput_vs_echo"]
    print()
    print(
        table(
            ["responder", "store", "procs", *cols],
            [[r["responder"], r["store"], r["processes"], *[r.get(c, "-") for c in cols]]
             for r in rows],
        )
    )  # fmt: skip
    if profile:
        print("\npy-spy, one SQLite relay at saturation: inclusive / self share of samples\n")
        print(table(["function (file)", "inclusive %", "self %"], profile))
        print("\n" + table(["where (deepest matching frame)", "% of samples"], categories))
    data = {
        "target_per_s": TARGET_PER_S,
        "target_p99_ms": TARGET_P99_MS,
        "devices": len(DEVICES),
        "rates": rates,
        "duration_s": args.duration,
        "saturate": args.saturate,
        "window": args.window,
        "concurrency": args.concurrency,
        "rows": rows,
        "profile_top": profile,
        "profile_categories": categories,
        "py_spy": shutil.which("py-spy"),
        "py_spy_gil": args.profile_gil,
    }
    return report("relay_throughput", data)


if __name__ == "__main__":
    sys.exit(main())
