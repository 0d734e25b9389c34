"""Decode efficiency of both catalog models vs llama.cpp, against the memory-bandwidth ceiling.

For each model (``smollm2-135m-instruct``, ``qwen2.5-coder-0.5b-instruct``): our
``agent.engine.Engine`` on the int8 ONNX build (CPU provider) and llama.cpp
(llama-cpp-python) on the model's own source GGUF, both at ``--threads`` threads. Extra
ONNX builds of a model (e.g. int4 variants built with ``onnxruntime_genai.models.builder``
into a temp dir) join with ``--variant MODEL=DIR``.

* Every measurement is a fresh subprocess holding one engine; engine order rotates
  per repetition; a run that saw more than ``--max-foreign`` cores of other people's CPU
  is redone (``bench._engines.spawn_clean``).
* Prompts: chat messages padded with a sensor log to about 128, 512 and 1024 prompt
  tokens (rendered once by our chat template per model; llama.cpp gets the same ids),
  plus a 42-token story prompt for decode speed. Greedy, ``--max-tokens`` new tokens,
  one warm-up generation per process.
* Medians are over the runs that stayed under ``--max-foreign`` after the redos (all
  runs when none did); ``clean_runs`` in the JSON says how many.
* TTFT = prefill + first token; decode tok/s = (steps - 1) / (time of last - first).
* **Bandwidth ceiling, same run:** a numpy copy of a 512 MB array (best of 5, 1 thread
  and 2 threads on halves), GB/s = (bytes read + bytes written) / time. Ceiling tok/s =
  bandwidth / bytes read per decode step, taken as the weight bytes a step must stream:
  every initializer of the ONNX graph except the embedding table read by ``Gather`` (one
  row per token), and every GGUF tensor except ``token_embd`` when a separate
  ``output.weight`` exists (SmolLM2 ties them, so its ``token_embd`` is the LM head and
  is read whole). The KV cache read is left out (small at short context).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._common import median, proc_mb, report, table, wait_for_quiet
from bench._engines import add_clean_run_options, llama_runs, ours_runs, spawn_clean
from bench.decode import LOG, PROMPTS

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
TARGETS = (128, 512, 1024)


def _model_dir(name: str) -> Path:
    from agent.models import ModelCache, default_cache_dir

    return ModelCache(default_cache_dir()).require(name)


# -- prompts --------------------------------------------------------------------


def _padded(engine: Any, target: int) -> list[dict[str, str]]:
    """Messages whose rendered prompt is as close to ``target`` tokens as lines allow."""
    lines = (LOG + "\n") * 40
    words = lines.split(" ")
    lo, hi = 1, len(words)
    best: list[dict[str, str]] = []
    while lo <= hi:
        mid = (lo + hi) // 2
        msgs = [
            {"role": "system", "content": "You are a home assistant. Answer in detail."},
            {"role": "user", "content": f"Sensor log:\n{' '.join(words[:mid])}\nDescribe the day."},
        ]
        n = len(engine.encode_chat(msgs))
        if n <= target:
            best, lo = msgs, mid + 1
        else:
            hi = mid - 1
    return best


def worker_prompts(model: str) -> dict[str, Any]:
    from agent.engine.engine import Engine

    engine = Engine(_model_dir(model), name="bench", provider="cpu", threads=1)
    prompts = {"story": PROMPTS["short"], **{f"p{t}": _padded(engine, t) for t in TARGETS}}
    return {
        name: {"messages": msgs, "ids": engine.encode_chat(msgs)} for name, msgs in prompts.items()
    }


# -- engines ----------------------------------------------------------------------


def worker_ours(model_dir: Path, threads: int, max_tokens: int, prompts: dict[str, Any]) -> Any:
    messages = {n: p["messages"] for n, p in prompts.items()}
    return ours_runs(model_dir, threads, max_tokens, messages, warm_up=messages["story"])


def worker_llama(gguf: Path, threads: int, max_tokens: int, prompts: dict[str, Any]) -> Any:
    ids = {n: p["ids"] for n, p in prompts.items()}
    return llama_runs(
        gguf, threads, max_tokens, ids, warm_up=ids["story"], n_ctx=2048, n_batch=1024
    )


# -- bandwidth and bytes per token -------------------------------------------------


def copy_bandwidth_gbs(mb: int = 512, reps: int = 5) -> dict[str, float]:
    import numpy as np

    src = np.ones(mb * 1_000_000 // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in

    def best(threads: int) -> float:
        parts = np.array_split(np.arange(src.size), threads)
        bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]
        times = []
        for _ in range(reps):
            workers = [
                threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b])) for a, b in bounds
            ]
            t0 = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            times.append(time.perf_counter() - t0)
        return 2 * src.nbytes / min(times) / 1e9  # read + write

    return {"copy_1t_gbs": best(1), "copy_2t_gbs": best(2)}


def onnx_bytes_per_token(model_dir: Path) -> dict[str, float]:
    import onnx

    graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
    gathered = {n.input[0] for n in graph.node if n.op_type == "Gather"}
    total = streamed = 0
    for init in graph.initializer:
        size = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        for d in init.dims:
            size *= d
        total += size
        if init.name not in gathered or size < 1_000_000:
            streamed += size
    return {"weights_mb": total / 1e6, "read_per_token_mb": streamed / 1e6}


def gguf_bytes_per_token(path: Path) -> dict[str, float]:
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    total = sum(tensors.values())
    skip = tensors.get("token_embd.weight", 0) if "output.weight" in tensors else 0
    return {"weights_mb": total / 1e6, "read_per_token_mb": (total - skip) / 1e6}


# -- orchestration ---------------------------------------------------------------------


def _worker(args: argparse.Namespace) -> int:
    if args.worker == "prompts":
        args.out.write_text(json.dumps(worker_prompts(args.model)))
        return 0
    prompts = json.loads(args.prompts.read_text())
    if args.worker == "ours":
        result = worker_ours(args.path, args.threads, args.max_tokens, prompts)
    else:
        result = worker_llama(args.path, args.threads, args.max_tokens, prompts)
    result["peak_rss_mb"] = proc_mb("self", "VmHWM")
    args.out.write_text(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(prog="python -m bench.decode_models", description=__doc__)
    parser.add_argument("--models", default=",".join(MODELS), help="comma list of catalog names")
    parser.add_argument("--repetitions", "-n", type=int, default=3, help="runs per engine")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per generation")
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="MODEL=DIR",
        help="an extra ONNX build of MODEL to time as well (repeatable)",
    )  # fmt: skip
    add_clean_run_options(parser, retries=2)
    parser.add_argument("--worker", choices=("prompts", "ours", "llama"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)

    from agent.modelbuild.gguf import assemble_gguf
    from agent.models import get_entry

    has_llama = importlib.util.find_spec("llama_cpp") is not None
    models = [m for m in args.models.split(",") if m]
    variants: dict[str, list[tuple[str, Path]]] = {m: [] for m in models}
    for spec in args.variant:
        name, _, path = spec.partition("=")
        variants.setdefault(name, []).append((Path(path).name, Path(path)))
    wait_for_quiet(args.quiet_wait)
    bandwidth = copy_bandwidth_gbs()
    bw = max(bandwidth.values())
    print(f"copy bandwidth: {bandwidth}")
    results: dict[str, Any] = {}
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-decode-models-") as tmp:
        for model in models:
            mdir = Path(tmp) / model
            mdir.mkdir()
            gguf, _sha = assemble_gguf(get_entry(model), mdir)
            prompts_file = mdir / "prompts.json"
            subprocess.run(
                [sys.executable, "-m", "bench.decode_models", "--worker", "prompts",
                 "--model", model, "--out", str(prompts_file)],
                check=True, capture_output=True,
            )  # fmt: skip
            engines: list[tuple[str, str, Path]] = [("ours int8", "ours", _model_dir(model))]
            engines += [(f"ours {n}", "ours", p) for n, p in variants.get(model, [])]
            if has_llama:
                engines.append(("llama.cpp " + gguf.name, "llama", gguf))
            sizes = {"ours int8": onnx_bytes_per_token(_model_dir(model))}
            sizes.update({f"ours {n}": onnx_bytes_per_token(p) for n, p in variants.get(model, [])})
            if has_llama:
                sizes["llama.cpp " + gguf.name] = gguf_bytes_per_token(gguf)
            samples: dict[str, list[dict[str, Any]]] = {e[0]: [] for e in engines}
            common = ["--max-tokens", str(args.max_tokens), "--prompts", str(prompts_file),
                      "--threads", str(args.threads)]  # fmt: skip
            for rep in range(args.repetitions):
                for k in range(len(engines)):
                    label, kind, path = engines[(rep + k) % len(engines)]
                    run_args = ["--worker", kind, "--path", str(path), *common]
                    samples[label].append(
                        spawn_clean("bench.decode_models", run_args, mdir / "r.json", args)
                    )
                    print(f"{model} rep {rep + 1}/{args.repetitions} {label} done", flush=True)
            summary: dict[str, dict[str, Any]] = {}
            prompt_names = list(json.loads(prompts_file.read_text()))
            for label, all_runs in samples.items():
                # Medians over the runs that stayed under --max-foreign, when there are any.
                runs = [r for r in all_runs if r["foreign_cpu_share"] <= args.max_foreign]
                runs = runs or all_runs
                s: dict[str, Any] = {
                    "clean_runs": len(runs),
                    "load_s": median([r["load_s"] for r in runs]),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                    "foreign_cpu_share": median([r["foreign_cpu_share"] for r in all_runs]),
                    **sizes[label],
                }
                for p in prompt_names:
                    for m in ("prompt_tokens", "ttft_ms", "tok_s", "steps"):
                        s[f"{p}_{m}"] = median([r["runs"][p][m] for r in runs])
                s["ceiling_tok_s"] = bw * 1e3 / s["read_per_token_mb"]
                s["story_tok_s_over_ceiling"] = s["story_tok_s"] / s["ceiling_tok_s"]
                summary[label] = s
            llama = next((k for k in summary if k.startswith("llama")), None)
            for label, s in summary.items():
                if llama:
                    s["ratios_vs_llama"] = {
                        f"{p}_{m}": s[f"{p}_{m}"] / summary[llama][f"{p}_{m}"]
                        for p in prompt_names
                        for m in ("ttft_ms", "tok_s")
                    }
                rows.append(
                    [model, label, s["read_per_token_mb"], s["story_tok_s"], s["ceiling_tok_s"],
                     s["story_tok_s_over_ceiling"], s["p1024_tok_s"],
                     *[s[f"p{t}_ttft_ms"] for t in TARGETS], s["peak_rss_mb"],
                     f"{s['foreign_cpu_share']:.2f} ({s['clean_runs']} clean)",
                     s.get("ratios_vs_llama", {}).get("story_tok_s", "-")]
                )  # fmt: skip
            results[model] = {"samples": samples, "summary": summary}

    headers = ["model", "engine", "MB read/token", "tok/s (story)", "ceiling tok/s",
               "of ceiling", "tok/s @1024", *[f"TTFT {t} ms" for t in TARGETS], "peak RSS MB",
               "foreign cores", "tok/s vs llama.cpp"]  # fmt: skip
    print(f"\nbandwidth {bw:.1f} GB/s; medians of {args.repetitions}; {args.threads} threads\n")
    print(table(headers, rows))
    data = {
        "threads": args.threads,
        "repetitions": args.repetitions,
        "max_tokens": args.max_tokens,
        "bandwidth": bandwidth,
        "bandwidth_used_gbs": bw,
        "models": results,
    }
    return report("decode_models", data)


if __name__ == "__main__":
    sys.exit(main())
