"""End-to-end demo: broker, local "cloud" LLM, relay and agent, with real requests.

Run through ``scripts/demo.sh`` (which sets everything up first). Everything
runs on this machine: a private mosquitto, ``edge-agent serve`` with the bigger
model as the offline stand-in for a cloud LLM, ``cloud-relay run`` with a
SQLite log, and ``edge-agent run`` with the small on-device model.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from edge_slm.console import SEP, line, quiet_on_closed_pipe, shorten, terminal_width
from edge_slm.logs import configure_logging
from edge_slm.mqtt import BrokerUrl, Inbound, MqttConnection
from edge_slm.topics import DeviceTopics, status_wildcard
from tests.support.broker import PrivateBroker, free_port

# The built-in skills: voice commands go through the cascade (the skill's head first,
# the SLM where it is unsure, the cloud under the threshold); sensor reports are
# judged by the sensor_state skill (its bands, then the SLM).
VOICE_SKILL = "home_intents"
SENSOR_SKILL = "sensor_state"
DEVICE = "demo-kitchen"


def _sensor(name: str, value: float, unit: str, text: str) -> dict[str, Any]:
    return {
        "kind": "sensor",
        "text": text,
        "sensor": {"name": name, "value": value, "unit": unit},
        "task": "classify",
        "skill": SENSOR_SKILL,
    }


SCRIPT: list[tuple[str, dict[str, Any]]] = [
    (
        "voice",
        {
            "kind": "voice",
            "text": "turn on the kitchen lights",
            "task": "classify",
            "skill": VOICE_SKILL,
        },
    ),
    (
        "voice",
        {
            "kind": "voice",
            "text": "uh can you put on some jazz",
            "task": "classify",
            "skill": VOICE_SKILL,
        },
    ),
    (
        "voice",
        {
            "kind": "voice",
            "text": "it's getting really dark in here",
            "task": "classify",
            "skill": VOICE_SKILL,
        },
    ),
    (
        "voice",
        {
            "kind": "voice",
            "text": "lock the front door please",
            "task": "classify",
            "skill": VOICE_SKILL,
        },
    ),
    ("sensor", _sensor("living_room/temp", 21.5, "°C", "Living room temperature report")),
    ("sensor", _sensor("kitchen/co2", 2400, "ppm", "Kitchen air quality report")),
    (
        "sensor skill",  # the skill's bands judge these readings: no model runs
        {
            "kind": "sensor",
            "text": "Garage freezer check",
            "sensor": [
                {"name": "garage/freezer_temperature", "value": -5.0, "unit": "°C"},
                {"name": "garage/battery", "value": 40, "unit": "%"},
            ],
            "task": "classify",
            "skill": "sensor_state",
        },
    ),
    ("question", {"text": "How many minutes are in three hours?", "max_tokens": 40}),
    (
        "question",
        {
            "text": "Explain step by step how to bleed a radiator, then compare it with "
            "flushing a boiler and list all the tools needed for both.",
            "max_tokens": 80,
        },
    ),
    (
        "cloud:always",
        {"text": "What is the capital of Australia?", "cloud": "always", "max_tokens": 24},
    ),
    (
        "deadline 0.6s",
        {
            "kind": "voice",
            "text": "switch off every light downstairs",
            "task": "classify",
            "skill": VOICE_SKILL,
            "cloud": "always",
            "deadline_ms": 600,
        },
    ),
    (
        "private",
        {
            "text": "Remind me to call Anna at +49 30 1234567 about the alarm code",
            "cloud": "never",
            "max_tokens": 32,
        },
    ),
    (
        "PII",
        {
            "text": "Email anna.schmidt@example.com that the washing machine at "
            "192.168.1.44 finished",
            "task": "summarize",
            "max_tokens": 40,
            "cloud": "always",
        },
    ),
    # An action: one tool call, constrained to the tool set's schema, with a confidence.
    ("action", {"text": "set the bedroom to 21 degrees", "task": "act", "tool_set": "home"}),
    # A high-risk tool: the edge call escalates unless its confidence reaches 0.9.
    ("high-risk action", {"text": "disarm the alarm", "task": "act", "tool_set": "home"}),
    ("bad input", {"text": "hi", "task": "classify"}),
]

COLORS = {"edge": "32", "cloud": "36", "edge-fallback": "33", "error": "31"}


def paint(text: str, what: str) -> str:
    if not sys.stdout.isatty():
        return text
    return f"\033[{COLORS.get(what, '0')}m{text}\033[0m"


def say(text: str = "") -> None:
    print(text, flush=True)


class Stack:
    """The demo's processes, stopped in reverse order."""

    def __init__(self, workdir: Path, stack: ExitStack) -> None:
        self.workdir = workdir
        self._stack = stack

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

        def stop() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()

        self._stack.callback(stop)
        return proc


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}; see its log")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not come up within {timeout:.0f} s")


