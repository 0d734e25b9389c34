"""Slot filling on HWU64 through ``extract`` with a schema (issue #17, "public slots").

    python -m bench.slot_eval [--model NAME] [--split test|train-dev] [--intents PATTERN ...]
                              [--limit N] [--per-intent N] [--threads 2] [--dump FILE]

For each intent (default: ``iot_*``, ``alarm_set``, ``weather_query``) the extract
schema is an object with one property per entity type that the intent's utterances in
``train.jsonl`` carry, ordered by how often they do there, each
``{"type": ["string", "null"], "description": ...}`` and all required, so the model
must say null for a type the text does not mention. The descriptions are written from
the type names alone (:data:`DESCRIPTIONS`); nothing is tuned on ``test.jsonl``.

Each utterance goes through the agent's own extract path
(:func:`agent.actions.answer_structured`). Scoring, per item, compares the sets of
``(type, normalized value)`` of the gold entities and of the non-null fields (micro
precision, recall, F1 over all items): a value for a type with no gold entity is a false
positive, a gold entity of a type the schema lacks (never seen with the intent in
``train.jsonl``) a false negative, and a reply with no valid object (out of length)
misses all its gold slots. Also: the valid rate; over the fields of valid replies, null
accuracy (fields with no gold entity that came back null), the mean
``field_confidence`` of right and wrong fields and its AUROC for a field being right
(all fields, and the non-null values alone), and the slot figures when values under the
agent's extract threshold (0.4) count as null; and p50 latency. The extract path
prefills its prompt (instructions and schema) afresh for every request: no prefix is
kept, so the latency is a whole request's. The first request (tokenizer and grammar
start-up) is left out of it.

``--split train-dev`` is a fixed ~10% sample of ``train.jsonl`` (by a hash of the line
number), for development; the schemas still come from the whole of ``train.jsonl``,
which only contributes the entity type names. The items run round-robin over the
intents (the files are grouped by intent), so ``--limit N`` and a run cut short are
balanced; ``--per-intent N`` keeps the first N utterances of each intent. ``--dump``
writes each reply as a JSON line as it comes; ``--rescore`` scores such a file.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import math
import re
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import table
from bench.learning import HWU64

DEFAULT_INTENTS = ("iot_*", "alarm_set", "weather_query")
#: Generation budget: the agent's default (96) is short for an 8-field schema.
MAX_TOKENS = 160
#: The agent's default extract threshold (``PolicySettings.thresholds``), not tuned here:
#: the summary also scores the values whose field confidence reaches it, the others as null.
THRESHOLD = 0.4
#: Share of ``train.jsonl`` in the ``train-dev`` sample (by the first byte of a hash).
DEV_SHARE = 0.1

#: A plain description of each HWU64 entity type, written from its name only.
DESCRIPTIONS = {
    "alarm_type": "The kind of alarm.",
    "app_name": "The name of an app.",
    "artist_name": "The name of a music artist.",
    "audiobook_author": "The author of an audiobook.",
    "audiobook_name": "The title of an audiobook.",
    "business_name": "The name of a business.",
    "business_type": "The kind of business.",
    "change_amount": "How much to change something by, or the level to change it to.",
    "coffee_type": "The kind of coffee.",
    "color_type": "A colour.",
    "cooking_type": "A way of cooking.",
    "currency_name": "The name of a currency.",
    "date": "A date or day.",
    "definition_word": "The word whose meaning is asked for.",
    "device_type": "The kind of device.",
    "drink_type": "The kind of drink.",
    "email_address": "An email address.",
    "email_folder": "An email folder.",
    "event_name": "The name of an event.",
    "food_type": "The kind of food.",
    "game_name": "The name of a game.",
    "game_type": "The kind of game.",
    "general_frequency": "How often something happens or repeats.",
    "house_place": "A room or place in the house.",
    "ingredient": "A cooking ingredient.",
    "joke_type": "The kind of joke.",
    "list_name": "The name of a list.",
    "meal_type": "The kind of meal.",
    "media_type": "The kind of media.",
    "movie_name": "The title of a film.",
    "movie_type": "The kind of film.",
    "music_album": "The name of a music album.",
    "music_descriptor": "A word that describes music.",
    "music_genre": "A genre of music.",
    "news_topic": "The topic of the news.",
    "order_type": "The kind of order.",
    "person": "The name of a person.",
    "personal_info": "A piece of personal information.",
    "place_name": "The name of a place.",
    "player_setting": "A setting of a media player.",
    "playlist_name": "The name of a playlist.",
    "podcast_descriptor": "A word that describes a podcast.",
    "podcast_name": "The name of a podcast.",
    "radio_name": "The name of a radio station.",
    "relation": "A person's relation to the user.",
    "song_name": "The title of a song.",
    "time": "A time.",
    "time_zone": "A time zone.",
    "timeofday": "A part of the day.",
    "transport_agency": "A transport company.",
    "transport_descriptor": "A word that describes a journey or ticket.",
    "transport_name": "The name of a train, bus or flight.",
    "transport_type": "A kind of transport.",
    "weather_descriptor": "A word that describes the weather.",
}


@dataclass(frozen=True, slots=True)
class Utterance:
    id: str
    text: str
    intent: str
    entities: tuple[tuple[str, str], ...]  # (type, value), in text order


def load(path: Path, prefix: str) -> list[Utterance]:
    """A HWU64 JSONL file; ids are ``<prefix>:<line number>``."""
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            raw = json.loads(line)
            entities = tuple((e["entity"], e["value"]) for e in raw["entities"])
            items.append(Utterance(f"{prefix}:{lineno}", raw["text"], raw["intent"], entities))
    return items


def in_dev(item_id: str) -> bool:
    """Whether a ``train.jsonl`` item is in the ``train-dev`` sample (fixed by its id)."""
    return hashlib.sha256(item_id.encode()).digest()[0] < round(256 * DEV_SHARE)


def selected(intent: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(intent, p) for p in patterns)


def first_per_intent(items: Sequence[Utterance], n: int | None) -> list[Utterance]:
    """The first ``n`` items of each intent, in file order (all with ``n`` None)."""
    seen: Counter[str] = Counter()
    kept = []
    for item in items:
        seen[item.intent] += 1
        if n is None or seen[item.intent] <= n:
            kept.append(item)
    return kept


def interleaved(items: Sequence[Utterance]) -> list[Utterance]:
    """Round-robin over intents (each in file order): any prefix of a run is balanced."""
    queues: dict[str, list[Utterance]] = {}
    for item in items:
        queues.setdefault(item.intent, []).append(item)
    rounds = max(map(len, queues.values()), default=0)
    return [q[r] for r in range(rounds) for q in queues.values() if r < len(q)]


def entity_types(train: Iterable[Utterance]) -> dict[str, list[str]]:
    """Each intent's entity types in ``train``, most frequent first (ties by name)."""
    counts: dict[str, Counter[str]] = {}
    for item in train:
        counts.setdefault(item.intent, Counter()).update(t for t, _ in item.entities)
    return {intent: sorted(c, key=lambda t: (-c[t], t)) for intent, c in sorted(counts.items())}


