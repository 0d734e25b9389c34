"""Learning curve: a skill's head learns from the cloud's answers along a request stream.

A stream of requests goes to the device's head (``edge_slm.head``, over the agent's
sentence encoder). A request whose calibrated confidence is under ``--threshold``
escalates; the cloud answers it with the gold label, and that answer is a labelled
example. Every ``--every`` escalations the head is refitted on the skill's own texts
plus the cloud-labelled examples (``fit_head``, the fit ``cloud-relay learn`` runs) and
pushed. After each refit the head is measured on a held-out split that is never
streamed nor fitted on: escalation rate, accuracy of the head alone, AUROC of its
confidence, and system accuracy (escalated requests take the cloud's gold answer).

Data (``--data``):

* ``voice``: the project's home voice set (``tests/data/eval``). The skill is the
  built-in ``home_intents`` (its exemplars are dev items); the stream is the dev items
  that are not exemplars; held out is the ``heldout`` split (``split_of``), which no
  skill, fit or tune uses.
* ``hwu64``: HWU64 (``../shared/data/hwu64``, CC BY 4.0), 64 intents. A fresh skill
  that knows only its intent names (a zero-shot head from the names); the stream is
  ``train.jsonl`` with ``--per-intent`` utterances per intent (20), shuffled; held out
  is ``test.jsonl``, never fitted or tuned on. Also the plain head fitted on all of the
  stream (the README's reference 0.86 at 20 per intent).

This is the offline mode: the head runs in process with the same encoder and the same
fitting code as the relay's learn loop, without broker, relay or agent. The replay
through the real system (agent + relay + a gold-label cloud) plugs in at ``Learner``.

    nice -n 15 python -m bench.learning --data voice --every 10
    nice -n 15 python -m bench.learning --data hwu64 --every 100
    nice -n 15 python -m bench.learning --data hwu64 --real --every 200 --heldout-sample 256
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from bench._common import RESULTS_DIR, percentile, table, write_results
from bench.routing import cut_at
from edge_slm.head import Head, fit_head

HWU64 = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hwu64"
Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    labels: list[str]
    skill_texts: list[str]  # what a fresh skill knows: its own texts
    skill_gold: list[str]
    stream: list[tuple[str, str]]  # (text, gold) in arrival order
    heldout: list[tuple[str, str]]


def voice() -> Dataset:
    from agent.engine.prompts import user_content
    from agent.skills import SkillRegistry
    from bench.eval_data import load_family, split
    from edge_slm.head import skill_texts

    skill = SkillRegistry().get("home_intents")
    assert skill is not None
    texts, gold = skill_texts(skill.spec)
    shown = set(texts)
    items = load_family("voice")
    stream = [(user_content(i.request), i.gold["label"]) for i in split(items, "dev")]
    stream = [(t, g) for t, g in stream if t not in shown]
    held = [(user_content(i.request), i.gold["label"]) for i in split(items, "heldout")]
    return Dataset("voice", skill.labels, texts, gold, stream, held)


def read_intents(path: Path) -> list[tuple[str, str]]:
    """(text, intent) of every line of a HWU64 JSONL file."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["text"], r["intent"]) for r in rows]


def hwu64(per_intent: int, seed: int) -> Dataset:
    train = read_intents(HWU64 / "train.jsonl")
    rng = random.Random(seed)
    rng.shuffle(train)
    taken: dict[str, int] = defaultdict(int)
    stream = []
    for text, intent in train:
        if taken[intent] < per_intent:
            taken[intent] += 1
            stream.append((text, intent))
    labels = sorted(taken)
    names = [_intent_words(label) for label in labels]
    return Dataset("hwu64", labels, names, labels, stream, read_intents(HWU64 / "test.jsonl"))


def _intent_words(intent: str) -> str:
    return intent.replace("_", " ").replace("iot", "smart home")


def hwu64_skill(labels: Sequence[str]) -> str:
    """The ``hwu64`` skill as TOML for the real system: each intent's words as its
    verbalizer and nothing else, so its own texts are the names the offline head sees."""
    lines = ['description = "What the user asks a home assistant"']
    for label in labels:
        lines += [f"[labels.{label}]", f'verbalizer = "{_intent_words(label)}"']
    return "\n".join(lines) + "\n"


#: HWU64 intents that are one of ``home_intents``' labels (HWU64 has no timers or locks).
HOME_OF_HWU64 = {
    "iot_hue_lighton": "lights_on",
    "iot_hue_lightoff": "lights_off",
    "play_music": "play_music",
    "audio_volume_up": "volume_up",
    "weather_query": "weather_query",
}