class App:
    """A small MQTT v5 app: sends requests, collects every reply by id."""

    def __init__(self, broker: BrokerUrl) -> None:
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.status: dict[str, str] = {}
        self.conn = MqttConnection(
            url=broker,
            client_id=f"demo-app-{os.getpid()}",
            on_connect=lambda: self.conn.subscribe(
                [("demo/replies/#", 1), (status_wildcard("slm"), 1)]
            ),
            on_message=self._on_message,
            session_expiry_s=0,
        )

    def _on_message(self, msg: Inbound) -> None:
        payload = json.loads(msg.payload)
        if msg.topic.endswith("/status"):
            self.status[msg.topic] = payload.get("state", "?")
        else:
            self.replies.put(payload)

    def send(self, topic: str, payload: dict[str, Any]) -> None:
        self.conn.publish(
            topic,
            json.dumps(payload).encode(),
            response_topic=f"demo/replies/{payload['id']}",
            correlation_data=payload["id"].encode(),
        )


#: The reply table's columns and widths; "reason" takes what is left of the terminal.
COLUMNS = {"#": 2, "request": 13, "text": 44, "source": 13, "answer": 38, "conf": 4, "latency": 9}
RIGHT = {0, 5, 6}  # "#", "conf", "latency"
#: The reason's width when stdout is not a terminal, and its least on a narrow one.
REASON_PIPED, REASON_MIN = 70, 30


def reason_width() -> int:
    fixed = sum(COLUMNS.values()) + len(SEP) * len(COLUMNS)
    return max(terminal_width(fixed + REASON_PIPED) - fixed, REASON_MIN)


def header(reason: int) -> str:
    return line([*COLUMNS, "reason"], [*COLUMNS.values(), reason], right=RIGHT)


def row(n: int, label: str, text: str, reply: dict[str, Any], reason: int) -> str:
    """One reply, each cell cut at a word boundary to its column (``reason`` wide)."""
    widths = [*COLUMNS.values(), reason]
    lead = [str(n), shorten(label, widths[1]), shorten(text, widths[2])]
    if not reply["ok"]:
        err = reply["error"]
        tag = "correction" if reply.get("supersedes") else "error"
        rest = sum(widths[4:]) + len(SEP) * (len(widths) - 5)  # answer to reason
        message = shorten(f"{err['code']}: {err['message']}", rest)
        return paint(line([*lead, tag, message], [*widths[:4], rest]), "error")
    source = reply["source"]
    if reply.get("supersedes"):
        source = "correction"
    answer = reply.get("label") or reply.get("answer") or ""
    conf = f"{reply['confidence']:.2f}" if reply.get("confidence") is not None else "-"
    cells = [
        *lead,
        source,
        shorten(answer, widths[4]),
        conf,
        f"{reply.get('latency_ms', 0):.0f} ms",
        shorten(reply.get("reason", ""), reason),
    ]
    return paint(line(cells, widths, right=RIGHT), reply["source"])


