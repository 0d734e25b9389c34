"""Leak check: the real agent's RSS after 10,000 requests vs after 100.

Starts a private mosquitto and the real agent daemon (``EDGE_AGENT_CLOUD__ENABLED=false``,
via ``bench._mqtt.running_agent``) and sends requests one at a time over MQTT v5 at QoS 1.

A cheaper mix than 10,000 real classifications (~80 ms each, ~15 min on this machine):
by default every ``--every``-th request (20th) is a real 3-label ``classify`` through
the model; the others are rejected by validation (``classify`` without ``labels``,
answered with an ``invalid_request`` error reply), which exercise the network thread,
intake, JSON parsing, the typed-error reply and the logging paths without the model.
``--every 1`` makes every request a real classify.

VmRSS is read from /proc/<agent pid>/status after request 100 (the baseline: arenas and
caches at working size) and every 1,000 requests; growth = RSS(10,000) - RSS(100), in MB
and %. Peak RSS (VmHWM) and the model's size on disk are reported alongside.
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

from bench._common import dir_size, proc_mb, report, table, wait_for_quiet
from bench._mqtt import BenchClient, running_agent

CLASSIFY: dict[str, Any] = {
    "v": 1,
    "kind": "voice",
    "text": "turn on the kitchen light",
    "task": "classify",
    "labels": ["lights_on", "lights_off", "other"],
    "cloud": "never",
}
INVALID: dict[str, Any] = {"v": 1, "text": "turn on the kitchen light", "task": "classify"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss_leak", description=__doc__)
    parser.add_argument("--requests", "-n", type=int, default=10_000, help="requests in all")
    parser.add_argument("--baseline-at", type=int, default=100, help="request of the baseline")
    parser.add_argument("--every", type=int, default=20, help="every Nth is a real classify")
    parser.add_argument("--quiet-wait", type=float, default=60, help="seconds to wait for idle")
    args = parser.parse_args(argv)

    from agent.models import DEFAULT_MODEL, ModelCache, default_cache_dir

    disk_mb = dir_size(ModelCache(default_cache_dir()).require(DEFAULT_MODEL)) / 1e6
    wait_for_quiet(args.quiet_wait)
    samples: list[dict[str, float]] = []
    counts = {"classified": 0, "rejected": 0}
    with (
        tempfile.TemporaryDirectory(prefix="bench-leak-") as tmp,
        running_agent(Path(tmp)) as (broker, agent, topics),
    ):
        pid = agent.proc.pid
        start_rss = proc_mb(pid, "VmRSS")
        client = BenchClient(broker.port, "leak")
        reply_topic = f"bench/{uuid.uuid4().hex}/reply"
        client.subscribe(reply_topic, 1)
        t0 = time.perf_counter()
        try:
            for i in range(1, args.requests + 1):
                real = i % args.every == 0
                body = {**(CLASSIFY if real else INVALID), "id": f"leak-{i}"}
                _rtt, raw = client.round_trip(
                    topics.request, json.dumps(body).encode(), qos=1, reply_topic=reply_topic
                )
                reply = json.loads(raw)
                if real and not reply.get("ok"):
                    raise RuntimeError(f"classify failed: {raw!r}")
                if not real and (reply.get("ok") or reply["error"]["code"] != "invalid_request"):
                    raise RuntimeError(f"expected invalid_request: {raw!r}")
                counts["classified" if real else "rejected"] += 1
                if i == args.baseline_at or i % 1000 == 0:
                    samples.append(
                        {
                            "request": i,
                            "rss_mb": proc_mb(pid, "VmRSS"),
                            "peak_mb": proc_mb(pid, "VmHWM"),
                            "elapsed_s": time.perf_counter() - t0,
                        }
                    )
                    print(f"{i}: RSS {samples[-1]['rss_mb']:.1f} MB", flush=True)
        finally:
            client.close()

    base = next(s for s in samples if s["request"] == args.baseline_at)
    last = samples[-1]
    growth = last["rss_mb"] - base["rss_mb"]
    rows = [[s["request"], s["rss_mb"], s["peak_mb"], s["elapsed_s"]] for s in samples]
    print(f"\n{counts}; model on disk {disk_mb:.1f} MB; RSS after start {start_rss:.1f} MB\n")
    print(table(["after request", "VmRSS MB", "VmHWM MB", "elapsed s"], rows))
    print(
        f"\nRSS growth {args.baseline_at} -> {last['request']}: {growth:+.1f} MB "
        f"({100 * growth / base['rss_mb']:+.1f}%); peak / disk {last['peak_mb'] / disk_mb:.2f}x"
    )
    data = {
        "model": DEFAULT_MODEL,
        "requests": args.requests,
        "every": args.every,
        "counts": counts,
        "model_disk_mb": disk_mb,
        "rss_after_start_mb": start_rss,
        "samples": samples,
        "growth_mb": growth,
        "growth_pct": 100 * growth / base["rss_mb"],
        "peak_over_disk": last["peak_mb"] / disk_mb,
    }
    return report("rss_leak", data)


if __name__ == "__main__":
    sys.exit(main())