def home_items(split: str) -> list[tuple[str, str]]:
    """(text, ``home_intents`` label) of the HWU64 ``split`` (``train``, ``test``) items
    whose intent is one of that skill's labels."""
    home = HOME_OF_HWU64
    return [(t, home[i]) for t, i in read_intents(HWU64 / f"{split}.jsonl") if i in home]


def hwu64_home(per_intent: int, seed: int) -> Dataset:
    """The built-in ``home_intents`` skill on HWU64 utterances of its labels: a stream and
    a held-out set that no shipped fit, calibration or exemplar has seen."""
    from agent.skills import SkillRegistry
    from edge_slm.head import skill_texts

    skill = SkillRegistry().get("home_intents")
    assert skill is not None
    texts, gold = skill_texts(skill.spec)
    train = home_items("train")
    random.Random(seed).shuffle(train)
    taken: dict[str, int] = defaultdict(int)
    stream = []
    for text, label in train:
        if taken[label] < per_intent:
            taken[label] += 1
            stream.append((text, label))
    return Dataset("hwu64_home", skill.labels, texts, gold, stream, home_items("test"))


#: A skill written the way the README says, with no data beyond its own words: the labels
#: of ``hwu64_home``, a description and two exemplars each (not from HWU64).
FRESH_SKILL = """description = "What the user wants the home to do"
[labels.lights_on]
description = "switch lights on"
exemplars = ["turn the lamp on", "lights on in the kitchen please"]
[labels.lights_off]
description = "switch lights off"
exemplars = ["kill the lights", "switch off the bedroom light"]
[labels.play_music]
description = "play some music or a song"
exemplars = ["put on some jazz", "play my running playlist"]
[labels.volume_up]
description = "make the sound louder"
exemplars = ["turn it up", "louder please"]
[labels.weather_query]
description = "ask about the weather or forecast"
exemplars = ["will it rain tomorrow", "how hot is it outside today"]
"""


def hwu64_fresh(per_intent: int, seed: int) -> Dataset:
    """``hwu64_home``'s stream and held-out set for a freshly written skill."""
    from agent.skills import parse_skill
    from edge_slm.head import skill_texts

    home = hwu64_home(per_intent, seed)
    spec = parse_skill(FRESH_SKILL)
    texts, gold = skill_texts(spec)
    return Dataset("hwu64_fresh", list(spec.labels), texts, gold, home.stream, home.heldout)


class Learner(Protocol):
    """Where the head is refitted: in process here; the relay's learn loop in the
    real-system replay."""

    def refit(self, texts: Sequence[str], gold: Sequence[str]) -> Head: ...


@dataclass
class OfflineLearner:
    encode: dict[str, Vectors]
    labels: list[str]
    seconds: list[float] = field(default_factory=list)

    def refit(self, texts: Sequence[str], gold: Sequence[str]) -> Head:
        start = time.perf_counter()
        vectors = np.stack([self.encode[t] for t in texts])
        head = fit_head(vectors, list(gold), self.labels)
        self.seconds.append(time.perf_counter() - start)
        return head


def measure(
    head: Head, vectors: Vectors, gold: Sequence[str], threshold: float
) -> dict[str, float]:
    outs = [head.predict(v) for v in vectors]
    right = [o.label == g for o, g in zip(outs, gold, strict=True)]
    cut = cut_at(right, [o.confidence for o in outs], threshold)
    return {
        "escalated": cut.escalated,
        "head_accuracy": sum(right) / len(gold),
        "auroc": cut.auroc,
        "system_accuracy": cut.system_accuracy,
        "answered_by_head": 1 - cut.escalated,
        "accuracy_when_answered": cut.kept_accuracy,
    }


def curve(data: Dataset, vec: dict[str, Vectors], every: int, threshold: float) -> dict[str, Any]:
    learner = OfflineLearner(vec, data.labels)
    held_v = np.stack([vec[t] for t, _ in data.heldout])
    held_g = [g for _, g in data.heldout]
    texts, gold = list(data.skill_texts), list(data.skill_gold)
    head = learner.refit(texts, gold)
    points = [{"seen": 0, "cloud_labelled": 0, **measure(head, held_v, held_g, threshold)}]
    labelled = 0
    stream_escalated = 0
    window: list[bool] = []
    for seen, (text, g) in enumerate(data.stream, 1):
        out = head.predict(vec[text])
        escalate = out.confidence < threshold
        window.append(escalate)
        if escalate:
            stream_escalated += 1
            texts.append(text)  # the cloud's answer: the gold label
            gold.append(g)
            labelled += 1
            if labelled % every == 0:
                head = learner.refit(texts, gold)
                points.append(
                    {
                        "seen": seen,
                        "cloud_labelled": labelled,
                        "stream_escalated_last": sum(window) / len(window),
                        **measure(head, held_v, held_g, threshold),
                    }
                )
                window = []
    if labelled % every:
        head = learner.refit(texts, gold)
        points.append(
            {
                "seen": len(data.stream),
                "cloud_labelled": labelled,
                "stream_escalated_last": sum(window) / max(1, len(window)),
                **measure(head, held_v, held_g, threshold),
            }
        )
    # The plain head: every stream item labelled, no cascade (HWU64's README reference).
    plain = learner.refit(
        [*data.skill_texts, *(t for t, _ in data.stream)],
        [*data.skill_gold, *(g for _, g in data.stream)],
    )
    return {
        "points": points,
        "plain_head_all_stream": measure(plain, held_v, held_g, threshold),
        "fit_seconds_p50": percentile(learner.seconds, 50),
        "stream": len(data.stream),
        "heldout": len(data.heldout),
        "labels": len(data.labels),
    }


