"""Peak resident memory of the running agent against the model's size on disk.

Starts a private mosquitto and the real agent daemon, sends a warm-up of mixed
requests (short and long answers, classifications, a sensor reading) so the
runtime's arenas and KV caches have grown to their working size, then reads the
agent's VmHWM (peak RSS) and VmRSS from /proc/PID/status.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench._common import dir_size, proc_mb, report, table, wait_for_quiet
from bench._mqtt import BenchClient, running_agent

LONG_TEXT = " ".join(
    f"At {7 + i}:00 the {room} sensor reported motion and the lights were switched on."
    for i, room in enumerate(["kitchen", "hallway", "garage", "office", "bedroom"] * 4)
)
MIX: list[dict[str, Any]] = [
    {"text": "What is the capital of France?", "max_tokens": 32},
    {"text": "turn on the kitchen light", "task": "classify", "labels": ["lights", "heating"]},
    {"text": f"Summarize: {LONG_TEXT}", "task": "summarize", "max_tokens": 96},
    {
        "kind": "sensor",
        "sensor": {"name": "living_room/temp", "value": 31.5, "unit": "°C"},
        "task": "classify",
        "labels": ["normal", "too_hot", "too_cold"],
    },
    {"text": "Write a short poem about a thermostat.", "max_tokens": 64},
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__)
    parser.add_argument("--warmup", "-n", type=int, default=30, help="mixed requests first")
    parser.add_argument("--model", help="catalog model (default: the agent's default)")
    parser.add_argument(
        "--embedder", help="the skills' sentence encoder (default: the agent's default)"
    )
    args = parser.parse_args(argv)

    wait_for_quiet(60)  # memory barely depends on load, but the warm-up finishes sooner
    from agent.models import DEFAULT_MODEL, ModelCache, default_cache_dir
    from agent.models.embedders import DEFAULT_EMBEDDER, installed

    cache = ModelCache(default_cache_dir())
    model = args.model or DEFAULT_MODEL
    embedder = args.embedder or DEFAULT_EMBEDDER
    model_dir = cache.require(model)
    embedder_dir = installed(cache, embedder)
    if embedder_dir is None:
        raise SystemExit(f"{embedder} is not installed: edge-agent models build {embedder}")
    disk_mb = dir_size(model_dir) / 1e6
    embedder_mb = dir_size(embedder_dir) / 1e6
    env = {"EDGE_AGENT_MODEL__NAME": model, "EDGE_AGENT_MODEL__EMBEDDER": embedder}
    with (
        tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp,
        running_agent(Path(tmp), **env) as (broker, agent, topics),
    ):
        pid = agent.proc.pid
        idle = {f: proc_mb(pid, f) for f in ("VmRSS", "VmHWM")}
        client = BenchClient(broker.port, "rss")
        reply_topic = f"bench/{uuid.uuid4().hex}/reply"
        client.subscribe(reply_topic, 1)
        try:
            for i in range(args.warmup):
                body = json.dumps({"v": 1, "cloud": "never", **MIX[i % len(MIX)]}).encode()
                _rtt, raw = client.round_trip(topics.request, body, qos=1, reply_topic=reply_topic)
                if not json.loads(raw).get("ok"):
                    raise RuntimeError(f"agent error: {raw!r}")
        finally:
            client.close()
        warm = {f: proc_mb(pid, f) for f in ("VmRSS", "VmHWM")}

    peak_mb = warm["VmHWM"]
    rows = [
        ["model on disk (MB)", disk_mb],
        ["sentence encoder on disk (MB)", embedder_mb],
        ["agent RSS after start (MB)", idle["VmRSS"]],
        ["agent peak RSS after start, before requests (MB)", idle["VmHWM"]],
        ["agent RSS after warm-up (MB)", warm["VmRSS"]],
        ["agent peak RSS, VmHWM (MB)", peak_mb],
        ["peak RSS / disk size", peak_mb / disk_mb],
    ]
    print(f"\n{model} with {embedder}, after {args.warmup} mixed requests\n")
    print(table(["measure", "value"], rows))
    data = {
        "model": model,
        "embedder": embedder,
        "warmup_requests": args.warmup,
        "model_disk_mb": disk_mb,
        "embedder_disk_mb": embedder_mb,
        "rss_after_start_mb": idle["VmRSS"],
        "peak_rss_after_start_mb": idle["VmHWM"],
        "rss_after_warmup_mb": warm["VmRSS"],
        "peak_rss_mb": peak_mb,
        "peak_over_disk": peak_mb / disk_mb,
    }
    # The default pair keeps the historical file name; others are filed by their names.
    default = (model, embedder) == (DEFAULT_MODEL, DEFAULT_EMBEDDER)
    return report("rss" if default else f"rss_{model}_{embedder}", data)


if __name__ == "__main__":
    sys.exit(main())
