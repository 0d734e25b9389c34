"""Build extra ONNX variants of a catalog model into a scratch folder, for ``bench.decode_models``.

Follows the recipe of ``agent.modelbuild.build`` (GGUF -> HF float32 via
``agent.modelbuild.convert`` with reference logits, then ``onnxruntime_genai.models.builder``)
but with other precisions and builder ``--extra_options``, and measures each variant's
fidelity against the dequantized source (``agent.modelbuild.fidelity.measure``: teacher-forced
top-1 agreement and KL). Nothing goes into the model cache.

    python -m bench.build_variants --out /tmp/variants      # then:
    python -m bench.decode_models --models smollm2-135m-instruct \\
        --variant smollm2-135m-instruct=/tmp/variants/int4-b32-acc4 ...
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench._common import dir_size, report

#: name -> (precision, extra options)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "int4-b32-acc4": ("int4", ["block_size=32", "accuracy_level=4"]),
    "int4-b128-acc4": ("int4", ["block_size=128", "accuracy_level=4"]),
    "int8-shared-emb": ("int8", ["shared_embeddings=true"]),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.build_variants", description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="catalog name")
    parser.add_argument("--out", type=Path, required=True, help="scratch folder for the builds")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma list of {sorted(VARIANTS)}"
    )
    args = parser.parse_args(argv)

    from agent.modelbuild.fidelity import measure
    from agent.modelbuild.gguf import assemble_gguf
    from agent.models import ModelCache, default_cache_dir, get_entry

    args.out.mkdir(parents=True, exist_ok=True)
    hf_dir, reference = args.out / "hf", args.out / "reference.npz"
    if not reference.exists():
        gguf, _sha = assemble_gguf(get_entry(args.model), args.out)
        subprocess.run(
            [sys.executable, "-m", "agent.modelbuild.convert", "--gguf", str(gguf),
             "--hf-out", str(hf_dir), "--reference", str(reference)],
            check=True, env={"HF_HUB_OFFLINE": "1", **dict(__import__("os").environ)},
        )  # fmt: skip
    shipped = ModelCache(default_cache_dir()).require(args.model)
    results = {}
    for name in [v for v in args.variants.split(",") if v]:
        precision, extra = VARIANTS[name]
        out = args.out / name
        start = time.perf_counter()
        if not (out / "genai_config.json").exists():
            subprocess.run(
                [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir),
                 "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(args.out / "cache"),
                 "--extra_options", *extra],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            for extra_file in ("chat_template.jinja",):
                if (shipped / extra_file).exists() and not (out / extra_file).exists():
                    shutil.copy(shipped / extra_file, out / extra_file)
        fid = measure(out, reference)
        results[name] = {
            "precision": precision,
            "extra_options": extra,
            "build_s": time.perf_counter() - start,
            "disk_mb": dir_size(out) / 1e6,
            "fidelity": {k: v for k, v in vars(fid).items() if isinstance(v, int | float)}
            if hasattr(fid, "__dict__")
            else str(fid),
        }
        print(name, json.dumps(results[name]), flush=True)
    shipped_fid = measure(shipped, reference)
    results["shipped-int8"] = {
        "disk_mb": dir_size(shipped) / 1e6,
        "fidelity": str(shipped_fid),
    }
    print("shipped-int8", results["shipped-int8"], flush=True)
    return report("build_variants", {"model": args.model, "variants": results})


if __name__ == "__main__":
    sys.exit(main())