def head_latency(
    embedder: Any, head: Head, texts: Sequence[str], repeats: int = 1
) -> dict[str, float]:
    """Embed one request and run the head, as the device does per request (ms)."""
    times = []
    for _ in range(repeats):
        for text in texts:
            start = time.perf_counter()
            head.predict(embedder.embed([text])[0])
            times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95)}


def plot(name: str, result: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    x = [p["cloud_labelled"] for p in pts]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [p["escalated"] for p in pts], "o-", label="escalation rate (held-out)")
    ax.plot(x, [p["system_accuracy"] for p in pts], "s-", label="system accuracy (held-out)")
    if "head_accuracy" in pts[0]:
        ax.plot(x, [p["head_accuracy"] for p in pts], "^-", label="head alone accuracy")
    else:  # the real system: the cascade's answers, and the share the head gave alone
        ax.plot(x, [p["edge_accuracy"] for p in pts], "^-", label="edge accuracy (cascade)")
        ax.plot(x, [p["answered_by_head_alone"] for p in pts], "d-", label="answered by head")
    ax.set_xlabel("cloud-labelled escalations learned from")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")
    ax.set_title(f"Learning from the cloud: {name}")
    path = RESULTS_DIR / f"learning_{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__)
    parser.add_argument(
        "--data", choices=["voice", "hwu64", "hwu64_home", "hwu64_fresh"], default="voice"
    )
    parser.add_argument("--every", type=int, default=10, help="refit every N escalations")
    parser.add_argument("--per-intent", type=int, default=20, help="hwu64: stream size")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.75,
        help="escalate under this head confidence; 0.75 is the cascade's bar for the head "
        "answering alone (agent/skills/head_stage.py ACCEPT): with no SLM stage here, what "
        "the head does not answer alone goes to the cloud",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shadow-rate",
        type=float,
        default=0.0,
        help="--real: share of confident answers also sent to the cloud as shadow samples",
    )
    parser.add_argument(
        "--learning-shadow-rate",
        type=float,
        default=0.0,
        help="--real: the agent's policy.learning_shadow_rate (a skill's shadow rate while "
        "its head is young, halved per pushed head version)",
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help="replay through the real system (agent, relay, gold cloud, cloud-relay learn)",
    )
    parser.add_argument(
        "--paraphrases",
        action="store_true",
        help="the skill also learns from the cloud's paraphrases of its labels, written by "
        "`python -m bench.paraphrases write` (offline: added to the skill's texts; --real: "
        "kept in the relay's store before the stream, as the relay keeps them)",
    )
    parser.add_argument(
        "--heldout-sample",
        type=int,
        default=0,
        help="measure on this many held-out items drawn at random (--seed), not all of "
        "them: a 64-intent run through the real system asks each one at every push",
    )
    parser.add_argument(
        "--embedder",
        default="",
        help="the sentence encoder (an installed embedder, e.g. mpnet-base-v2-int8); "
        "--real: the agent's model.embedder and the relay's learn.encoder. Default: the "
        "agent's default",
    )
    parser.add_argument(
        "--ad-hoc",
        action="store_true",
        help="--real: requests list the data set's labels and name no skill; the relay "
        "learns that label set's head (the device starts from the zero-shot head)",
    )
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.ad_hoc and (not args.real or args.paraphrases):
        parser.error("--ad-hoc needs --real, and has no skill to write paraphrases for")

    from bench.skills import _embedder

    if args.data == "voice":
        data = voice()
    elif args.data == "hwu64":
        data = hwu64(args.per_intent, args.seed)
    elif args.data == "hwu64_home":
        data = hwu64_home(args.per_intent, args.seed)
    else:
        data = hwu64_fresh(args.per_intent, args.seed)
    if 0 < args.heldout_sample < len(data.heldout):
        held = random.Random(args.seed).sample(data.heldout, args.heldout_sample)
        data = replace(data, heldout=held)
    written = _paraphrases(data) if args.paraphrases else None
    if args.real:
        return _real(
            data,
            args.every,
            args.shadow_rate,
            args.learning_shadow_rate,
            written,
            embedder=args.embedder,
            ad_hoc=args.ad_hoc,
        )
    if written is not None:
        texts = [t for _, t in written["paraphrases"]]
        gold = [g for g, _ in written["paraphrases"]]
        data = replace(
            data,
            name=f"{data.name}_paraphrases",
            skill_texts=[*data.skill_texts, *texts],
            skill_gold=[*data.skill_gold, *gold],
        )
    embedder = _embedder(args.threads, args.embedder)
    every_text = sorted(
        {*data.skill_texts, *(t for t, _ in data.stream), *(t for t, _ in data.heldout)}
    )
    start = time.perf_counter()
    vec = dict(zip(every_text, embedder.embed(every_text), strict=True))
    encode_s = time.perf_counter() - start
    threshold = args.threshold
    result = curve(data, vec, args.every, threshold)
    final = fit_head(np.stack([vec[t] for t in data.skill_texts]), data.skill_gold, data.labels)
    result |= {
        "data": data.name,
        "every": args.every,
        "threshold": threshold,
        "encoder": embedder.name,
        "encode_seconds": encode_s,
        "latency_embed_and_head": head_latency(embedder, final, [t for t, _ in data.heldout][:60]),
    }
    cols = ["cloud labelled", "seen", "escalated", "head acc", "AUROC", "system acc"]
    rows = [
        [
            p["cloud_labelled"],
            p["seen"],
            p["escalated"],
            p["head_accuracy"],
            p["auroc"],
            p["system_accuracy"],
        ]
        for p in result["points"]
    ]
    print(table(cols, rows))
    plain = result["plain_head_all_stream"]
    print(
        f"plain head on all {result['stream']} stream items: "
        f"accuracy {plain['head_accuracy']:.3f}, "
        f"AUROC {plain['auroc']:.3f}; with the cloud on its unsure ones: system accuracy "
        f"{plain['system_accuracy']:.3f} at {plain['escalated']:.1%} escalated"
    )
    print(f"embed+head p50 {result['latency_embed_and_head']['p50_ms']:.1f} ms")
    name = data.name + (f"_{args.embedder}" if args.embedder else "")
    print(plot(name, result))
    print(write_results(f"learning_{name}", result))
    return 0


