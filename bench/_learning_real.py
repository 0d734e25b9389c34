"""``bench/learning.py --real``: the learning curve through the real system.

mosquitto, the real agent (SmolLM2 + MiniLM, the classify cascade), the real relay
(``cloud-relay run``) with a cloud that answers the gold label (``bench/_gold_llm.py``),
and ``cloud-relay learn`` between batches, which fits a head on the logged cloud labels
and pushes it retained; the agent applies it live (its ``head_applied`` log event).

Stream requests name the skill and may escalate (``cloud: auto``); with ``labels`` they
list those labels and name no skill instead, and the relay learns that label set's head
(``learn.label_sets``). Held-out requests are
sent with ``cloud: never``: they never leave the device, so they are never logged nor
learned from; a held-out answer under the agent's classify threshold counts as escalated
(the cloud is right) for the system accuracy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from agent.config import PolicySettings
from bench.routing import cut_at
from edge_slm.contract import Task
from edge_slm.contract.skills import label_set_name
from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, read_events, wait_for_status
from tests.support.app import AppClient
from tests.support.broker import PrivateBroker, free_port
from tests.support.procs import Daemon, Relay

SKILL = "home_intents"
#: The skill a run streams to; a fresh skill also has its TOML text (agent config + relay).
_run: dict[str, Any] = {
    "skill": SKILL,
    "skills_dir": None,
    "paraphrases": 0,
    "paraphrase_temperature": 0.0,
    "embedder": "",  # the agent's and the relay's encoder ("": the agent's default)
    "labels": None,  # requests list these labels and name no skill (a label set learns)
}
#: How a reply answered by a head alone starts its ``reason``.
HEAD_BASES = ("skill head", "label-set head", "zero-shot head")


def _ask(app: AppClient, topics: DeviceTopics, reply_topic: str, text: str, cloud: str) -> Any:
    rid = uuid.uuid4().hex
    body = {"v": 1, "id": rid, "kind": "voice", "task": "classify"}
    body |= {"labels": _run["labels"]} if _run["labels"] else {"skill": _run["skill"]}
    app.publish(topics.request, {**body, "text": text, "cloud": cloud}, response_topic=reply_topic)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        reply = app.next_reply(timeout=120).payload
        if reply.get("id") == rid and not reply.get("supersedes"):
            return reply
    raise TimeoutError(rid)


def _heldout(
    app: AppClient, topics: DeviceTopics, reply: str, held: list[tuple[str, str]], threshold: float
) -> dict[str, Any]:
    outs = [_ask(app, topics, reply, text, "never") for text, _ in held]
    right = [o.get("label") == g for o, (_, g) in zip(outs, held, strict=True)]
    cut = cut_at(right, [float(o.get("confidence") or 0.0) for o in outs], threshold)
    by_head = [str(o.get("reason") or "").startswith(HEAD_BASES) for o in outs]
    lat = sorted(float(o.get("latency_ms") or 0) for o, h in zip(outs, by_head, strict=True) if h)
    n = len(held)
    return {
        "escalated": cut.escalated,
        "edge_accuracy": sum(right) / n,
        "auroc": cut.auroc,
        "system_accuracy": cut.system_accuracy,
        "answered_by_head_alone": sum(by_head) / n,
        "head_alone_p50_ms": lat[len(lat) // 2] if lat else None,
    }


def real_curve(
    stream: list[tuple[str, str]],
    held: list[tuple[str, str]],
    every: int,
    tmp: Path,
    *,
    shadow_rate: float = 0.0,
    learning_shadow_rate: float = 0.0,
    fresh: tuple[str, str] | None = None,
    paraphrases: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``shadow_rate``: the share of confident stream answers the agent also sends to the
    cloud (shadow samples), which the relay learns from too; ``learning_shadow_rate``: the
    agent's rate for a skill while its head is young (halved per pushed version).
    ``fresh``: (name, TOML) of a skill written for the run, given to the agent in its
    config and to the relay's learn as a skills folder, instead of the built-in
    ``home_intents``. ``paraphrases``: a ``bench.paraphrases`` file, kept in the relay's
    store before the stream as the relay keeps what its teacher wrote, and learned from
    once before the first request (``cloud-relay learn``: the skill's first head)."""
    threshold = PolicySettings().thresholds[Task.CLASSIFY]
    agent_env: dict[str, str] = {}
    if fresh is not None:
        import tomllib

        name, text = fresh
        (tmp / "skills").mkdir()
        (tmp / "skills" / f"{name}.toml").write_text(text)
        _run.update(skill=name, skills_dir=tmp / "skills")
        agent_env["EDGE_AGENT_SKILLS"] = json.dumps({name: tomllib.loads(text)})
    gold = tmp / "gold.json"
    gold.write_text(json.dumps(dict(stream)))
    port = free_port()
    cloud = Daemon(
        [*("-m", "bench._gold_llm", "--port", str(port), "--gold", str(gold))], tmp / "gold.log"
    )
    db = f"sqlite:///{tmp / 'relay.db'}"
    points: list[dict[str, Any]] = []
    with PrivateBroker() as broker:
        topics = DeviceTopics("slm", f"learn-{uuid.uuid4().hex[:6]}")
        time.sleep(1.0)
        relay = Relay(
            broker_url=broker.url,
            llm_url=f"http://127.0.0.1:{port}/v1",
            model="gold",
            db=db,
            log_path=tmp / "relay.log",
            ready=True,
            CLOUD_RELAY_LEARN__INTERVAL_S="86400",
        )
        agent = AgentProcess(
            broker_url=broker.url,
            device_id=topics.device_id,
            log_path=tmp / "agent.log",
            EDGE_AGENT_OUTBOX__PATH=str(tmp / "outbox.db"),
            EDGE_AGENT_POLICY__SHADOW_RATE=str(shadow_rate),
            EDGE_AGENT_POLICY__LEARNING_SHADOW_RATE=str(learning_shadow_rate),
            **agent_env,
            **({"EDGE_AGENT_MODEL__EMBEDDER": _run["embedder"]} if _run["embedder"] else {}),
        )
        app = AppClient(broker.port)
        reply = f"apps/{uuid.uuid4().hex}/reply"
        app.subscribe(reply)
        try:
            wait_for_status(broker.port, topics.status, "online", timeout=180)
            points.append(
                {
                    "cloud_labelled": 0,
                    "seen": 0,
                    "head_version": 0,
                    **_heldout(app, topics, reply, held, threshold),
                }
            )
            if paraphrases is not None:
                _keep_paraphrases(db, paraphrases)
                points.append(
                    {
                        "cloud_labelled": 0,
                        "seen": 0,
                        "learn": _learn(db, broker.url, tmp / "agent.log"),
                        **_heldout(app, topics, reply, held, threshold),
                    }
                )
            labelled = 0
            for seen, (text, _) in enumerate(stream, 1):
                out = _ask(app, topics, reply, text, "auto")
                if out.get("escalated"):
                    labelled += 1
                last = seen == len(stream) and points[-1]["seen"] < seen
                if (out.get("escalated") and labelled % every == 0) or last:
                    # The end of the stream learns too: shadow samples may be waiting.
                    learned = _learn(db, broker.url, tmp / "agent.log")
                    points.append(
                        {
                            "cloud_labelled": labelled,
                            "seen": seen,
                            "shadow_samples": _shadow_samples(tmp / "relay.db"),
                            "learn": learned,
                            **_heldout(app, topics, reply, held, threshold),
                        }
                    )
        finally:
            app.close()
            agent.close()
            relay.close()
            cloud.close()
    return {
        "points": points,
        "threshold": threshold,
        "shadow_rate": shadow_rate,
        "learning_shadow_rate": learning_shadow_rate,
        "stream": len(stream),
        "heldout": len(held),
    }


