"""What the agent's fsync'd escalation outbox costs, and whether it loses rows under SIGKILL.

Throughput, in one process, modes rotated each repetition, each in a fresh SQLite file
next to the agent's default outbox location (same file system as ``$XDG_STATE_HOME``):

* ``full``: ``agent.cloud.outbox.Outbox`` as shipped (WAL + ``synchronous=FULL``), per
  escalation ``add`` then ``mark_published`` (two committed, fsync'd transactions);
* ``full+remove``: the same plus ``remove`` (the reply arrived): the whole lifecycle;
* ``off``: the same class with ``PRAGMA synchronous=OFF`` (no fsync at all);
* ``none``: no outbox: only building the Escalation payload (done in every mode);
* what-ifs for a product change (same file settings, not what the agent does today):
  ``full add-only`` (one fsync'd commit per escalation: ``mark_published`` not
  committed durably) and ``full group-16`` (group commit: 16 escalations inserted in
  one fsync'd transaction, as a batching writer thread would).

SIGKILL loss test: a child process adds rows to a shipped ``Outbox`` as fast as it can
and writes each id to a pipe once ``add`` has returned (acknowledged); the parent
kills it with SIGKILL at a random moment, reads what is left in the pipe, reopens the
file and checks every acknowledged id is there. Repeated ``--kills`` times, for
``full`` and for ``off``. A process kill leaves the page cache intact, so this test
cannot tell the two apart: only a power cut or kernel crash can, which needs the fsync.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench._common import cpu_busy_s, median, proc_cpu_s, report, table, wait_for_quiet

MOSQUITTO_AUTOSAVE_PER_S = 254.0  # the figure for autosave_on_changes at 0 loss
TARGET_PER_S = 4 * MOSQUITTO_AUTOSAVE_PER_S
MODES = ("none", "off", "full", "full+remove", "full add-only", "full group-16")
GROUP = 16


def _state_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    path = Path(state) / "edge-slm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _escalation_row(i: int) -> Any:
    from agent.cloud.outbox import OutboxRow
    from edge_slm.contract import EdgeAnswer, Escalation, EscalationReason, Kind, Task

    now = time.time()
    rid = f"{uuid.uuid4().hex}-{i}"
    esc = Escalation(
        id=rid,
        device_id="bench-device",
        kind=Kind.VOICE,
        task=Task.CLASSIFY,
        text="it's getting really dark in here",
        labels=["lights_on", "lights_off", "open_blinds", "close_blinds"],
        max_tokens=16,
        reason=EscalationReason.LOW_CONFIDENCE,
        reason_text="confidence 0.31 < 0.37 (classify)",
        edge=EdgeAnswer(label="lights_on", confidence=0.31, model="smollm2-135m-instruct"),
        deadline_ms=2000,
        expires_at=now + 60,
        created_at=now,
    )
    return OutboxRow(
        request_id=rid,
        payload=esc.to_wire(),
        reply_topic="apps/bench/reply",
        correlation=rid.encode(),
        corrections=True,
        created_at=now,
        expires_at=now + 60,
    )


def _open(path: Path, sync_off: bool) -> Any:
    from agent.cloud.outbox import Outbox

    box = Outbox(path, max_rows=1_000_000, max_bytes=1 << 34)
    if sync_off:
        box._db.execute("PRAGMA synchronous=OFF")
    return box


def run_mode(mode: str, n: int, directory: Path) -> float:
    """Escalations per second for ``n`` escalations in a fresh file."""
    path = directory / f"outbox-{mode}-{uuid.uuid4().hex[:6]}.db"
    box = None if mode == "none" else _open(path, sync_off=mode == "off")
    start = time.perf_counter()
    batch: list[Any] = []
    for i in range(n):
        row = _escalation_row(i)
        if box is None:
            continue
        if mode == "full group-16":
            batch.append(row)
            if len(batch) == GROUP or i == n - 1:
                _insert_many(box, batch)
                batch = []
            continue
        box.add(row)
        if mode == "full add-only":
            continue
        box.mark_published([row.request_id], time.time())
        if mode == "full+remove":
            box.remove(row.request_id)
    elapsed = time.perf_counter() - start
    if box is not None:
        box.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return n / elapsed


def _insert_many(box: Any, rows: list[Any]) -> None:
    """One transaction (one fsync) for several rows: the group-commit what-if."""
    db = box._db
    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        "INSERT OR IGNORE INTO outbox(request_id, payload, reply_topic, correlation,"
        " corrections, created_at, expires_at, publishes, published_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
        [(r.request_id, r.payload, r.reply_topic, r.correlation, int(r.corrections),
          r.created_at, r.expires_at, time.time()) for r in rows],
    )  # fmt: skip
    db.execute("COMMIT")


def fsync_probe_ms(directory: Path, n: int = 200) -> dict[str, float]:
    """The disk's own price, same run: p50/p99 of (append 200 bytes + fsync) on one file."""
    from bench._common import percentile

    path = directory / "fsync-probe"
    times = []
    with path.open("ab") as f:
        for _ in range(n):
            start = time.perf_counter()
            f.write(b"x" * 200)
            f.flush()
            os.fsync(f.fileno())
            times.append((time.perf_counter() - start) * 1000)
    path.unlink()
    return {"fsync_p50_ms": percentile(times, 50), "fsync_p99_ms": percentile(times, 99)}


