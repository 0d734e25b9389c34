"""CPU and latency of a classify with onnxruntime's threads spinning or sleeping (``model.spin``).

After a run, onnxruntime's intra-op pool threads spin-wait for the next op for a
while before they sleep. A request that comes back to back with the last one finds
them awake; a request that comes alone pays nothing for it but leaves a core busy
after its answer. Each setting runs in a fresh subprocess (one engine each, the
order alternating per repetition) on the agent's classify path: the built-in
``home_intents`` skill with its prefix kept and distinguishing-prefix scoring, as
the 135M's fit ships. Two loads:

- **back to back**: the next classify starts as soon as the last one is done;
- **sporadic**: one classify every ``--gap`` seconds (a device answering events).

Per classify: wall-time p50 and the process's CPU (all threads) over the loop
divided by the classifies, so the spinning after each one is counted. Ratios are
spin off against spin on, within one repetition.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import median, table, write_results
from bench._engines import add_clean_run_options, spawn_clean

TEXTS = [
    "turn the hallway lights off",
    "it's freezing in here",
    "put on some jazz",
    "is it going to rain tomorrow",
    "lock up the front door",
    "wake me in ten minutes",
]
SETTINGS = {"on": True, "off": False}


def _loop(engine: Any, prompt: Any, n: int, gap_s: float) -> dict[str, float]:
    walls = []
    cpu0 = time.process_time()
    for i in range(n):
        start = time.perf_counter()
        engine.classify_fixed(prompt, TEXTS[i % len(TEXTS)], scoring="prefix")
        walls.append((time.perf_counter() - start) * 1000)
        if gap_s:
            time.sleep(gap_s)
    return {
        "p50_ms": median(walls),
        "cpu_ms_per_request": (time.process_time() - cpu0) * 1000 / n,
    }


def worker(spin: bool, n: int, gap_s: float, out: Path) -> None:
    from agent.engine.engine import Engine
    from agent.models import DEFAULT_MODEL, ModelCache, default_cache_dir
    from agent.skills import SkillRegistry

    engine = Engine(
        ModelCache(default_cache_dir()).require(DEFAULT_MODEL),
        name="bench",
        provider="cpu",
        spin=spin,
    )
    skill = SkillRegistry().get("home_intents")
    assert skill is not None
    prompt = skill.prompt()
    for text in TEXTS:  # prefill the kept prefix and warm up, untimed
        engine.classify_fixed(prompt, text, scoring="prefix")
    result = {
        "threads": engine.threads,
        "back_to_back": _loop(engine, prompt, n, 0.0),
        "sporadic": _loop(engine, prompt, n, gap_s),
    }
    out.write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spin", description=__doc__)
    parser.add_argument("--requests", "-n", type=int, default=40, help="classifies per load")
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between sporadic ones")
    parser.add_argument("--reps", type=int, default=2, help="repetitions (order alternates)")
    add_clean_run_options(parser, retries=2)
    parser.add_argument("--worker", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(SETTINGS[args.worker], args.requests, args.gap, args.out)
        return 0

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-spin-") as tmp:
        for rep in range(args.reps):
            order = ["on", "off"] if rep % 2 == 0 else ["off", "on"]
            for setting in order:
                out = Path(tmp) / f"{setting}-{rep}.json"
                opts = ["--worker", setting, "-n", str(args.requests), "--gap", str(args.gap)]
                result = spawn_clean("bench.spin", opts, out, args)
                runs.append({"rep": rep, "spin": setting, **result})
                print(f"  rep {rep} spin {setting}: {json.dumps(result)}", flush=True)

    rows: list[dict[str, Any]] = []
    ratios = {}
    for load in ("back_to_back", "sporadic"):
        by = {}
        for setting in SETTINGS:
            mine = [r[load] for r in runs if r["spin"] == setting]
            by[setting] = {
                "p50_ms": median([m["p50_ms"] for m in mine]),
                "cpu_ms_per_request": median([m["cpu_ms_per_request"] for m in mine]),
            }
            rows.append({"load": load, "spin": setting, **by[setting]})
        ratios[load] = {
            "p50_off_over_on": by["off"]["p50_ms"] / by["on"]["p50_ms"],
            "cpu_off_over_on": by["off"]["cpu_ms_per_request"] / by["on"]["cpu_ms_per_request"],
        }
    print()
    print(
        table(
            ["load", "spin", "classify p50 ms", "CPU ms per classify"],
            [[r["load"], r["spin"], r["p50_ms"], r["cpu_ms_per_request"]] for r in rows],
        )
    )
    for load, ratio in ratios.items():
        print(
            f"{load}: spin off / on = p50 x{ratio['p50_off_over_on']:.2f}, "
            f"CPU x{ratio['cpu_off_over_on']:.2f}"
        )
    data = {"requests": args.requests, "gap_s": args.gap, "runs": runs, "rows": rows}
    print(f"wrote {write_results('spin', {**data, 'ratios': ratios})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
