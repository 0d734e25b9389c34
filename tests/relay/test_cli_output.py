"""What the CLIs print for people: a quiet end on a closed pipe, rounded figures,
``devices`` and ``stats`` that agree on what is unknown and on what "errors" means."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cloud_relay.cli import main
from cloud_relay.store import Final, NewEscalation, StatusUpdate, TelemetrySample, open_store
from edge_slm.console import EXIT_CLOSED_PIPE
from edge_slm.contract import Outcome

ROOT = Path(__file__).resolve().parents[2]
NOISY_COST = 0.00021050000000000002  # 0.0002105 plus float noise, as the price math makes it


def _escalate(store: Any, device: str, rid: str, at: float, **final: Any) -> None:
    store.claim(
        NewEscalation(device_id=device, request_id=rid, relay_id="r", received_at=at),
        stale_before=0,
    )
    fields: dict[str, Any] = {"outcome": Outcome.OK, "reply": "{}", "latency_ms": 5.0}
    store.finalize(device, rid, Final(answered_at=at + 1, **(fields | final)))


@pytest.fixture
def db(tmp_path: Path) -> str:
    """'kitchen': sent telemetry (one failed reply of its own), no relay failure;
    'porch': a retained status only; 'garage': one escalation the relay failed."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = open_store(url)
    now = time.time()
    try:
        _escalate(store, "kitchen", "k1", now - 60, cost_usd=NOISY_COST, tokens_in=1403)
        _escalate(store, "kitchen", "k2", now - 50, cost_usd=0.1)
        _escalate(store, "kitchen", "k3", now - 40, cost_usd=0.2)
        _escalate(store, "garage", "g1", now - 30, outcome=Outcome.LLM_ERROR, error="HTTP 500")
        store.record_telemetry(
            TelemetrySample(
                device_id="kitchen",
                ts=now - 20,
                received_at=now - 20,
                started_at=now - 600,
                model="smol",
                provider="cpu",
                requests={"edge": 5, "cloud": 3, "edge-fallback": 0, "error": 1},
                escalations=3,
                cost_avoided_usd=0.1 + 0.2,  # 0.30000000000000004
                latency_ms={"edge": (80.0, 120.0)},
                conditions=None,
                raw=json.dumps({"device_id": "kitchen"}),
            )
        )
        store.record_status(
            StatusUpdate(
                device_id="porch",
                state="online",
                received_at=now - 5,
                ts=now - 5,
                live=True,
                model="smol",
                provider="cpu",
                version="0.1.0",
                conditions=None,
            )
        )
    finally:
        store.close()
    return url


def _table(out: str) -> dict[str, dict[str, str]]:
    """A printed table as {first cell: {header: cell}}; headers hold single spaces only."""
    lines = out.splitlines()
    starts = [0] + [i + 2 for i in range(len(lines[0]) - 1) if lines[0][i : i + 2] == "  "]
    starts = [s for s in starts if lines[0][s] != " "]
    bounds = [*zip(starts, [*starts[1:], None], strict=True)]
    headers = [lines[0][a:b].strip() for a, b in bounds]
    rows = [[line[a:b].strip() for a, b in bounds] for line in lines[1:]]
    return {r[0]: dict(zip(headers, r, strict=True)) for r in rows}


# -- a closed pipe -------------------------------------------------------------


def _into_closed_pipe(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with stdout a pipe nobody reads any more (``| head -0``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            argv,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "TMPDIR": str(tmp_path)},
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "cloud_relay", "stats", "--json"],
        ["-m", "cloud_relay", "logs", "--json"],
        ["-m", "cloud_relay", "devices"],
        ["-m", "agent", "skills", "list"],
        ["-m", "scripts.demo"],  # its first line comes before any model is needed
    ],
    ids=["relay-stats", "relay-logs", "relay-devices", "agent-skills", "demo"],
)
def test_a_closed_pipe_ends_quietly(command: list[str], db: str, tmp_path: Path) -> None:
    argv = [sys.executable, *command]
    if "cloud_relay" in command:
        argv += ["--db", db]
    done = _into_closed_pipe(argv, tmp_path)
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert done.returncode == EXIT_CLOSED_PIPE


def test_logs_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    """``cloud-relay logs --json | head -1`` with more rows than the pipe holds."""
    url = f"sqlite:///{tmp_path / 'many.db'}"
    store = open_store(url)
    try:
        with store.transaction():
            for i in range(300):
                _escalate(store, "kitchen", f"k{i}", 1000.0 + i, cloud_answer="warm " * 100)
    finally:
        store.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_relay", "logs", "--db", url, "--json", "--limit", "300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["request_id"] == "k0"
    proc.stdout.close()  # what head does after its line
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err
    assert proc.returncode == EXIT_CLOSED_PIPE


# -- rounded figures -------------------------------------------------------------


def test_costs_are_rounded_in_json(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "--db", db, "--json", "--device", "kitchen", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "00000000" not in out
    assert json.loads(out.splitlines()[0])["cost_usd"] == 0.0002105

    assert main(["stats", "--db", db, "--json"]) == 0
    out = capsys.readouterr().out
    assert "00000000" not in out
    stats = {s["device_id"]: s for s in json.loads(out)}
    assert stats["kitchen"]["cost_usd"] == 0.300211  # 6 significant digits
    assert stats["kitchen"]["cost_avoided_usd"] == 0.3

    assert main(["devices", "--db", db, "--json"]) == 0
    out = capsys.readouterr().out
    assert "00000000" not in out
    assert {d["device_id"]: d for d in json.loads(out)}["kitchen"]["cost_avoided_usd"] == 0.3


# -- devices and stats agree -------------------------------------------------------


def test_devices_show_unknown_before_the_first_telemetry(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["devices", "--db", db]) == 0
    rows = _table(capsys.readouterr().out)
    porch, kitchen = rows["porch"], rows["kitchen"]
    for column in ("edge", "cloud", "fallback", "device errors", "esc %", "cost avoided $"):
        assert porch[column] == "-", column
    assert (kitchen["edge"], kitchen["device errors"]) == ("5", "1")

    assert main(["devices", "--db", db, "--json"]) == 0
    devices = {d["device_id"]: d for d in json.loads(capsys.readouterr().out)}
    unknown = devices["porch"]
    assert unknown["requests"] is None
    assert unknown["escalations"] is None
    assert unknown["cost_avoided_usd"] is None
    assert devices["kitchen"]["requests"]["error"] == 1


def test_errors_are_named_by_whose_they_are(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--db", db]) == 0
    rows = _table(capsys.readouterr().out)
    assert (rows["kitchen"]["relay errors"], rows["garage"]["relay errors"]) == ("0", "1")
    assert rows["garage"]["relay error %"] == "100.0"
    assert main(["stats", "--db", db, "--json"]) == 0
    stats = {s["device_id"]: s for s in json.loads(capsys.readouterr().out)}
    assert (stats["garage"]["relay_errors"], stats["garage"]["relay_error_rate"]) == (1, 1.0)
    assert "errors" not in stats["garage"]
