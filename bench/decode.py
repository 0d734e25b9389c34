"""Decode speed and time to first token: our Engine vs llama.cpp, in one run.

Every measurement runs in a fresh subprocess that holds one engine only, so
resident memory and idle thread pools of one engine never slow the other; the
order of the engines rotates with every repetition. Both engines get the same
prompt token ids (rendered once by our chat template), decode greedily, and
take one warm-up generation before the timed ones.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench._common import median, proc_mb, report, table
from bench._engines import add_clean_run_options, llama_runs, ours_runs, spawn_clean

ROOMS = ("kitchen", "hallway", "bedroom", "garage", "office", "bathroom")
LOG = "\n".join(
    f"{7 + i // 4:02d}:{i % 4 * 15:02d} {ROOMS[i % 6]} {'motion' if i % 3 else 'temp'} "
    f"{'detected' if i % 3 else f'{19 + i % 5}.5 C'}"
    for i in range(32)
)
PROMPTS: dict[str, list[dict[str, str]]] = {
    "short": [{"role": "user", "content": "Write a short story about a robot who learns to cook."}],
    "long": [
        {"role": "system", "content": "You are a home assistant. Answer in detail."},
        {"role": "user", "content": f"Here is today's sensor log:\n{LOG}\nDescribe the day."},
    ],
}


def _model_dir() -> Path:
    from agent.models import DEFAULT_MODEL, ModelCache, default_cache_dir

    return ModelCache(default_cache_dir()).require(DEFAULT_MODEL)


def _gguf() -> Path:
    from agent.modelbuild.gguf import assemble_gguf
    from agent.models import DEFAULT_MODEL, get_entry

    path, _sha = assemble_gguf(get_entry(DEFAULT_MODEL), Path(tempfile.gettempdir()))
    return path


def worker_prompts() -> dict[str, Any]:
    from agent.engine.engine import Engine

    engine = Engine(_model_dir(), name="bench", provider="cpu", threads=1)
    return {name: engine.encode_chat(messages) for name, messages in PROMPTS.items()}


def worker_ours(threads: int, max_tokens: int) -> dict[str, Any]:
    return ours_runs(_model_dir(), threads, max_tokens, PROMPTS, warm_up=PROMPTS["short"])


def worker_llama(threads: int, max_tokens: int, prompts: dict[str, list[int]]) -> dict[str, Any]:
    return llama_runs(_gguf(), threads, max_tokens, prompts, warm_up=prompts["short"], n_ctx=1024)


def _worker(args: argparse.Namespace) -> int:
    if args.worker == "prompts":
        args.out.write_text(json.dumps(worker_prompts()))
        return 0
    if args.worker == "ours":
        result = worker_ours(args.threads, args.max_tokens)
    else:
        prompts = json.loads(args.prompts.read_text())
        result = worker_llama(args.threads, args.max_tokens, prompts)
    result["peak_rss_mb"] = proc_mb("self", "VmHWM")
    result["load_avg_1m"] = os.getloadavg()[0]  # > ~2.5 means someone else was busy too
    args.out.write_text(json.dumps(result))
    return 0


def _summarize(samples: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for key, runs in samples.items():
        summary[key] = {
            "load_s": median([r["load_s"] for r in runs]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "foreign_cpu_share": median([r["foreign_cpu_share"] for r in runs]),
        }
        for p in PROMPTS:
            for metric in ("ttft_ms", "tok_s", "tokens"):
                summary[key][f"{p}_{metric}"] = median([r["runs"][p][metric] for r in runs])
    return summary


def _ratios(summary: dict[str, dict[str, Any]]) -> dict[str, float]:
    """ours/llama.cpp (TTFT: below 1 is better; tok/s: above 1 is better), and t2/t1."""
    ratios: dict[str, float] = {}
    pairs = [("ours/llama", "ours-t2", "llama-t2"), ("ours t2/t1", "ours-t2", "ours-t1")]
    for label, num, den in pairs:
        if num in summary and den in summary:
            for p in PROMPTS:
                for m in ("ttft_ms", "tok_s"):
                    ratios[f"{label} {p}_{m}"] = summary[num][f"{p}_{m}"] / summary[den][f"{p}_{m}"]
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__)
    parser.add_argument("--repetitions", "-n", type=int, default=5, help="runs per engine")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per generation")
    add_clean_run_options(parser, retries=3)
    parser.add_argument("--worker", choices=("prompts", "ours", "llama"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)

    has_llama = importlib.util.find_spec("llama_cpp") is not None
    configs = [("ours", 2), ("ours", 1)] + ([("llama", 2)] if has_llama else [])
    if not has_llama:
        print("NOTE: llama_cpp is not importable (pip install -e '.[bench]'); ours only.")
    samples: dict[str, list[dict[str, Any]]] = {f"{e}-t{t}": [] for e, t in configs}
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        prompts_file = Path(tmp) / "prompts.json"
        prompts_cmd = ["-m", "bench.decode", "--worker", "prompts", "--out", str(prompts_file)]
        subprocess.run([sys.executable, *prompts_cmd], check=True, capture_output=True)
        common = ["--max-tokens", str(args.max_tokens), "--prompts", str(prompts_file)]
        for rep in range(args.repetitions):
            for k in range(len(configs)):  # rotate the order: no engine always runs first
                engine, threads = configs[(rep + k) % len(configs)]
                run_args = ["--worker", engine, "--threads", str(threads), *common]
                out = Path(tmp) / "r.json"
                samples[f"{engine}-t{threads}"].append(
                    spawn_clean("bench.decode", run_args, out, args)
                )
                print(f"rep {rep + 1}/{args.repetitions} {engine} threads={threads} done")
        prompt_tokens = {n: len(ids) for n, ids in json.loads(prompts_file.read_text()).items()}

    summary = _summarize(samples)
    ratios = _ratios(summary)
    cols = [f"{p}_{m}" for p in PROMPTS for m in ("ttft_ms", "tok_s", "tokens")]
    cols += ["load_s", "peak_rss_mb", "foreign_cpu_share"]
    print(f"\nprompt tokens: {prompt_tokens}; medians of {args.repetitions}\n")
    print(table(["engine", *cols], [[k, *[s[c] for c in cols]] for k, s in summary.items()]))
    print("\n" + table(["ratio", "value"], [[k, v] for k, v in ratios.items()]))
    data = {
        "llama_cpp_available": has_llama,
        "repetitions": args.repetitions,
        "max_tokens": args.max_tokens,
        "prompt_tokens": prompt_tokens,
        "summary": summary,
        "ratios": ratios,
        "samples": samples,
    }
    return report("decode", data)


if __name__ == "__main__":
    sys.exit(main())
