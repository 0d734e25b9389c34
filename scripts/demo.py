"""End-to-end demo: broker, agent with the on-device SLM, real requests via mosquitto_rr.

Run through ``scripts/demo.sh`` (which sets everything up first).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from edge_slm.devbroker import PrivateBroker
from edge_slm.mqtt import BrokerUrl
from edge_slm.topics import DeviceTopics

INTENTS = ["lights_on", "lights_off", "set_temperature", "play_music", "lock_door"]

REQUESTS: list[tuple[str, dict[str, Any]]] = [
    (
        "voice command",
        {
            "kind": "voice",
            "text": "turn on the kitchen lights",
            "task": "classify",
            "labels": INTENTS,
        },
    ),
    (
        "voice command",
        {
            "kind": "voice",
            "text": "play some jazz in the living room",
            "task": "classify",
            "labels": INTENTS,
        },
    ),
    (
        "sensor event",
        {
            "kind": "sensor",
            "text": "Is the living room temperature normal?",
            "sensor": {"name": "living_room/temp", "value": 31.5, "unit": "°C"},
            "task": "classify",
            "labels": ["normal", "too_hot", "too_cold"],
        },
    ),
    ("free question", {"kind": "text", "text": "What is the capital of France?", "max_tokens": 32}),
    (
        "summary",
        {
            "kind": "text",
            "task": "summarize",
            "text": "The front door opened at 07:10, closed at 07:11, and the hall motion "
            "sensor saw movement until 07:15. Nobody was home after that.",
            "max_tokens": 40,
        },
    ),
    ("bad input (typed error)", {"kind": "text", "text": "hi", "task": "classify"}),
]


def say(text: str = "") -> None:
    print(text, flush=True)


def rr(broker: BrokerUrl, topic: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One MQTT v5 request/response with the stock mosquitto_rr client."""
    out = subprocess.run(
        [
            "mosquitto_rr",
            "-V",
            "mqttv5",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-t",
            topic,
            "-e",
            f"demo/replies/{uuid.uuid4().hex}",
            "-m",
            json.dumps(payload),
            "-W",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    reply: dict[str, Any] = json.loads(out.stdout)
    return reply


def wait_online(broker: BrokerUrl, topics: DeviceTopics, agent: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise SystemExit(f"the agent exited with code {agent.returncode}; see its log")
        out = subprocess.run(
            [
                "mosquitto_sub",
                "-V",
                "mqttv5",
                "-h",
                broker.host,
                "-p",
                str(broker.port),
                "-t",
                topics.status,
                "-C",
                "1",
                "-W",
                "1",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if '"state":"online"' in out.stdout:
            return
    raise SystemExit("the agent did not come online within 120 s")


def describe(reply: dict[str, Any]) -> str:
    if not reply["ok"]:
        err = reply["error"]
        return f"error {err['code']}: {err['message']}"
    what = f"label={reply['label']}" if reply.get("label") else f"answer={reply['answer']!r}"
    return (
        f"{what}  confidence={reply['confidence']:.2f}  source={reply['source']}  "
        f"latency={reply['latency_ms']:.0f} ms  tokens={reply['tokens']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", help="use this broker instead of a private mosquitto")
    parser.add_argument("--device-id", default="demo-device")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    for tool in ("mosquitto_rr", "mosquitto_sub"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: sudo apt-get install mosquitto-clients")

    workdir = Path(tempfile.mkdtemp(prefix="edge-slm-demo-"))
    private = None if args.broker else PrivateBroker(workdir=workdir).start()
    url = BrokerUrl.parse(args.broker or (private.url if private else ""))
    topics = DeviceTopics("slm", args.device_id)
    log_path = workdir / "agent.log"
    say(f"broker   {url}{' (private mosquitto)' if private else ''}")
    say(f"agent    edge-agent run --device-id {args.device_id} --model {args.model}")
    say(f"log      {log_path}")
    with log_path.open("wb") as log:
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "run",
                "--broker",
                str(url),
                "--device-id",
                args.device_id,
                "--model",
                args.model,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_online(url, topics, agent)
            say(f"online   requests on {topics.request}\n")
            for n, (label, body) in enumerate(REQUESTS, 1):
                payload = {"v": 1, "id": f"demo-{n}", **body}
                say(f"[{n}] {label}: {body.get('text', '')!r}")
                say(f"    -> {describe(rr(url, topics.request, payload))}")
            say("\nstopping the agent with SIGTERM (drains in-flight work)")
            agent.send_signal(signal.SIGTERM)
            say(f"agent exited with code {agent.wait(60)}")
        finally:
            if agent.poll() is None:
                agent.kill()
            if private is not None:
                private.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
