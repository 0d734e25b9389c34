"""What sampling costs per token against greedy decoding, on one engine in one run.

``edge-agent serve`` samples when a request asks for a temperature (the relay's
teacher does, ``learn.paraphrase_temperature``). The runtime draws the token
(``GeneratorParams.set_search_options``); this measures its cost: the same prompt
decoded greedily and sampled, alternating, after one warm-up each, reported as the
median time per token and its ratio to greedy.

    nice -n 15 python -m bench.sampling --model qwen2.5-coder-1.5b-instruct
"""

from __future__ import annotations

import argparse
import time

from agent.engine.engine import Engine, StreamEnd
from agent.engine.sampling import GREEDY, Sampling
from bench._common import median, table, write_results

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to cook."}]
MODES = {
    "greedy": GREEDY,
    "temperature 1, top_p 1": Sampling(temperature=1.0, seed=1),
    "temperature 1, top_p 0.9": Sampling(temperature=1.0, top_p=0.9, seed=1),
}


def _ms_per_token(engine: Engine, sampling: Sampling, max_tokens: int) -> float:
    start = time.perf_counter()
    tokens = 0
    for event in engine.stream(PROMPT, max_tokens=max_tokens, sampling=sampling):
        if isinstance(event, StreamEnd):
            tokens = event.completion_tokens
    return (time.perf_counter() - start) * 1000 / max(tokens, 1)


def main(argv: list[str] | None = None) -> int:
    from agent.models import DEFAULT_MODEL, ModelCache, default_cache_dir

    parser = argparse.ArgumentParser(prog="python -m bench.sampling", description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--repetitions", "-n", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    path = ModelCache(default_cache_dir()).require(args.model)
    engine = Engine(path, name=args.model, provider="cpu", threads=args.threads)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for sampling in MODES.values():  # warm-up
        _ms_per_token(engine, sampling, args.max_tokens)
    for _ in range(args.repetitions):
        for mode, sampling in MODES.items():
            times[mode].append(_ms_per_token(engine, sampling, args.max_tokens))
    base = median(times["greedy"])
    rows = [
        [mode, round(min(t), 1), round(median(t), 1), round(max(t), 1), f"{median(t) / base:.2f}x"]
        for mode, t in times.items()
    ]
    print(table(["decoding", "min ms/token", "median", "max", "vs greedy"], rows))
    print(write_results(f"sampling_{args.model}", {"model": args.model, "ms_per_token": times}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
