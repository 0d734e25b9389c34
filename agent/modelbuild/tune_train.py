"""Fine-tune a Hugging Face folder on classify and act examples (``edge-agent models tune``).

Run as a subprocess by ``tune.py`` (``python -m agent.modelbuild.tune_train``), like
``convert.py``: torch's memory goes back to the OS before the ONNX builder starts.

Input: a JSONL of ``{"messages": [...], "answer": "words"}``, the chat prompt and the
label's verbalizer (or, for act, the call as compact JSON). Each sequence is the chat
template with the generation prompt, then the answer's tokens, then the end-of-turn
token; the loss is the mean cross-entropy over those answer tokens only, i.e. exactly
what ``Engine.classify`` scores at inference (and the tokens constrained decoding
chooses for a call).

Full fine-tuning (``--method full``) or LoRA (``--method lora``: peft adapters on every
linear layer of the blocks, merged into the weights before saving, so the ONNX builder
sees an ordinary model), float32, AdamW with a linear warm-up and decay, gradient
clipping. LoRA is what fits a 1.5B model in a 24 GB machine: full fine-tuning keeps
gradients and two AdamW moments of every weight (4x the fp32 weights), LoRA only of
the adapters. Two things make it fit a 2-core CPU budget:

* *shared-prefix packing*: examples with the same system prompt are batched, and a
  batch runs as one sequence, ``prefix + suffix_1 + ... + suffix_n``, with a 4-D
  attention mask letting each suffix see the prefix and itself only and position ids
  restarting after the prefix. That is mathematically the same as n separate
  sequences, but the prompt's fixed part (most of its tokens: the label list, or a
  skill's instructions) runs once per batch instead of once per example;
* the vocabulary projection (``lm_head``, a fifth of the model's FLOPs at 49k tokens)
  runs only at the positions that predict an answer token.

Output: the tuned HF folder, the reference logits of the fidelity prompts (for the
built ONNX model's check), and a JSON of training statistics.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Lines starting with this are progress for the parent to show.
PROGRESS = "tune:"


@dataclass(frozen=True, slots=True)
class Lora:
    """LoRA settings: the adapters' rank and scale (``alpha / rank``)."""

    rank: int
    alpha: int


@dataclass(frozen=True, slots=True)
class Tokenized:
    group: str  # the fixed part of the prompt; batches never mix groups
    prompt: list[int]
    answer: list[int]  # the verbalizer's tokens, then the end-of-turn token


def _lcp(seqs: list[list[int]]) -> int:
    n = 0
    for column in zip(*seqs, strict=False):
        if any(t != column[0] for t in column):
            break
        n += 1
    return n


def pack(batch: list[Tokenized]) -> tuple[list[int], list[int], Any, list[int], list[int]]:
    """One packed row: (ids, position ids, bool mask [T, T], target positions, targets).

    The shared prefix is the batch's longest common prompt prefix, kept at least one
    token short of every prompt so each example's first answer token is predicted from
    its own suffix.
    """
    import torch

    shared = min(_lcp([s.prompt for s in batch]), min(len(s.prompt) for s in batch) - 1)
    ids = list(batch[0].prompt[:shared])
    positions = list(range(shared))
    spans = []
    for s in batch:
        own = (s.prompt + s.answer)[shared:]
        spans.append((len(ids), len(own)))
        ids += own
        positions += range(shared, shared + len(own))
    total = len(ids)
    allowed = torch.zeros(total, total, dtype=torch.bool)
    allowed[:shared, :shared] = torch.ones(shared, shared, dtype=torch.bool).tril()
    where: list[int] = []
    targets: list[int] = []
    for s, (start, length) in zip(batch, spans, strict=True):
        span = slice(start, start + length)
        allowed[span, :shared] = True
        allowed[span, span] = torch.ones(length, length, dtype=torch.bool).tril()
        # the logits at position p predict token p + 1: the answer's k-th token is
        # predicted at the prompt's last position + k
        first = start + len(s.prompt) - 1 - shared
        where += range(first, first + len(s.answer))
        targets += s.answer
    return ids, positions, allowed, where, targets


def batches(seqs: list[Tokenized], size: int, rng: random.Random) -> list[list[Tokenized]]:
    """Shuffled batches of at most ``size``, each from one prompt group."""
    groups: dict[str, list[Tokenized]] = {}
    for s in seqs:
        groups.setdefault(s.group, []).append(s)
    out = []
    for members in groups.values():
        rng.shuffle(members)
        out += [members[i : i + size] for i in range(0, len(members), size)]
    rng.shuffle(out)
    return out


def _encode(tokenizer: Any, rows: list[dict[str, Any]], end_id: int) -> list[Tokenized]:
    seqs = []
    for row in rows:
        messages = row["messages"]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        answer = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        group = json.dumps(messages[:-1], sort_keys=True)
        seqs.append(Tokenized(group, [int(t) for t in prompt], [*map(int, answer), end_id]))
    return seqs