def describe(entity_type: str) -> str:
    return DESCRIPTIONS.get(entity_type, entity_type.replace("_", " ").capitalize() + ".")


def slot_schema(types: Sequence[str]) -> dict[str, Any]:
    """The extract schema of one intent: a nullable string per entity type, all required.

    Checked against the contract's subset and size caps (a bad schema fails here, not
    in the middle of a run).
    """
    from edge_slm.contract import check_schema

    return check_schema(
        {
            "type": "object",
            "properties": {
                t: {"type": ["string", "null"], "description": describe(t)} for t in types
            },
            "required": list(types),
            "additionalProperties": False,
        }
    )


_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")


def normalize_value(value: str) -> str:
    """Lowercase, collapse whitespace, strip surrounding punctuation."""
    return _EDGE_PUNCTUATION.sub("", " ".join(value.lower().split()))


@dataclass(frozen=True, slots=True)
class FieldResult:
    """One schema field of one reply."""

    intent: str
    type: str
    predicted: str | None  # normalized; None for null (or no valid object)
    gold: frozenset[str]  # normalized values of the gold entities of this type
    confidence: float

    @property
    def right(self) -> bool:
        return self.predicted in self.gold if self.predicted is not None else not self.gold


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Counts) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else math.nan

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def f1(self) -> float:
        total = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / total if total else math.nan


