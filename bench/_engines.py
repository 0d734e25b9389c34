"""What the engine benchmarks share: one timed generation per engine, and a runner
that redoes a measurement subprocess when other processes took CPU meanwhile."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import cpu_busy_s, wait_for_quiet


def ours_timed(engine: Any, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    """One greedy generation with our Engine: TTFT, and decode tok/s after the first token."""
    g = engine.generate(messages, max_tokens=max_tokens)
    steps = g.completion_tokens + (g.finish_reason == "stop")  # an EOS step costs a forward
    return {
        "prompt_tokens": g.prompt_tokens,
        "ttft_ms": g.ttft_s * 1000,
        "tokens": g.completion_tokens,
        "steps": steps,
        "tok_s": (steps - 1) / (g.total_s - g.ttft_s) if steps > 1 else float("nan"),
    }


def llama_timed(llm: Any, ids: list[int], budget: int) -> dict[str, Any]:
    """One greedy llama.cpp generation of exactly ``budget`` tokens from a full prefill."""
    llm.reset()  # no prefix reuse from the previous prompt
    t0 = time.perf_counter()
    first = end = t0
    count = 0
    # generate() never stops at EOS by itself: every run decodes exactly `budget` tokens.
    for _tok in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        count += 1
        end = time.perf_counter()
        if count == 1:
            first = end
        if count == budget:
            break
    return {
        "prompt_tokens": len(ids),
        "ttft_ms": (first - t0) * 1000,
        "tokens": count,
        "steps": count,
        "tok_s": (count - 1) / (end - first),
    }


def ours_runs(
    model_dir: Path,
    threads: int,
    max_tokens: int,
    prompts: dict[str, list[dict[str, str]]],
    warm_up: list[dict[str, str]],
) -> dict[str, Any]:
    """A measurement worker's body for our Engine: load it (timed), take one short
    warm-up generation, then one timed generation per prompt."""
    from agent.engine.engine import Engine

    start = time.perf_counter()
    engine = Engine(model_dir, name="bench", provider="cpu", threads=threads)
    load_s = time.perf_counter() - start
    engine.generate(warm_up, max_tokens=8)
    runs = {name: ours_timed(engine, msgs, max_tokens) for name, msgs in prompts.items()}
    return {"load_s": load_s, "runs": runs}


def llama_runs(
    gguf: Path,
    threads: int,
    max_tokens: int,
    prompts: dict[str, list[int]],
    warm_up: list[int],
    **options: int,
) -> dict[str, Any]:
    """The same for llama.cpp on ``gguf`` (``options``: ``n_ctx`` and the like), fed the
    token ids our chat template rendered, so both engines see the same prompt."""
    from llama_cpp import Llama

    start = time.perf_counter()
    llm: Any = Llama(  # Any: llama_cpp is typed only partly, and absent in CI
        model_path=str(gguf), n_threads=threads, n_threads_batch=threads, verbose=False, **options
    )
    load_s = time.perf_counter() - start
    llama_timed(llm, warm_up, 8)
    runs = {name: llama_timed(llm, ids, max_tokens) for name, ids in prompts.items()}
    return {"load_s": load_s, "runs": runs}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def add_clean_run_options(parser: argparse.ArgumentParser, *, retries: int) -> None:
    """The options ``spawn_clean`` reads: ``--max-foreign``, ``--retries``, ``--quiet-wait``."""
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=0.15,
        help="redo a run when other processes used more than this many cores on average "
        "meanwhile (default 0.15)",
    )
    parser.add_argument("--retries", type=int, default=retries, help="redos per run at most")
    parser.add_argument("--quiet-wait", type=float, default=30, help="seconds to wait for idle")


def spawn_clean(
    module: str, args: list[str], out: Path, opts: argparse.Namespace
) -> dict[str, Any]:
    """Run ``python -m module args --out out``; redo it (up to ``opts.retries``) when other
    processes used more than ``opts.max_foreign`` cores on average meanwhile."""
    cmd = [sys.executable, "-m", module, *args, "--out", str(out)]
    result: dict[str, Any] = {}
    for attempt in range(opts.retries + 1):
        wait_for_quiet(opts.quiet_wait)
        busy0, own0, t0 = cpu_busy_s(), children_cpu_s(), time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        foreign = (cpu_busy_s() - busy0) - (children_cpu_s() - own0)
        result = json.loads(out.read_text())
        # Cores' worth of CPU used by anything but this worker, averaged over its run.
        result["foreign_cpu_share"] = max(0.0, foreign / (time.perf_counter() - t0))
        result["attempt"] = attempt
        if result["foreign_cpu_share"] <= opts.max_foreign:
            break
    return result
