"""GGUF -> Hugging Face folder (dequantized float32), plus reference logits.

Run as a subprocess by ``build.py`` (``python -m agent.modelbuild.convert``) so
that torch's memory (1.6-7.4 GB) is returned to the OS before the ONNX builder
starts, and so that a crash here cannot take the CLI down with it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def convert(gguf: Path, hf_out: Path, reference: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.modelbuild import fidelity

    src_dir, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)

    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one with the
    # same (dequantized) weights, as the recipe note describes.
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)  # type: ignore[no-untyped-call]
    result = plain.load_state_dict(loaded.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"state dict mismatch: missing={result.missing_keys} "
            f"unexpected={result.unexpected_keys}"
        )
    if getattr(cfg, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.eval()
    del loaded

    hf_out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(hf_out)
    tokenizer.save_pretrained(hf_out)

    ids = fidelity.prompt_ids(tokenizer)
    fidelity.save_reference(reference, ids, fidelity.torch_logits(plain, ids))
    print(f"converted {gguf} -> {hf_out}; reference logits for {len(ids)} prompts", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--hf-out", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    args = parser.parse_args()
    convert(args.gguf, args.hf_out, args.reference)


if __name__ == "__main__":
    main()