def score_item(
    intent: str,
    types: Sequence[str],
    gold: Sequence[tuple[str, str]],
    data: Mapping[str, Any] | None,
    confidence: Mapping[str, float] | None = None,
) -> tuple[Counts, list[FieldResult]]:
    """Slot counts and field results of one reply (``data`` None: no valid object).

    Counts compare sets of ``(type, normalized value)``: a gold entity of a type that
    is not in ``types`` can only be missed; one field matches at most one of several
    gold values of its type.
    """
    wanted = {(t, normalize_value(v)) for t, v in gold}
    fields = []
    for t in types:
        value = (data or {}).get(t)
        predicted = normalize_value(value) if isinstance(value, str) else None
        values = frozenset(v for g, v in wanted if g == t)
        fields.append(FieldResult(intent, t, predicted, values, (confidence or {}).get(t, 0.0)))
    found = {(f.type, f.predicted) for f in fields if f.predicted is not None}
    counts = Counts(len(found & wanted), len(found - wanted), len(wanted - found))
    return counts, fields


@dataclass
class Scores:
    """Everything the summary reports, accumulated over replies."""

    counts: Counts = field(default_factory=Counts)
    by_intent: dict[str, Counts] = field(default_factory=dict)
    items_by_intent: Counter[str] = field(default_factory=Counter)
    fields: list[FieldResult] = field(default_factory=list)
    items: int = 0
    valid: int = 0

    def add(self, intent: str, counts: Counts, fields: list[FieldResult], *, valid: bool) -> None:
        self.counts.add(counts)
        self.by_intent.setdefault(intent, Counts()).add(counts)
        self.items_by_intent[intent] += 1
        if valid:  # no object: its gold slots are missed, but no field came back null
            self.fields.extend(fields)
        self.items += 1
        self.valid += valid

    def confident(self, threshold: float) -> Counts:
        """The slot counts when values under ``threshold`` field confidence count as null."""
        kept = [f for f in self.fields if f.predicted is not None and f.confidence >= threshold]
        tp = sum(f.right for f in kept)
        return Counts(tp, len(kept) - tp, self.counts.tp + self.counts.fn - tp)

    def null_accuracy(self, intent: str | None = None) -> float:
        empty = [f for f in self.fields if not f.gold and intent in (None, f.intent)]
        return sum(f.predicted is None for f in empty) / len(empty) if empty else math.nan

    def confidence_summary(self, *, non_null: bool = False) -> dict[str, float | int]:
        from agent.skills.calibration import auroc

        chosen = [f for f in self.fields if not non_null or f.predicted is not None]
        right = [f.confidence for f in chosen if f.right]
        wrong = [f.confidence for f in chosen if not f.right]
        return {
            "fields": len(chosen),
            "right": len(right),
            "mean_right": _mean(right),
            "mean_wrong": _mean(wrong),
            "auroc": auroc([f.confidence for f in chosen], [f.right for f in chosen]),
        }


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _r(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def summary(scores: Scores, latencies: Sequence[float]) -> dict[str, Any]:
    c = scores.counts
    return {
        "items": scores.items,
        "valid": f"{scores.valid}/{scores.items}",
        "gold_slots": c.tp + c.fn,
        "predicted_slots": c.tp + c.fp,
        "precision": _r(c.precision),
        "recall": _r(c.recall),
        "f1": _r(c.f1),
        "null_accuracy": _r(scores.null_accuracy()),
        f"confident_values_{THRESHOLD}": {
            "predicted_slots": (kept := scores.confident(THRESHOLD)).tp + kept.fp,
            "precision": _r(kept.precision),
            "recall": _r(kept.recall),
            "f1": _r(kept.f1),
        },
        "field_confidence": {
            "all_fields": {k: _r(v) for k, v in scores.confidence_summary().items()},
            "non_null_values": {
                k: _r(v) for k, v in scores.confidence_summary(non_null=True).items()
            },
        },
        "p50_ms": _r(statistics.median(latencies) * 1000) if latencies else None,
        "by_intent": {
            intent: {
                "items": scores.items_by_intent[intent],
                "tp": counts.tp,
                "fp": counts.fp,
                "fn": counts.fn,
                "f1": _r(counts.f1),
                "null_accuracy": _r(scores.null_accuracy(intent)),
            }
            for intent, counts in sorted(scores.by_intent.items())
        },
    }


def intent_table(scores: Scores) -> str:
    rows = [
        [
            intent,
            scores.items_by_intent[intent],
            c.tp + c.fn,
            c.tp + c.fp,
            _cell(c.precision),
            _cell(c.recall),
            _cell(c.f1),
            _cell(scores.null_accuracy(intent)),
        ]
        for intent, c in [*sorted(scores.by_intent.items()), ("all", scores.counts)]
    ]
    rows[-1][1] = scores.items
    rows[-1][-1] = _cell(scores.null_accuracy())
    headers = ["intent", "items", "gold", "predicted", "P", "R", "F1", "null acc."]
    return table(headers, rows)


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


#: One scored reply: the item, the reply's ``data`` and ``field_confidence``, seconds.
Scored = tuple[Utterance, Mapping[str, Any] | None, Mapping[str, float] | None, float]


def _run(
    args: argparse.Namespace, items: Sequence[Utterance], schemas: Mapping[str, Any]
) -> Iterator[Scored]:
    """Each item through the agent's extract path; each reply dumped as it comes."""
    from agent.actions import answer_structured
    from agent.engine.engine import Engine, StopWhen
    from agent.models import ModelCache, default_cache_dir
    from edge_slm.contract import Request, Task

    engine = Engine(
        ModelCache(default_cache_dir()).require(args.model), name=args.model, threads=args.threads
    )
    with contextlib.ExitStack() as stack:
        dump = stack.enter_context(args.dump.open("w", encoding="utf-8")) if args.dump else None
        for item in items:
            request = Request(
                id=item.id, task=Task.EXTRACT, text=item.text, json_schema=schemas[item.intent]
            )
            start = time.perf_counter()
            reply = answer_structured(engine, request, max_tokens=args.max_tokens, stop=StopWhen())
            elapsed = time.perf_counter() - start
            if dump is not None:
                record: dict[str, Any] = {"id": item.id, "intent": item.intent, "text": item.text}
                record |= {"gold": item.entities, "ms": round(elapsed * 1000, 1)}
                dump.write(json.dumps(record | reply.model_dump(mode="json")) + "\n")
                dump.flush()
            yield item, reply.data, reply.field_confidence, elapsed


def _replay(path: Path, items: Sequence[Utterance]) -> Iterator[Scored]:
    """The replies of an earlier ``--dump`` to those of ``items`` it holds."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records = {r["id"]: r for r in map(json.loads, filter(str.strip, lines))}
    for item in items:
        if item.id in records:
            r = records[item.id]
            yield item, r.get("data"), r.get("field_confidence"), r["ms"] / 1000


def main(argv: list[str] | None = None) -> int:
    from agent.models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="python -m bench.slot_eval")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--split", choices=["test", "train-dev"], default="test")
    parser.add_argument("--intents", nargs="+", default=list(DEFAULT_INTENTS), metavar="PATTERN")
    parser.add_argument("--limit", type=int, help="only the first N selected utterances")
    parser.add_argument("--per-intent", type=int, help="only the first N utterances per intent")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dump", type=Path, help="write each item and reply here (JSONL)")
    parser.add_argument(
        "--rescore",
        type=Path,
        metavar="DUMP",
        help="score the replies of an earlier --dump (those of the selected items) instead "
        "of running the model; --model only names them",
    )
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument("--data", type=Path, default=HWU64, help="folder of the JSONL files")
    args = parser.parse_args(argv)

    train = load(args.data / "train.jsonl", "train")
    types = entity_types(i for i in train if selected(i.intent, args.intents))
    schemas = {intent: slot_schema(t) for intent, t in types.items()}
    if args.split == "test":
        pool = load(args.data / "test.jsonl", "test")
    else:
        pool = [i for i in train if in_dev(i.id)]
    items = first_per_intent([i for i in pool if i.intent in schemas], args.per_intent)
    items = interleaved(items)[: args.limit]
    replies = _replay(args.rescore, items) if args.rescore else _run(args, items, schemas)
    scores = Scores()
    latencies: list[float] = []
    for n, (item, data, confidence, seconds) in enumerate(replies):
        if n:  # the first request starts the tokenizer and grammar machinery
            latencies.append(seconds)
        counts, fields = score_item(
            item.intent, types[item.intent], item.entities, data, confidence
        )
        scores.add(item.intent, counts, fields, valid=data is not None)
    result = {
        "model": args.model,
        "split": args.split,
        "intents": args.intents,
        "per_intent": args.per_intent,
        "max_tokens": args.max_tokens,
        "rescored": str(args.rescore) if args.rescore else None,
        "schema_fields": {intent: len(t) for intent, t in types.items()},
        **summary(scores, latencies),
    }
    print(json.dumps(result))
    print(f"\n{args.model}, {args.split}:\n{intent_table(scores)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
