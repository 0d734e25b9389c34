"""``models tune``'s settings and their defaults.

Apart from :mod:`agent.modelbuild.tune` so that ``edge-agent models tune --help``
can show the defaults without importing the tune pipeline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from agent.models.errors import ModelError

__all__ = ["DEFAULT_LR", "TuneParams"]

#: The default peak learning rate by method: LoRA's adapters start at zero and move
#: through a low-rank bottleneck, so they take a larger step than the full weights.
DEFAULT_LR: dict[str, float] = {"full": 5e-5, "lora": 2e-4}


@dataclass(frozen=True, slots=True)
class TuneParams:
    """Training settings; every field is recorded in the manifest."""

    epochs: int = 3
    lr: float = DEFAULT_LR["full"]
    batch_size: int = 8
    seed: int = 0
    max_examples: int | None = None
    heldout_fraction: float = 0.2
    method: Literal["full", "lora"] = "full"
    lora_rank: int = 16
    lora_alpha: int = 32  # twice the rank, as the CLI defaults it

    def check(self) -> None:
        if self.epochs < 1:
            raise ModelError("--epochs must be at least 1")
        if not 0 < self.lr < 1:
            raise ModelError("--lr must be in (0, 1)")
        if self.batch_size < 1:
            raise ModelError("--batch-size must be at least 1")
        if self.max_examples is not None and self.max_examples < 1:
            raise ModelError("--max-examples must be at least 1")
        if not 0 <= self.heldout_fraction < 1:
            raise ModelError("--heldout-fraction must be in [0, 1)")
        if self.method not in ("full", "lora"):
            raise ModelError("--method must be full or lora")
        if self.lora_rank < 1:
            raise ModelError("--lora-rank must be at least 1")
        if self.lora_alpha <= 0:
            raise ModelError("--lora-alpha must be positive")

    def key_fields(self) -> dict[str, Any]:
        """The settings that decide the weights. A full tune's leave out the LoRA ones,
        which it does not use: its key, and so its name, is the one it had before
        LoRA existed."""
        fields = asdict(self)
        if self.method == "full":
            for unused in ("method", "lora_rank", "lora_alpha"):
                del fields[unused]
        return fields

    def record_fields(self) -> dict[str, Any]:
        """Every setting, as the manifest's ``TuneRecord`` keeps them: a full tune's
        LoRA settings are None, since it does not use them."""
        fields = asdict(self)
        if self.method == "full":
            fields["lora_rank"] = fields["lora_alpha"] = None
        return fields
