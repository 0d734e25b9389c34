"""Small helpers shared by the benchmarks: statistics, /proc readings, result files."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Other processes share the machine: record the load around every run, to judge the figures.
_LOAD_AT_START = os.getloadavg()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 200 samples is the 198th)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def proc_status_kb(pid: int | str, field: str) -> int:
    """A ``kB`` field of /proc/PID/status, e.g. ``VmHWM`` (peak RSS) or ``VmRSS``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def proc_mb(pid: int | str, field: str) -> float:
    """The same in MB (10^6 bytes), the unit the model sizes on disk are given in."""
    return proc_status_kb(pid, field) * 1024 / 1e6


def cpu_busy_s() -> float:
    """CPU seconds every process on the machine has spent busy since boot (/proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(x) for x in Path("/proc/stat").read_text().split()[1:8]
    )
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int | str) -> float:
    """CPU seconds (user + system) process ``pid`` has used, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, *, threshold: float = 0.1, window_s: float = 1.0) -> float:
    """Wait until the machine is idle (others use < ``threshold`` of a core) or time is up.

    Other people's jobs share this 2-core machine; a 2-thread engine loses far more than
    its share when a core is taken. Returns the last busy share seen, in cores.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = cpu_busy_s()
        time.sleep(window_s)
        share = (cpu_busy_s() - before) / window_s
        if share < threshold or time.monotonic() >= deadline:
            return share


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the figures were measured on; goes into every result file."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "load_avg_at_start": _LOAD_AT_START,
        "load_avg_at_end": os.getloadavg(),
        "versions": {
            d: _version(d)
            for d in ("onnxruntime", "onnxruntime-genai", "llama-cpp-python", "paho-mqtt")
        },
    }


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def report(name: str, data: dict[str, Any]) -> int:
    """Write the results file, say where it went, and give ``main``'s exit status (0)."""
    print(f"\nwrote {write_results(name, data)}")
    return 0


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain Markdown table, so the output pastes straight into BENCHMARKS.md."""
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