# -- SIGKILL test ------------------------------------------------------------------


def child(path: Path, sync_off: bool, fd: int) -> None:
    box = _open(path, sync_off)
    i = 0
    while True:
        row = _escalation_row(i)
        box.add(row)
        os.write(fd, row.request_id.encode() + b"\n")  # acknowledged: add() returned
        box.mark_published([row.request_id], time.time())
        i += 1


def kill_once(directory: Path, sync_off: bool, rng: random.Random) -> dict[str, Any]:
    path = directory / f"kill-{uuid.uuid4().hex[:6]}.db"
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "bench.outbox_durability", "--worker", "child"]
    cmd += ["--path", str(path), "--fd", str(write_fd)] + (["--sync-off"] if sync_off else [])
    proc = subprocess.Popen(cmd, pass_fds=(write_fd,))
    os.close(write_fd)
    buf = bytearray()

    def reader() -> None:
        while chunk := os.read(read_fd, 65536):
            buf.extend(chunk)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    while not buf and proc.poll() is None:
        time.sleep(0.005)
    first = time.perf_counter()
    time.sleep(rng.uniform(0.3, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_after = time.perf_counter() - first
    thread.join(5)  # EOF once the child is gone: every acknowledged id is in buf
    os.close(read_fd)
    acked = [line.decode() for line in bytes(buf).splitlines()]
    # A torn last line cannot happen: each id goes out in one write() under PIPE_BUF.
    db = sqlite3.connect(path)
    stored = {r[0] for r in db.execute("SELECT request_id FROM outbox")}
    db.close()
    lost = [a for a in acked if a not in stored]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {
        "acknowledged": len(acked),
        "stored": len(stored),
        "lost": len(lost),
        "killed_after_s": killed_after,
        "acked_per_s": len(acked) / killed_after,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox_durability", description=__doc__)
    parser.add_argument("--escalations", "-n", type=int, default=2000, help="per mode and rep")
    parser.add_argument("--repetitions", type=int, default=3, help="rotations of the modes")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILL trials per mode")
    parser.add_argument("--seed", type=int, default=1, help="random kill times")
    parser.add_argument("--quiet-wait", type=float, default=60, help="seconds to wait for idle")
    parser.add_argument("--worker", choices=("child",), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sync-off", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "child":
        child(args.path, args.sync_off, args.fd)
        return 0

    rng = random.Random(args.seed)
    samples: dict[str, list[float]] = {m: [] for m in MODES}
    foreign: list[float] = []
    probes: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-outbox-", dir=_state_dir()) as tmp:
        directory = Path(tmp)
        run_mode("full", 200, directory)  # warm-up: imports, pydantic, sqlite
        for rep in range(args.repetitions):
            wait_for_quiet(args.quiet_wait)
            busy0, own0, t0 = cpu_busy_s(), proc_cpu_s("self"), time.perf_counter()
            probes.append(fsync_probe_ms(directory))
            for k in range(len(MODES)):
                mode = MODES[(rep + k) % len(MODES)]
                samples[mode].append(run_mode(mode, args.escalations, directory))
            own = proc_cpu_s("self") - own0
            foreign.append(max(0.0, (cpu_busy_s() - busy0 - own) / (time.perf_counter() - t0)))
            print(f"rep {rep + 1}/{args.repetitions} done; fsync {probes[-1]}", flush=True)
        kills: dict[str, list[dict[str, Any]]] = {"full": [], "off": []}
        for trial in range(args.kills):
            for mode in ("full", "off"):
                kills[mode].append(kill_once(directory, mode == "off", rng))
            print(f"kill {trial + 1}/{args.kills} done", flush=True)

    rates = {m: median(v) for m, v in samples.items()}
    rows = [
        [m, rates[m], min(samples[m]), max(samples[m]), rates[m] / rates["off"],
         rates[m] / MOSQUITTO_AUTOSAVE_PER_S]
        for m in MODES
    ]  # fmt: skip
    print(f"\n{args.escalations} escalations per mode, medians of {args.repetitions}")
    print(f"fsync probe per rep: {probes}; foreign CPU per rep: {foreign}\n")
    print(table(["mode", "escalations/s", "min", "max", "vs off", "vs mosquitto 254/s"], rows))
    kill_rows = [
        [m, len(t), sum(r["acknowledged"] for r in t), sum(r["lost"] for r in t),
         median([r["acked_per_s"] for r in t])]
        for m, t in kills.items()
    ]  # fmt: skip
    print("\n" + table(["mode", "SIGKILLs", "acknowledged ids", "lost", "acked/s (median)"],
                       kill_rows))  # fmt: skip
    met = rates["full"] >= TARGET_PER_S and sum(r["lost"] for r in kills["full"]) == 0
    print(f"\ntarget >= {TARGET_PER_S:.0f}/s with 0 loss (full): {'met' if met else 'NOT met'}")
    data = {
        "escalations": args.escalations,
        "repetitions": args.repetitions,
        "directory_parent": str(_state_dir()),
        "mosquitto_autosave_per_s": MOSQUITTO_AUTOSAVE_PER_S,
        "target_per_s": TARGET_PER_S,
        "rates_median": rates,
        "samples": samples,
        "foreign_cpu_share": foreign,
        "fsync_probe": probes,
        "kills": kills,
        "target_met": met,
    }
    return report("outbox_durability", data)


if __name__ == "__main__":
    sys.exit(main())
