"""The whole system for end-to-end tests: mosquitto, `edge-agent serve` as the cloud LLM,
the relay and the agent, each a real process (the ``system`` fixture builds one)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from agent.models import DEFAULT_MODEL
from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, wait_for_status
from tests.support.app import AppClient
from tests.support.broker import PrivateBroker
from tests.support.procs import LlmServer, Relay


class System:
    def __init__(
        self, broker: PrivateBroker, llm: LlmServer, topics: DeviceTopics, tmp: Path
    ) -> None:
        self.broker = broker
        self.llm = llm
        self.topics = topics
        self.tmp = tmp
        self.db = f"sqlite:///{tmp / 'relay.db'}"
        self.relays: list[Relay] = []
        self.agents: list[AgentProcess] = []
        self.app = AppClient(broker.port)
        self.reply_topic = f"apps/{uuid.uuid4().hex}/reply"
        self.app.subscribe(self.reply_topic)
        self.spy = AppClient(broker.port)
        self.spy.subscribe(topics.escalation)

    def start_relay(self, **env: str) -> Relay:
        relay = Relay(
            broker_url=self.broker.url,
            llm_url=self.llm.base_url,
            model=DEFAULT_MODEL,
            db=self.db,
            log_path=self.tmp / f"relay-{len(self.relays)}.log",
            **env,
        )
        self.relays.append(relay)
        relay.wait_event("relay_started")
        return relay

    def start_agent(self, **env: str) -> AgentProcess:
        settings = {
            "EDGE_AGENT_OUTBOX__PATH": str(self.tmp / "outbox.db"),
            "EDGE_AGENT_OUTBOX__REPUBLISH_S": "1",
            **env,
        }
        agent = AgentProcess(
            broker_url=self.broker.url,
            device_id=self.topics.device_id,
            log_path=self.tmp / f"agent-{len(self.agents)}.log",
            **settings,
        )
        self.agents.append(agent)
        wait_for_status(self.broker.port, self.topics.status, "online")
        return agent

    def ask(self, request_id: str, **fields: Any) -> None:
        payload = {"v": 1, "id": request_id, "text": "turn on the lights", **fields}
        self.app.publish(self.topics.request, payload, response_topic=self.reply_topic)

    def relay_rows(self) -> list[dict[str, Any]]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "cloud_relay",
                "logs",
                "--db",
                self.db,
                "--json",
                "--limit",
                "1000",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def close(self) -> None:
        for agent in self.agents:
            agent.close()
        for relay in self.relays:
            relay.close()
        self.app.close()
        self.spy.close()