def _say(message: str) -> None:
    print(f"{PROGRESS} {message}", flush=True)


def _batch_loss(model: Any, batch: list[Tokenized]) -> tuple[Any, int]:
    """The batch's mean answer-token cross-entropy, and the tokens its packed row ran."""
    import torch

    ids, positions, allowed, where, targets = pack(batch)
    hidden = model.model(
        input_ids=torch.tensor([ids]),
        attention_mask=allowed[None, None],
        position_ids=torch.tensor([positions]),
    ).last_hidden_state[0]
    logits = model.lm_head(hidden[torch.tensor(where)])
    return torch.nn.functional.cross_entropy(logits, torch.tensor(targets)), len(ids)


def _save(model: Any, tokenizer: Any, out: Path, reference: Path) -> None:
    """The tuned HF folder, and its logits on the fidelity prompts for the ONNX check."""
    from agent.modelbuild import fidelity

    model.eval()
    model.config.use_cache = True
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    check_ids = fidelity.prompt_ids(tokenizer)
    fidelity.save_reference(reference, check_ids, fidelity.torch_logits(model, check_ids))


def _with_adapters(model: Any, lora: Lora, seed: int) -> Any:
    """The peft model around ``model``; its LoRA layers are put into ``model``'s own
    modules, so ``model.model`` and ``model.lm_head`` train through them."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # the adapters' random initialization
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=0.0,  # deterministic; a few hundred examples, a few epochs
        target_modules="all-linear",  # every projection of the blocks, not lm_head
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def train(
    hf_in: Path,
    examples: Path,
    out: Path,
    *,
    reference: Path,
    stats: Path,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    end_id: int,
    threads: int,
    lora: Lora | None = None,
) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = random.Random(seed)  # noqa: S311 - reproducible batches, not a secret

    tokenizer = AutoTokenizer.from_pretrained(hf_in)
    model = AutoModelForCausalLM.from_pretrained(hf_in, dtype=torch.float32)
    model.config.use_cache = False
    peft_model = _with_adapters(model, lora, seed) if lora is not None else None
    rows = [json.loads(line) for line in examples.read_text(encoding="utf-8").splitlines()]
    seqs = _encode(tokenizer, rows, end_id)
    groups = Counter(s.group for s in seqs)
    steps_per_epoch = sum(math.ceil(n / batch_size) for n in groups.values())
    total_steps = max(1, epochs * steps_per_epoch)
    warmup = max(1, total_steps // 10)

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    trained = sum(p.numel() for p in params)
    method = f"LoRA rank {lora.rank}" if lora is not None else "full"
    _say(
        f"{len(seqs)} examples, {epochs} epochs x {steps_per_epoch} steps, "
        f"lr {lr:g}, batch {batch_size}, {threads} threads, "
        f"{method}: {trained / 1e6:.1f}M weights trained"
    )
    model.train()
    started = time.monotonic()
    epoch_loss: list[float] = []
    tokens_run = 0
    for epoch in range(1, epochs + 1):
        losses: list[float] = []
        for batch in batches(list(seqs), batch_size, rng):
            loss, tokens = _batch_loss(model, batch)
            tokens_run += tokens
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.item()))
        epoch_loss.append(sum(losses) / max(1, len(losses)))
        _say(
            f"epoch {epoch}/{epochs}: mean loss {epoch_loss[-1]:.4f} "
            f"({time.monotonic() - started:.0f} s)"
        )
    seconds = time.monotonic() - started

    if peft_model is not None:
        model = peft_model.merge_and_unload()  # W + (alpha / r) B A: a plain model again
    _save(model, tokenizer, out, reference)
    stats.write_text(
        json.dumps(
            {
                "examples": len(seqs),
                "steps": total_steps,
                "seconds": round(seconds, 1),
                "tokens_run": tokens_run,
                "trained_weights": trained,
                "epoch_loss": [round(x, 5) for x in epoch_loss],
                "final_loss": round(epoch_loss[-1], 5) if epoch_loss else math.nan,
            }
        ),
        encoding="utf-8",
    )
    _say(f"saved {out} ({seconds:.0f} s of training)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hf-in", type=Path, required=True)
    parser.add_argument("--examples", type=Path, required=True)
    parser.add_argument("--hf-out", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--end-token-id", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--lora-rank", type=int, default=None, help="LoRA; default: full")
    parser.add_argument("--lora-alpha", type=int, default=None, help="LoRA: with --lora-rank")
    args = parser.parse_args()
    if (args.lora_rank is None) != (args.lora_alpha is None):
        parser.error("--lora-rank and --lora-alpha go together")
    lora = Lora(args.lora_rank, args.lora_alpha) if args.lora_rank is not None else None
    train(
        args.hf_in,
        args.examples,
        args.hf_out,
        reference=args.reference,
        stats=args.stats,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        end_id=args.end_token_id,
        threads=args.threads,
        lora=lora,
    )


if __name__ == "__main__":
    main()