@quiet_on_closed_pipe
def main() -> int:  # noqa: PLR0915 - a linear script reads best in one piece
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edge-model", default="smollm2-135m-instruct")
    parser.add_argument("--cloud-model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--wait", type=float, default=60, help="seconds to wait for late answers")
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        raise SystemExit("mosquitto is missing: sudo apt-get install mosquitto")

    workdir = Path(tempfile.mkdtemp(prefix="edge-slm-demo-"))
    py = sys.executable
    db = f"sqlite:///{workdir / 'relay.db'}"
    with ExitStack() as stack:
        broker = PrivateBroker(workdir=workdir)
        broker.start()
        stack.callback(broker.stop)
        url = BrokerUrl.parse(broker.url)
        procs = Stack(workdir, stack)
        llm_port = free_port()
        say(f"workdir  {workdir}  (logs of every process)")
        say(f"broker   {url} (private mosquitto)")
        say(f"cloud    edge-agent serve --model {args.cloud_model} on 127.0.0.1:{llm_port}")
        llm = procs.spawn(
            "cloud-llm",
            [
                py,
                "-m",
                "agent",
                "serve",
                "--model",
                args.cloud_model,
                "--port",
                str(llm_port),
                "--log-format",
                "json",
            ],
        )
        say(f"relay    cloud-relay run --db {db}")
        procs.spawn(
            "relay",
            [
                py,
                "-m",
                "cloud_relay",
                "run",
                "--broker",
                str(url),
                "--llm-url",
                f"http://127.0.0.1:{llm_port}/v1",
                "--llm-model",
                args.cloud_model,
                "--db",
                db,
            ],
            {"CLOUD_RELAY_LOG_FORMAT": "json"},
        )
        say(f"agent    edge-agent run --device-id {DEVICE} --model {args.edge_model}")
        agent = procs.spawn(
            "agent",
            [
                py,
                "-m",
                "agent",
                "run",
                "--broker",
                str(url),
                "--device-id",
                DEVICE,
                "--model",
                args.edge_model,
            ],
            {
                "EDGE_AGENT_OUTBOX__PATH": str(workdir / "outbox.db"),
                "EDGE_AGENT_LOG_FORMAT": "json",
                "EDGE_AGENT_POLICY__REDACT_NAMES": '["Anna", "Schmidt"]',
                # Frequent telemetry so the fleet view has numbers before the demo ends.
                "EDGE_AGENT_TELEMETRY__INTERVAL_S": "2",
            },
        )
        wait_http(f"http://127.0.0.1:{llm_port}/health", llm, "the cloud LLM server")
        app = App(url)
        app.conn.start(connect_timeout_s=10)
        stack.callback(app.conn.stop)
        topics = DeviceTopics("slm", DEVICE)
        deadline = time.monotonic() + 120
        while app.status.get(topics.status) != "online":
            if agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the agent did not come online; see agent.log")
            time.sleep(0.1)

        reason = reason_width()
        say("\n" + header(reason))
        sent: dict[str, tuple[int, str, str]] = {}
        finals: set[str] = set()
        corrections_due: set[str] = set()
        for n, (label, body) in enumerate(SCRIPT, 1):
            request_id = f"demo-{n}"
            payload = {"v": 1, "id": request_id, "deadline_ms": 8000, **body}
            sent[request_id] = (n, label, body.get("text", ""))
            app.send(topics.request, payload)
            # One request at a time, so the table reads like a conversation.
            while request_id not in finals:
                reply = app.replies.get(timeout=120)
                n0, l0, t0 = sent[reply["id"]]
                say(row(n0, l0, t0, reply, reason))
                if reply.get("supersedes"):
                    corrections_due.discard(reply["id"])
                else:
                    finals.add(reply["id"])
                    if reply.get("source") == "edge-fallback":
                        corrections_due.add(reply["id"])
        late_deadline = time.monotonic() + args.wait
        while corrections_due and time.monotonic() < late_deadline:
            try:
                reply = app.replies.get(timeout=1)
            except queue.Empty:
                continue
            n0, l0, t0 = sent[reply["id"]]
            say(row(n0, l0, t0, reply, reason))
            corrections_due.discard(reply["id"])

        time.sleep(2.5)  # one more telemetry interval, and the relay's last rows
        say("\n$ cloud-relay devices")
        subprocess.run([py, "-m", "cloud_relay", "devices", "--db", db], check=False)
        say("\n$ cloud-relay stats")
        subprocess.run([py, "-m", "cloud_relay", "stats", "--db", db], check=False)
        say("\n$ cloud-relay logs --limit 6")
        subprocess.run([py, "-m", "cloud_relay", "logs", "--db", db, "--limit", "6"], check=False)
        dash_port = free_port()
        say(f"\n$ cloud-relay dashboard --db {db} --port {dash_port}   (asking its API)")
        dash = procs.spawn(
            "dashboard",
            [py, "-m", "cloud_relay", "dashboard", "--db", db, "--port", str(dash_port)],
            {"CLOUD_RELAY_LOG_FORMAT": "json"},
        )
        base = f"http://127.0.0.1:{dash_port}"
        wait_http(f"{base}/health", dash, "the dashboard", timeout=30)
        shown = check_dashboard(base)
        say("\nstopping: dashboard, agent, relay, cloud LLM, broker (SIGTERM, in reverse order)")
    say(f"\nThe relay log stays in {workdir}. To browse it (read-only, 127.0.0.1 only):")
    say(f"  .venv/bin/cloud-relay dashboard --db {db}")
    say("  then open http://127.0.0.1:8787/")
    return 0 if shown else 1


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def check_dashboard(base: str) -> bool:
    """What the dashboard's API shows for the demo's store; False if telemetry is missing."""
    summary = _get_json(f"{base}/api/summary")
    devices = _get_json(f"{base}/api/devices")["devices"]
    series = _get_json(f"{base}/api/series")
    fleet = ", ".join(f"{d['device_id']} {d['status']}" for d in devices) or "none"
    avoided = summary["cost_avoided_usd"]
    say(
        f"dashboard  {summary['escalations']} escalations, devices: {fleet}, cost avoided "
        f"{'-' if avoided is None else f'${avoided:.6f}'} (telemetry), "
        f"{len(series['t'])} chart buckets of {series['bucket_s']} s"
    )
    with_telemetry = [d for d in devices if d["telemetry"] is not None]
    if not with_telemetry or avoided is None or summary["escalations"] == 0:
        say(paint("the dashboard shows no telemetry or no escalations: see the logs", "error"))
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
