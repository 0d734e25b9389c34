"""Thresholds that learn: edge confidence vs edge/cloud agreement, from the log.

Every logged escalation with an edge answer is a pair (edge confidence, did the
cloud agree). For a threshold ``t`` the device escalates the pairs below it:

* expected escalation rate = share of pairs with confidence < t;
* expected quality = (escalated + kept pairs that agree) / all pairs, taking
  the cloud answer as right (agreement with the cloud is the quality proxy).

Low-confidence escalations alone are a biased sample (the confident side is
never seen); shadow samples (``policy.shadow_rate``) fill it in, so the report
says how many of each it used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass(frozen=True, slots=True)
class Pair:
    confidence: float
    agrees: bool
    shadow: bool


@dataclass(frozen=True, slots=True)
class Recommendation:
    group: str  # "task=classify" or "device=kitchen task=classify"
    pairs: int
    shadow_pairs: int
    threshold: float
    escalation_rate: float
    quality: float
    quality_all_edge: float  # agreement if nothing escalated


def _outcome(pairs: Sequence[Pair], threshold: float) -> tuple[float, float]:
    escalated = sum(p.confidence < threshold for p in pairs)
    kept_agree = sum(p.agrees for p in pairs if p.confidence >= threshold)
    n = len(pairs)
    return escalated / n, (escalated + kept_agree) / n


def curve(pairs: Sequence[Pair]) -> list[tuple[float, float, float]]:
    """(threshold, escalation rate, quality) at every distinct cut, low to high."""
    cuts = sorted({p.confidence for p in pairs} | {0.0, 1.0 + 1e-9})
    return [(t, *_outcome(pairs, t)) for t in cuts]


def recommend(
    group: str,
    pairs: Sequence[Pair],
    *,
    target_escalation: float | None = None,
    target_quality: float | None = None,
) -> Recommendation:
    """The threshold meeting one target: the most escalation allowed, or the least
    escalation that reaches a quality."""
    if not pairs:
        raise ValueError(f"{group}: no logged pairs with an edge answer to learn from")
    if (target_escalation is None) == (target_quality is None):
        raise ValueError("give exactly one of target_escalation or target_quality")
    points = curve(pairs)
    if target_escalation is not None:
        fitting = [pt for pt in points if pt[1] <= target_escalation + 1e-12]
        threshold, rate, quality = fitting[-1]
    else:
        assert target_quality is not None  # noqa: S101 - checked above
        reaching = [pt for pt in points if pt[2] >= target_quality - 1e-12]
        threshold, rate, quality = reaching[0] if reaching else points[-1]
    return Recommendation(
        group=group,
        pairs=len(pairs),
        shadow_pairs=sum(p.shadow for p in pairs),
        threshold=round(min(threshold, 1.0), 4),
        escalation_rate=rate,
        quality=quality,
        quality_all_edge=sum(p.agrees for p in pairs) / len(pairs),
    )


def reliability(pairs: Sequence[Pair], bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean confidence, agreement rate, count) per confidence bin with data."""
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [
            p for p in pairs if lo <= p.confidence < hi or (b == bins - 1 and p.confidence == 1.0)
        ]
        if members:
            out.append(
                (
                    sum(p.confidence for p in members) / len(members),
                    sum(p.agrees for p in members) / len(members),
                    len(members),
                )
            )
    return out


def plot(group: str, pairs: Sequence[Pair], rec: Recommendation, out_dir: Path) -> list[Path]:
    """Write the reliability diagram and the quality-vs-escalation curve as PNGs."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    slug = group.replace("=", "-").replace(" ", "_")

    def save(fig: Figure, ax: Axes, title: str, name: str) -> Path:
        ax.set_title(title)
        ax.legend(loc="lower right")
        path = out_dir / f"{name}_{slug}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)  # pyplot keeps every figure alive until it is closed
        return path

    fig, ax = plt.subplots(figsize=(5, 5))
    points = reliability(pairs)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="edge")
    for conf, agree, count in points:
        ax.annotate(str(count), (conf, agree), textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel="edge confidence", ylabel="agreement with the cloud", xlim=(0, 1), ylim=(0, 1))
    reliability_png = save(fig, ax, f"Reliability, {group} ({len(pairs)} pairs)", "reliability")

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = curve(pairs)
    ax.plot([p[1] for p in pts], [p[2] for p in pts], marker=".", label="confidence threshold")
    ax.scatter([rec.escalation_rate], [rec.quality], color="red", zorder=3, label="recommended")
    ax.set(xlabel="escalation rate", ylabel="expected quality", xlim=(0, 1), ylim=(0, 1.02))
    title = f"Quality vs escalation, {group}: threshold {rec.threshold:.2f}"
    return [reliability_png, save(fig, ax, title, "escalation_curve")]
