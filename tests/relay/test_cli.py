"""``cloud-relay logs`` and ``stats`` against a store filled through its API."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloud_relay.cli import main
from cloud_relay.store import Final, NewEscalation, open_store
from edge_slm.contract import Outcome


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = open_store(url)
    now = time.time()
    rows = [
        ("kitchen", "k1", Outcome.OK, 100.0, now - 7200),
        ("kitchen", "k2", Outcome.LLM_ERROR, 300.0, now - 60),
        ("garage", "g1", Outcome.OK, 200.0, now - 30),
    ]
    for device, rid, outcome, latency, at in rows:
        store.claim(
            NewEscalation(
                device_id=device, request_id=rid, relay_id="r", received_at=at, task="answer"
            ),
            stale_before=0,
        )
        store.finalize(
            device,
            rid,
            Final(
                outcome=outcome,
                answered_at=at + 1,
                reply=json.dumps({"id": rid}),
                latency_ms=latency,
                tokens_in=100,
                tokens_out=20,
                cost_usd=0.25,
                cloud_answer="fine" if outcome is Outcome.OK else None,
                error=None if outcome is Outcome.OK else "internal: HTTP 500",
                agreement=True if outcome is Outcome.OK else None,
            ),
        )
    store.close()
    return url


def test_logs_table_and_filters(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "--db", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("received (UTC)")
    assert [line.split()[2] for line in lines[1:]] == [
        "kitchen",
        "kitchen",
        "garage",
    ]  # oldest first
    assert "internal: HTTP 500" in lines[2]

    assert main(["logs", "--db", db, "--since", "10m", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["request_id"] for r in rows] == ["k2", "g1"]

    assert (
        main(["logs", "--db", db, "--outcome", "llm_error", "--device", "kitchen", "--json"]) == 0
    )
    (row,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert row["request_id"] == "k2"

    assert main(["logs", "--db", db, "--limit", "1", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1

    assert main(["logs", "--db", db, "--since", "last tuesday"]) == 2


def test_stats_json_and_table(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--db", db, "--json"]) == 0
    stats = {s["device_id"]: s for s in json.loads(capsys.readouterr().out)}
    assert stats["kitchen"]["escalations"] == 2
    assert stats["kitchen"]["relay_error_rate"] == 0.5
    assert stats["kitchen"]["p50_ms"] == 200.0
    assert stats["*fleet*"]["escalations"] == 3
    assert stats["*fleet*"]["cost_usd"] == 0.75
    assert stats["*fleet*"]["agreement_rate"] == 1.0
    assert main(["stats", "--db", db, "--since", "1h"]) == 0
    table = capsys.readouterr().out
    assert "kitchen" in table
    assert "garage" in table
    assert "p95 ms" in table


def test_logs_follow_prints_new_final_rows(db: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_relay", "logs", "--db", db, "--follow", "--json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for _ in range(3):
            proc.stdout.readline()  # the existing rows
        store = open_store(db)
        now = time.time()
        store.claim(
            NewEscalation(device_id="porch", request_id="p1", relay_id="r", received_at=now),
            stale_before=0,
        )
        store.finalize(
            "porch",
            "p1",
            Final(outcome=Outcome.OK, answered_at=now + 0.1, reply="{}", latency_ms=5),
        )
        store.close()
        line = proc.stdout.readline()
        assert json.loads(line)["request_id"] == "p1"
    finally:
        proc.terminate()
        proc.wait(5)
