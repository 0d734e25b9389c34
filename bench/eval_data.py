"""The labelled routing-quality set in ``tests/data/eval/``: loading and scoring rules.

One JSONL file per family; each line is ``{"request": <contract Request>, "gold": {...}}``
with ``gold.label`` for classify items and ``gold.answers`` (acceptable answers or
keywords) for free-text questions. Pure Python plus pydantic: the unit tests import it
without a model.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge_slm.contract import Request, Task

EVAL_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "eval"
#: family name -> file; the family is what per-family figures are grouped by.
FAMILIES = {
    "voice": "voice_intents.jsonl",
    "sensor": "sensor_events.jsonl",
    "question": "questions.jsonl",
    # Free-text sensor reports: the readings are in the words, with no `sensor` field.
    "report": "sensor_reports.jsonl",
}
#: The built-in skill of each classify family (its label set is the family's).
SKILL_OF = {"voice": "home_intents", "sensor": "sensor_state"}
F1_PASS = 0.5


@dataclass(frozen=True, slots=True)
class EvalItem:
    family: str
    request: Request
    gold: dict[str, Any]

    @property
    def id(self) -> str:
        return self.request.id


def load_family(family: str, root: Path = EVAL_DIR) -> list[EvalItem]:
    items = []
    path = root / FAMILIES[family]
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            items.append(EvalItem(family, Request.model_validate(raw["request"]), raw["gold"]))
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path.name}:{lineno}: {exc}") from exc
    return items


def load_all(root: Path = EVAL_DIR) -> list[EvalItem]:
    return [item for family in FAMILIES for item in load_family(family, root)]


Split = Literal["dev", "heldout"]


def split_of(item_id: str) -> Split:
    """The item's split, from its id alone: ``heldout`` when the first byte of
    sha256(id) is even (about half), else ``dev``.

    Held-out items are never used for skill exemplars, calibration or tuning (a test
    checks the built-in skills); ``dev`` items may be. Hashing the stable id keeps an
    item's split fixed when items are added or reordered.
    """
    return "heldout" if hashlib.sha256(item_id.encode()).digest()[0] % 2 == 0 else "dev"


def split(items: list[EvalItem], which: Split) -> list[EvalItem]:
    return [item for item in items if split_of(item.id) == which]


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """Lowercase; drop thousands separators, punctuation and articles; squeeze spaces."""
    text = re.sub(r"(?<=\d),(?=\d)", "", text.lower())
    text = re.sub(r"[^0-9a-z]+", " ", text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 between two normalized strings."""
    pred, ref = prediction.split(), reference.split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_correct(output: str, answers: list[str]) -> bool:
    """Correct when a normalized gold answer occurs as whole words in the normalized
    output, or the token F1 against any gold answer is at least ``F1_PASS``."""
    out = normalize(output)
    for answer in map(normalize, answers):
        if f" {answer} " in f" {out} " or token_f1(out, answer) >= F1_PASS:
            return True
    return False


def is_correct(item: EvalItem, *, label: str | None, text: str | None) -> bool:
    if item.request.task is Task.CLASSIFY:
        return bool(label == item.gold["label"])
    return answer_correct(text or "", item.gold["answers"])


def main(argv: list[str] | None = None) -> int:
    """Print one split of families as JSONL (e.g. the dev split for `edge-agent skills fit`)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m bench.eval_data", description=main.__doc__)
    parser.add_argument("split", choices=["dev", "heldout"])
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument(
        "--skills",
        action="store_true",
        help="requests name their family's built-in skill instead of listing labels",
    )
    parser.add_argument(
        "--model-reads",
        metavar="SKILL",
        help="only items that reach the model under SKILL: those its bands decide (from "
        "the readings, or from readings read in the text) never do, so a fit of the "
        "model's confidence should not see them",
    )
    args = parser.parse_args(argv)
    decided = _decided_by(args.model_reads) if args.model_reads else None
    for family in args.families:
        for raw in (EVAL_DIR / FAMILIES[family]).read_text(encoding="utf-8").splitlines():
            if not raw.strip():
                continue
            item = json.loads(raw)
            if split_of(item["request"]["id"]) != args.split:
                continue
            if decided is not None and decided(Request.model_validate(item["request"])):
                continue
            out = raw
            if args.skills and family in SKILL_OF:
                del item["request"]["labels"]
                item["request"]["skill"] = SKILL_OF[family]
                out = json.dumps(item, ensure_ascii=False)
            sys.stdout.write(out + "\n")
    return 0


def _decided_by(skill_name: str) -> Callable[[Request], bool]:
    from agent.engine.prompts import user_content
    from agent.skills import SkillRegistry
    from agent.skills.bands import judge, judge_text

    skill = SkillRegistry().get(skill_name)
    if skill is None:
        raise SystemExit(f"no skill {skill_name!r}")
    spec = skill.spec

    def decided(request: Request) -> bool:
        if request.readings:
            return judge(spec, request.readings) is not None
        return judge_text(spec, user_content(request)) is not None

    return decided


if __name__ == "__main__":
    raise SystemExit(main())
