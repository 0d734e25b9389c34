"""Where the agent's MQTT overhead goes: one request's path, phase by phase.

``bench.mqtt_overhead`` gives the overhead (round trip minus the agent's own
``latency_ms``); this splits it. The real agent runs with ``bench/_trace`` on its
``PYTHONPATH``, which stamps the request's path inside the agent (socket reads and
writes under paho, the message callback, the latency stamp, the reply's
persistence and publish) with ``time.perf_counter()``. The bench client stamps its
publish and the reply's arrival on the same clock (CLOCK_MONOTONIC), so the
phases line up across the two processes. Sequential QoS 1 requests, broker with
TCP_NODELAY, the echo round trip (no model) measured in the same run as the
baseline. The stamps cost a few microseconds each; the overhead they show is a
little higher than the untraced bench's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench._common import percentile, report, table, wait_for_quiet
from bench._mqtt import BenchClient
from bench.mqtt_overhead import REQUESTS, bench_echo
from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, wait_for_status
from tests.support.broker import PrivateBroker

REQUEST = REQUESTS["classify"]
TRACE_SITE = Path(__file__).parent / "_trace"

#: (phase, from event, to event); in order along the request's path.
PHASES = [
    ("client publish -> agent reads the request", "client_publish", "read_start"),
    ("paho reads and parses it", "read_start", "on_message"),
    ("agent span (latency_ms): intake, queue, inference", "on_message", "latency_stamp"),
    ("reply log line", "latency_stamp", "send_reply_in"),
    ("reply serialized", "send_reply_in", "persist_in"),
    ("reply persisted (SQLite)", "persist_in", "persist_out"),
    ("telemetry", "persist_out", "publish_in"),
    ("publish -> network thread writes it", "publish_in", "send_in"),
    ("agent writes -> client has the reply", "send_in", "client_reply"),
]


def _events(path: Path) -> list[tuple[float, str, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        t, what, thread, extra = line.split(" ", 3)
        out.append((float(t), what, thread, extra))
    return sorted(out)


def _request_marks(
    events: list[tuple[float, str, str, str]], start: float, end: float
) -> dict[str, float] | None:
    """The agent's stamps for the one request in flight between ``start`` and ``end``."""
    span = [e for e in events if start <= e[0] <= end]
    body = next((i for i, e in enumerate(span) if e[1] == "recv_out" and int(e[3]) > 100), None)
    if body is None:
        return None
    i = body  # the request's payload; paho read its fixed header one byte at a time first
    while i > 0 and span[i - 1][1] in ("recv_in", "recv_out") and span[i - 1][3] in ("-", "1"):
        i -= 1
    marks = {"read_start": span[i][0]}
    firsts = {
        "on_message_in": "on_message",
        "send_reply_in": "send_reply_in",
        "persist_in": "persist_in",
        "persist_out": "persist_out",
        "publish_in": "publish_in",
    }
    for t, what, _thread, extra in span[body:]:
        if what in firsts:
            marks.setdefault(firsts[what], t)
        elif what == "latency_stamp_out" and "send_reply_in" not in marks:
            marks["latency_stamp"] = t  # the last one before the reply: _reply_job's
        elif what == "send_in" and "publish_in" in marks and int(extra) > 100:
            marks["send_in"] = t
            break
    needed = {a for _n, a, _b in PHASES} | {b for _n, _a, b in PHASES}
    return marks if needed - {"client_publish", "client_reply"} <= marks.keys() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mqtt_trace", description=__doc__)
    parser.add_argument("--requests", "-n", type=int, default=200, help="traced requests")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests first")
    parser.add_argument("--quiet-wait", type=float, default=60, help="seconds to wait for idle")
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp,
        PrivateBroker(tcp_nodelay=True) as broker,
    ):
        trace = Path(tmp) / "trace.txt"
        device_id = f"bench-{uuid.uuid4().hex[:6]}"
        topics = DeviceTopics("slm", device_id)
        pythonpath = os.pathsep.join(filter(None, [str(TRACE_SITE), os.environ.get("PYTHONPATH")]))
        agent = AgentProcess(
            broker_url=broker.url,
            device_id=device_id,
            log_path=Path(tmp) / "agent.log",
            EDGE_AGENT_CLOUD__ENABLED="false",
            EDGE_AGENT_OUTBOX__PATH=str(Path(tmp) / "outbox.db"),
            PYTHONPATH=pythonpath,
            EDGE_SLM_TRACE_OUT=str(trace),
        )
        try:
            wait_for_status(broker.port, topics.status, "online", timeout=120)
            client, echo = BenchClient(broker.port, "app"), BenchClient(broker.port, "echo")
            reply_topic = f"bench/{uuid.uuid4().hex}/reply"
            client.subscribe(reply_topic, 1)
            wait_for_quiet(args.quiet_wait)
            echo_row = bench_echo(client, echo, REQUEST, 1, n=args.requests, warmup=args.warmup)
            trips: list[tuple[float, float, float]] = []
            for i in range(args.warmup + args.requests):
                body = json.dumps({**REQUEST, "id": f"t-{i}"}).encode()
                start = time.perf_counter()
                rtt, raw = client.round_trip(topics.request, body, qos=1, reply_topic=reply_topic)
                if i >= args.warmup:
                    trips.append((start, start + rtt, float(json.loads(raw)["latency_ms"])))
            client.close()
            echo.close()
        finally:
            agent.terminate()
            agent.close()
        events = _events(trace)

    per_phase: dict[str, list[float]] = {name: [] for name, _a, _b in PHASES}
    overheads = []
    for start, arrived, latency_ms in trips:
        marks = _request_marks(events, start, arrived)
        if marks is None:
            continue
        marks |= {"client_publish": start, "client_reply": arrived}
        for name, a, b in PHASES:
            per_phase[name].append((marks[b] - marks[a]) * 1000)
        overheads.append((arrived - start) * 1000 - latency_ms)
    rows = [[name, percentile(v, 50), percentile(v, 90)] for name, v in per_phase.items() if v]
    print(f"\n{len(overheads)} of {len(trips)} requests traced whole (QoS 1, nodelay broker)\n")
    print(table(["phase", "p50 ms", "p90 ms"], rows))
    echo_ms = echo_row["round_trip_p50_ms"]
    print(
        f"\noverhead (round trip - latency_ms) p50 {percentile(overheads, 50):.3f} ms; "
        f"echo round trip (no model) p50 {echo_ms:.3f} ms"
    )
    data = {
        "requests": args.requests,
        "traced": len(overheads),
        "overhead_p50_ms": percentile(overheads, 50),
        "echo_round_trip_p50_ms": echo_ms,
        "phases": {name: {"p50_ms": p50, "p90_ms": p90} for name, p50, p90 in rows},
    }
    return report("mqtt_trace", data)


if __name__ == "__main__":
    sys.exit(main())