def _paraphrases(data: Dataset) -> dict[str, Any]:
    """The written paraphrases of the data set's skill (``bench.paraphrases``)."""
    from bench.paraphrases import load

    if data.name == "hwu64":
        raise SystemExit("--paraphrases: the hwu64 skill is its intent names, with none written")
    return load("home_fresh" if data.name == "hwu64_fresh" else "home_intents")


def _real(
    data: Dataset,
    every: int,
    shadow_rate: float,
    learning_shadow_rate: float,
    written: dict[str, Any] | None,
    *,
    embedder: str,
    ad_hoc: bool = False,
) -> int:
    import tempfile

    from bench._learning_real import _run, real_curve

    _run["embedder"] = embedder
    _run["labels"] = list(data.labels) if ad_hoc else None

    with tempfile.TemporaryDirectory(prefix="learning-") as tmp:
        fresh = {
            "hwu64_fresh": ("home_fresh", FRESH_SKILL),
            "hwu64": ("hwu64", hwu64_skill(data.labels)),
        }.get(data.name)
        if ad_hoc:
            fresh = None  # no skill: the labels come with each request
        result = real_curve(
            data.stream,
            data.heldout,
            every,
            Path(tmp),
            shadow_rate=shadow_rate,
            learning_shadow_rate=learning_shadow_rate,
            fresh=fresh,
            paraphrases=written,
        )
    cols = ["escalations", "seen", "shadow samples", "head version", "escalated", "edge acc"]
    cols += ["AUROC", "system acc", "head alone", "its p50 ms"]
    for p in result["points"]:
        p.setdefault("shadow_samples", 0)
        p.setdefault("head_version", (p.get("learn") or {}).get("version") or 0)
    keys = [
        "cloud_labelled",
        "seen",
        "shadow_samples",
        "head_version",
        "escalated",
        "edge_accuracy",
        "auroc",
        "system_accuracy",
        "answered_by_head_alone",
        "head_alone_p50_ms",
    ]
    print(table(cols, [[p[k] for k in keys] for p in result["points"]]))
    name = f"{data.name}_real" + ("_adhoc" if ad_hoc else "")
    name += f"_shadow{shadow_rate:g}" if shadow_rate else ""
    name += f"_learning{learning_shadow_rate:g}" if learning_shadow_rate else ""
    name += "_paraphrases" if written else ""
    name += f"_{embedder}" if embedder else ""
    print(plot(name, result))
    print(write_results(f"learning_{name}", result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