def _keep_paraphrases(db: str, written: dict[str, Any]) -> None:
    """What the relay's teacher would have kept: the file's paraphrases, at the skill's
    fingerprint for the count and temperature they were asked at (``learn.paraphrases``
    and ``learn.paraphrase_temperature``, set to match)."""
    from cloud_relay.store import Paraphrase, open_store

    store = open_store(db)
    try:
        items = [Paraphrase(label, text) for label, text in written["paraphrases"]]
        store.record_paraphrases(_run["skill"], written["fingerprint"], written["model"], items)
    finally:
        store.close()
    _run["paraphrases"] = written["each"]
    _run["paraphrase_temperature"] = written["temperature"]  # bench.paraphrases.load sets it


def _shadow_samples(db: Path) -> int:
    """Shadow samples the relay has logged so far (each one a cloud call)."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM relay_log WHERE reason = 'shadow'").fetchone()
    return int(row[0])


def _learn(db: str, broker_url: str, agent_log: Path) -> dict[str, Any]:
    """Run ``cloud-relay learn`` once; when it pushed a head, wait until the agent has
    applied it. Returns learn's JSON line for the run's skill or label set, or the end of
    its stderr."""
    before = sum(e.get("event") == "head_applied" for e in read_events(agent_log))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud_relay",
            "learn",
            "--db",
            db,
            "--broker",
            broker_url,
            "--skill",
            _run["skill"],
            "--json",
            *(["--skills-dir", str(_run["skills_dir"])] if _run["skills_dir"] else []),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={
            **__import__("os").environ,
            "CLOUD_RELAY_LEARN__MIN_CASES": "5",
            # Kept already (``_keep_paraphrases``): read from the store, the LLM never asked.
            "CLOUD_RELAY_LEARN__PARAPHRASES": str(_run["paraphrases"]),
            "CLOUD_RELAY_LEARN__PARAPHRASE_TEMPERATURE": str(_run["paraphrase_temperature"]),
            "CLOUD_RELAY_LLM__MODEL": "gold",
            **(
                {"CLOUD_RELAY_LEARN__ENCODERS": json.dumps([_run["embedder"]])}
                if _run["embedder"]
                else {}
            ),
        },
    )
    target = label_set_name(_run["labels"]) if _run["labels"] else _run["skill"]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    result = [line for line in lines if line.get("skill") == target]
    pushed = bool(result) and result[0].get("action") == "pushed"
    if pushed:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            events = read_events(agent_log)
            if sum(e.get("event") == "head_applied" for e in events) > before:
                break
            time.sleep(0.2)
    return result[0] if result else {"error": out.stderr[-300:]}
