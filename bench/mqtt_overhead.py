"""What the agent adds on top of inference and of the broker, per request.

Starts a private mosquitto and the real agent daemon, then sends small
``classify`` requests one at a time from an MQTT v5 client (Response Topic and
Correlation Data) at QoS 0 and at QoS 1. Per request, *overhead* = the round
trip seen by the client minus the ``latency_ms`` the agent reports (receipt to
reply inside the agent): broker hops, paho, JSON and queueing outside that span.

Baseline in the same run: a raw ping-pong through the same broker, answered by
an echo client with no model, at each QoS. The agent's overhead minus the echo
round trip is what the agent adds over a bare MQTT responder.

``--spin off`` runs the agent with ``model.spin = false`` (onnxruntime's threads
sleep after each run); each row also gives the agent's CPU per request.

``--task answer`` sends a free-text request instead (``max_tokens`` 32, greedy,
so every reply is the same answer; each row gives the tokens generated): the
request the target's "latency minus generation time" speaks of. The short 3-label
``classify`` is the default because it is the worst case for the share: the least model
time per request.

Both are measured twice: with mosquitto's default config, and with
``set_tcp_nodelay true``. Mosquitto leaves Nagle's algorithm on by default, so a
QoS 1 reply can wait for the delayed ACK of the previous PUBACK (~40 ms on
Linux) whatever the clients do; the agent sets TCP_NODELAY on its own socket.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench._common import cpu_busy_s, percentile, proc_cpu_s, report, table, wait_for_quiet
from bench._mqtt import BenchClient, running_agent

REQUESTS: dict[str, dict[str, Any]] = {
    "classify": {
        "v": 1,
        "text": "turn on the kitchen light",
        "task": "classify",
        "labels": ["lights", "heating", "other"],
        "cloud": "never",
    },
    "answer": {
        "v": 1,
        "text": "In one sentence: why do we close the curtains at night?",
        "task": "answer",
        "max_tokens": 32,
        "cloud": "never",
    },
}
TARGET_P50_MS = 2.0
#: overhead p50 / round trip p50 must stay under this share of the end-to-end time.
TARGET_SHARE = 0.01
#: mosquitto's own default (Nagle on) vs the project's broker configs (TCP_NODELAY).
BROKER_CONFIGS = {"default": False, "nodelay": True}


def _stats(prefix: str, values_ms: list[float]) -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": percentile(values_ms, 50),
        f"{prefix}_p99_ms": percentile(values_ms, 99),
    }


def bench_agent(
    client: BenchClient,
    request: dict[str, Any],
    request_topic: str,
    qos: int,
    *,
    n: int,
    warmup: int,
) -> dict[str, Any]:
    reply_topic = f"bench/{uuid.uuid4().hex}/reply"
    client.subscribe(reply_topic, qos)  # the reply comes at min(agent's QoS 1, this QoS)
    rtts: list[float] = []
    overheads: list[float] = []
    latencies: list[float] = []
    generated: list[float] = []  # completion (or scored) tokens per reply
    for i in range(warmup + n):
        body = json.dumps({**request, "id": f"q{qos}-{i}"}).encode()
        rtt_s, raw = client.round_trip(request_topic, body, qos=qos, reply_topic=reply_topic)
        reply = json.loads(raw)
        if not reply.get("ok"):
            raise RuntimeError(f"agent error: {reply.get('error')}")
        if i >= warmup:
            rtts.append(rtt_s * 1000)
            latencies.append(float(reply["latency_ms"]))
            overheads.append(rtt_s * 1000 - float(reply["latency_ms"]))
            generated.append(float(reply["tokens"]["completion"]))
    return {
        "qos": qos,
        "n": n,
        **_stats("round_trip", rtts),
        **_stats("agent_latency", latencies),
        **_stats("overhead", overheads),
        "completion_tokens_p50": percentile(generated, 50),
    }


def bench_echo(
    client: BenchClient,
    echo: BenchClient,
    request: dict[str, Any],
    qos: int,
    *,
    n: int,
    warmup: int,
) -> dict[str, Any]:
    topic = f"bench/{uuid.uuid4().hex}/echo"
    reply_topic = f"{topic}/reply"
    echo.serve_echo(topic, qos)
    client.subscribe(reply_topic, qos)
    body = json.dumps(request).encode()
    rtts = [
        client.round_trip(topic, body, qos=qos, reply_topic=reply_topic)[0] * 1000
        for _ in range(warmup + n)
    ]
    return {"qos": qos, "n": n, **_stats("round_trip", rtts[warmup:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mqtt_overhead", description=__doc__)
    parser.add_argument("--requests", "-n", type=int, default=200, help="timed requests per QoS")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests first, per QoS")
    parser.add_argument("--quiet-wait", type=float, default=60, help="seconds to wait for idle")
    parser.add_argument(
        "--task",
        choices=sorted(REQUESTS),
        default="classify",
        help="the request sent: a 3-label classify, or a 32-token free-text answer",
    )
    parser.add_argument(
        "--spin",
        choices=["on", "off"],
        default="on",
        help="the agent's model.spin: onnxruntime's threads spin-wait after a run, or sleep",
    )
    args = parser.parse_args(argv)
    request = REQUESTS[args.task]
    agent_env = {"EDGE_AGENT_MODEL__SPIN": str(args.spin == "on").lower()}

    rows: list[dict[str, Any]] = []
    for broker_name, nodelay in BROKER_CONFIGS.items():
        with (
            tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp,
            running_agent(Path(tmp), tcp_nodelay=nodelay, **agent_env) as (broker, agent, topics),
        ):
            client = BenchClient(broker.port, "app")
            echo = BenchClient(broker.port, "echo")
            wait_for_quiet(args.quiet_wait)
            # Cores' worth of CPU that other processes took meanwhile (mosquitto counts too).
            busy0, own0, agent0 = cpu_busy_s(), proc_cpu_s("self"), proc_cpu_s(agent.proc.pid)
            t0 = time.perf_counter()
            try:
                for qos in (0, 1):
                    echo_row = bench_echo(
                        client, echo, request, qos, n=args.requests, warmup=args.warmup
                    )
                    cpu0 = proc_cpu_s(agent.proc.pid)
                    agent_row = bench_agent(
                        client, request, topics.request, qos, n=args.requests, warmup=args.warmup
                    )
                    # The agent's CPU (all its threads) per request, warm-up included.
                    agent_row["agent_cpu_ms_per_request"] = (
                        1000 * (proc_cpu_s(agent.proc.pid) - cpu0) / (args.requests + args.warmup)
                    )
                    agent_row["added_over_echo_p50_ms"] = (
                        agent_row["overhead_p50_ms"] - echo_row["round_trip_p50_ms"]
                    )
                    agent_row["overhead_share_pct"] = (
                        100 * agent_row["overhead_p50_ms"] / agent_row["round_trip_p50_ms"]
                    )
                    rows += [
                        {"broker": broker_name, "what": "echo (no model)", **echo_row},
                        {"broker": broker_name, "what": "agent", **agent_row},
                    ]
                own = proc_cpu_s("self") - own0 + proc_cpu_s(agent.proc.pid) - agent0
                foreign = (cpu_busy_s() - busy0 - own) / (time.perf_counter() - t0)
                for row in rows[-4:]:
                    row["foreign_cpu_share"] = max(0.0, foreign)
            finally:
                client.close()
                echo.close()

    cols = ["round_trip_p50_ms", "round_trip_p99_ms", "agent_latency_p50_ms"]
    cols += ["overhead_p50_ms", "overhead_p99_ms", "added_over_echo_p50_ms", "overhead_share_pct"]
    cols += ["completion_tokens_p50", "agent_cpu_ms_per_request", "foreign_cpu_share"]
    print(
        f"\n{args.requests} sequential {args.task} requests per QoS (after {args.warmup} warm-up)\n"
    )
    print(
        table(
            ["broker", "what", "qos", *cols],
            [[r["broker"], r["what"], r["qos"], *[r.get(c, "-") for c in cols]] for r in rows],
        )
    )
    print(
        f"\ntargets: agent overhead p50 < {TARGET_P50_MS} ms, and overhead p50 / round trip "
        f"p50 < {100 * TARGET_SHARE:.0f}% (the agent's own socket always sets TCP_NODELAY; "
        "the broker's setting is what varies)"
    )
    for r in rows:
        if r["what"] == "agent":
            r["target_met"] = r["overhead_p50_ms"] < TARGET_P50_MS
            r["share_target_met"] = r["overhead_share_pct"] < 100 * TARGET_SHARE
            print(
                f"  broker={r['broker']} qos={r['qos']}: "
                f"< {TARGET_P50_MS} ms {'met' if r['target_met'] else 'NOT met'}; "
                f"share {r['overhead_share_pct']:.2f}% "
                f"{'met' if r['share_target_met'] else 'NOT met'}"
            )
    data = {
        "task": args.task,
        "spin": args.spin,
        "request": request,
        "requests": args.requests,
        "warmup": args.warmup,
        "target_p50_ms": TARGET_P50_MS,
        "target_share": TARGET_SHARE,
        "broker_configs": BROKER_CONFIGS,
        "rows": rows,
    }
    name = "mqtt_overhead" if args.task == "classify" else f"mqtt_overhead_{args.task}"
    name += "" if args.spin == "on" else "_nospin"
    return report(name, data)


if __name__ == "__main__":
    sys.exit(main())
