"""The learn loop: fit each skill's classify head on the cloud's labels, check it, push it.

Per skill (``learn_skills``): the escalations and shadow samples the cloud answered
with one of the skill's labels (:meth:`RelayStore.labelled_cases`; only what left
the device, redacted there: a ``privacy: local`` request never reaches a relay),
plus the skill's own texts. A share of the cases (``learn.holdout``, chosen by a
hash of device and request id, so a case is held out run after run) is kept out
of fitting. The new head is fitted on the rest and the skill's texts
(:func:`edge_slm.head.fit_head`) and compared there with the head in use: the
last one pushed (from the store), or, before any, the head a device fits at load
from the skill's text alone. It is pushed only if it is at least as accurate on
the held-out cases; otherwise the old head stays and the log says why
(``head_kept``). A pushed head is a retained, versioned ``SkillHead`` on
``topics.skill_head(prefix, skill, encoder)``, which only relays may publish (broker
ACL).

A head reads one encoder's vectors, so each skill gets one head per encoder in
``learn.encoders`` (a fleet may run a larger encoder on its bigger boards): the same
cases and paraphrases, embedded, fitted, checked and pushed per encoder, each checked
against that encoder's head in use. Versions are one sequence per skill over its
encoders, claimed in the store before the push (``record_head``), so relays sharing
a store never push the same version twice.

Requests that name no skill and list their own ``labels`` are learned the same way,
per label set (``learn.label_sets``; :class:`Target`): their cases are grouped by
the set's name (:func:`edge_slm.contract.skills.label_set_name`, the same whatever
the order of the labels), the label names are the texts, and the head in use before
any push is the zero-shot head every device builds from those names. Such a head is
pushed under the set's name on the skills' topic: the same ACL, bridge and intake.
Its own texts are one per label, so until the cloud has answered every label twice
it cannot be calibrated out of fold; it is then calibrated on the held-out cases.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from cloud_relay.config import LearnSettings
from cloud_relay.paraphrase import Teacher, TeacherUnavailable, fingerprint
from cloud_relay.store import LabelledCase, Paraphrase, PushedHead, RelayStore
from edge_slm.contract import SkillSpec, WireError, decode
from edge_slm.contract.skills import HeadProvenance as Provenance
from edge_slm.contract.skills import SkillHead, label_set_name
from edge_slm.encoder import ONNX_FILE, TOKENIZER_FILE
from edge_slm.head import Head, calibrate_on, fit_head, label_texts, skill_texts, zero_shot
from edge_slm.logs import get_logger
from edge_slm.topics import skill_head

log = get_logger("cloud_relay.learn")

Vectors = npt.NDArray[np.float32]
Action = Literal["pushed", "kept", "skipped"]
CalibratedOn = Literal["out_of_fold", "held_out"] | None
#: Publishes one retained message at QoS 1 (the relay's MQTT identity).
Publish = Callable[[str, bytes], None]


class TextEncoder(Protocol):
    """What the loop needs of the sentence encoder (:class:`edge_slm.encoder.Encoder`)."""

    name: str

    def embed(self, texts: Sequence[str]) -> Vectors: ...


class LearnUnavailable(Exception):
    """The loop cannot run here (none of its encoders is installed)."""


@dataclass(frozen=True, slots=True)
class SkillResult:
    """What one run did for one skill (logged, and printed by ``cloud-relay learn``)."""

    skill: str
    encoder: str  # the encoder the head reads
    action: Action
    reason: str
    version: int | None  # the version pushed, or the one kept (None: the device's own)
    cases: int  # usable cloud-labelled cases
    train: int
    held_out: int
    accuracy_new: float | None = None
    accuracy_old: float | None = None
    paraphrases: int = 0  # the cloud-written ones it was fitted on
    labels: tuple[str, ...] = ()  # a label set's labels (``skill`` is its name)


@dataclass(frozen=True, slots=True)
class Target:
    """What one head is learned for: a skill, or a label set that requests list
    themselves (named by ``label_set_name``)."""

    name: str
    labels: tuple[str, ...]
    #: Its own texts and their labels: a skill's (``skill_texts``), or the label names.
    texts: list[str]
    gold: list[str]
    spec: SkillSpec | None  # None for a label set

    @classmethod
    def of_skill(cls, name: str, spec: SkillSpec) -> Target:
        texts, gold = skill_texts(spec)
        return cls(name=name, labels=tuple(spec.labels), texts=texts, gold=gold, spec=spec)

    @classmethod
    def of_labels(cls, labels: Sequence[str]) -> Target:
        ordered = tuple(sorted(set(labels)))
        return cls(
            name=label_set_name(ordered),
            labels=ordered,
            texts=label_texts(ordered),
            gold=list(ordered),
            spec=None,
        )

    def untaught(self, train: Sequence[LabelledCase]) -> int:
        """How many labels have no training case, where that matters: a label set's own
        texts are one name per label, so its head cannot be calibrated out of fold then
        (that needs two examples of every label). A skill's texts have exemplars: 0."""
        if self.spec is not None:
            return 0
        return len(set(self.labels) - {c.label for c in train})

    def baseline(self, text_vectors: Vectors) -> tuple[Head, str]:
        """The head devices run before any push, from its own texts' vectors."""
        if self.spec is None:
            return zero_shot(self.labels, text_vectors), "the zero-shot head"
        return fit_head(text_vectors, self.gold, self.labels), "the skill-text head"


def encoder_folder(settings: LearnSettings, name: str) -> Path:
    """The encoder ``name``'s folder in the model cache (the per-user one by default)."""
    if settings.model_cache is not None:
        cache = settings.model_cache
    else:
        from agent.models.cache import default_cache_dir  # the one cache rule, pure Python

        cache = default_cache_dir()
    return cache.expanduser() / name


def load_encoder(settings: LearnSettings, name: str) -> TextEncoder:
    folder = encoder_folder(settings, name)
    if not (folder / ONNX_FILE).is_file() or not (folder / TOKENIZER_FILE).is_file():
        raise LearnUnavailable(
            f"encoder {name!r} is not installed in {folder.parent}: "
            f"`edge-agent models build {name} --install-source`"
        )
    from edge_slm.encoder import Encoder  # onnxruntime: only when learning runs

    # One thread: learning is background work beside the relay's hot path.
    return Encoder(folder, name=name, threads=1)


def load_encoders(settings: LearnSettings) -> list[TextEncoder]:
    """Every installed encoder of ``learn.encoders``; a missing one is logged
    (``learn_encoder_missing``: its devices get no new heads) and the others learn.
    Raises LearnUnavailable when none is installed."""
    loaded: list[TextEncoder] = []
    missing: list[str] = []
    for name in settings.encoders:
        try:
            loaded.append(load_encoder(settings, name))
        except LearnUnavailable as exc:
            missing.append(str(exc))
    if not loaded:
        raise LearnUnavailable("; ".join(missing))
    for why in missing:
        log.warning("learn_encoder_missing", error=why)
    return loaded


def held_out(case: LabelledCase, fraction: float) -> bool:
    """Whether ``case`` is in the held-out share: the same answer on every run."""
    digest = hashlib.sha256(f"{case.device_id}\0{case.request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def accuracy(head: Head, vectors: Vectors, gold: Sequence[str]) -> float:
    right = sum(head.predict(v).label == g for v, g in zip(vectors, gold, strict=True))
    return right / len(gold)


def republish(
    store: RelayStore,
    publish: Publish,
    *,
    prefix: str,
    skills: Iterable[str],
    encoders: Iterable[str],
) -> list[PushedHead]:
    """Publish the last head of each skill and encoder again, retained, as it was pushed.

    After an upgrade that moved the heads' topics, or a broker that lost its retained
    messages, devices would otherwise wait for the next case to escalate before they
    got a head again. A device skips a version it runs already (``head_current``).
    """
    again = []
    for skill in sorted(set(skills)):
        for encoder in encoders:
            head = store.latest_head(skill, encoder)
            if head is not None:
                publish(skill_head(prefix, skill, encoder), head.payload.encode())
                again.append(head)
    log.info("heads_republished", heads=[f"{h.skill}@{h.version}/{h.embedder}" for h in again])
    return again


class Learner:
    """One learn run over the skills: fit, check on the held-out cases, push or keep."""

    def __init__(
        self,
        settings: LearnSettings,
        *,
        prefix: str,
        store: RelayStore,
        encoders: Sequence[TextEncoder],
        publish: Publish,
        skills: Mapping[str, SkillSpec],
        teacher: Teacher | None = None,
        dry_run: bool = False,
    ) -> None:
        self._s = settings
        self._teacher = teacher
        self._dry_run = dry_run
        self._prefix = prefix
        self._store = store
        if not encoders:
            raise ValueError("a learn run needs at least one encoder")
        self._encoders = tuple(encoders)
        self._publish = publish
        wanted = settings.skills
        self._skills = {n: s for n, s in skills.items() if wanted is None or n in wanted}
        for name in sorted(set(wanted or ()) - set(skills)):
            log.warning("learn_skill_unknown", skill=name)

    def run(self) -> list[SkillResult]:
        self._warn_other_encoders()
        results: list[SkillResult] = []
        for name, spec in sorted(self._skills.items()):
            try:
                results += self.learn(name, spec)
            except Exception:  # one skill's failure must not stop the others
                log.exception("learn_failed", skill=name)
        if self._s.label_sets:
            try:
                results += self.learn_label_sets()
            except Exception:
                log.exception("learn_failed", skill="label sets")
        return results

    def _warn_other_encoders(self) -> None:
        """Devices whose heads run on an encoder this run learns for none (their status
        says which) get no new heads and keep their own: say so, once per run."""
        mine = sorted(e.name for e in self._encoders)
        others = sorted(
            (d.device_id, d.embedder)
            for d in self._store.devices()
            if d.embedder is not None and d.embedder not in mine
        )
        if others:
            log.warning(
                "learn_encoder_mismatch",
                encoders=mine,
                devices=len(others),
                theirs=sorted({e for _, e in others}),
                examples=[device for device, _ in others[:5]],
            )

    def learn(self, name: str, spec: SkillSpec) -> list[SkillResult]:
        """One skill's head per encoder: its cases and paraphrases are read once."""
        rows = self._store.labelled_cases(name, limit=self._s.max_cases)
        return self._learn(Target.of_skill(name, spec), rows, self._paraphrases(name, spec))

    def learn_label_sets(self) -> list[SkillResult]:
        """A head per label set that requests list themselves (no skill) and encoder, for
        the ``learn.label_sets`` sets with the most cases, each once it has ``min_cases``."""
        by_set: dict[str, list[LabelledCase]] = {}
        for case in self._store.ad_hoc_cases(limit=self._s.max_label_cases):
            by_set.setdefault(label_set_name(case.labels), []).append(case)
        ranked = sorted(by_set.values(), key=lambda cases: (-len(cases), cases[0].labels))
        learned = [c for c in ranked if len(c) >= self._s.min_cases][: self._s.label_sets]
        results = []
        for cases in learned:
            target = Target.of_labels(cases[0].labels)
            try:
                results += self._learn(target, cases[: self._s.max_cases], [])
            except Exception:  # one label set's failure must not stop the others
                log.exception("learn_failed", skill=target.name, labels=target.labels)
        return results

    def _learn(
        self, target: Target, rows: Sequence[LabelledCase], written: Sequence[Paraphrase]
    ) -> list[SkillResult]:
        results = []
        for encoder in self._encoders:
            try:
                results.append(self._learn_on(encoder, target, rows, written))
            except Exception:  # one encoder's failure must not stop the others
                log.exception("learn_failed", skill=target.name, encoder=encoder.name)
        return results

    def _learn_on(  # noqa: PLR0911 - one per outcome
        self,
        encoder: TextEncoder,
        target: Target,
        rows: Sequence[LabelledCase],
        written: Sequence[Paraphrase],
    ) -> SkillResult:
        name, labels = target.name, target.labels
        # The cloud may answer outside the label set (or the skill changed since).
        cases = [c for c in rows if c.label in labels]
        last = self._store.latest_head(name, encoder.name)
        last_version = last.version if last else None

        def done(
            action: Action,
            reason: str,
            *,
            version: int | None = last_version,
            train: int = 0,
            held: int = 0,
            accuracy_new: float | None = None,
            accuracy_old: float | None = None,
        ) -> SkillResult:
            result = SkillResult(
                skill=name,
                encoder=encoder.name,
                action=action,
                reason=reason,
                version=version,
                cases=len(cases),
                train=train,
                held_out=held,
                accuracy_new=accuracy_new,
                accuracy_old=accuracy_old,
                paraphrases=len(written),
                labels=() if target.spec is not None else labels,
            )
            fields = asdict(result)
            del fields["action"]  # the event's name says it
            log.info(f"head_{action}", **fields, outside_labels=len(rows) - len(cases))
            return result

        if len(cases) < self._s.min_cases:
            if written and last is None and target.spec is not None:
                return self._first_head(encoder, name, target.spec, written, done)
            return done("skipped", f"{len(cases)} cloud-labelled cases, fewer than min_cases")
        if last is not None and max(c.received_at for c in cases) <= last.pushed_at:
            return done("skipped", f"no new case since version {last.version}")
        test = [c for c in cases if held_out(c, self._s.holdout)]
        train = [c for c in cases if not held_out(c, self._s.holdout)]
        if not test or not train:
            return done("skipped", "the held-out share left one side empty", held=len(test))
        texts, text_gold = target.texts, target.gold
        own = [*texts, *(p.text for p in written)]
        own_gold = [*text_gold, *(p.label for p in written)]
        vectors = encoder.embed([*own, *(c.text for c in train), *(c.text for c in test)])
        n_own, n_train = len(own), len(train)
        test_vectors = vectors[n_own + n_train :]
        test_gold = [c.label for c in test]
        new = fit_head(vectors[: n_own + n_train], [*own_gold, *(c.label for c in train)], labels)
        calibrated_on: CalibratedOn = "out_of_fold" if new.calibrated else None
        untaught = target.untaught(train)
        if untaught:
            # A label set's own texts are one name per label: with a label the cloud
            # never answered in the training share, out of fold cannot calibrate the
            # head, and its raw top share over many labels sent nearly everything on
            # in place of the calibrated zero-shot head (HWU64's 64 intents,
            # BENCHMARKS.md). It is calibrated on the held-out cases instead; Platt
            # scaling keeps the labels, so the accuracy check below is unchanged.
            on_held_out = calibrate_on(new, test_vectors, test_gold)
            if on_held_out is None:
                return done(
                    "skipped",
                    f"{untaught} of its {len(labels)} labels have no cloud-labelled case to "
                    "train on yet, and the held-out cases have too few wrong (or right) "
                    "answers to calibrate its confidence on",
                    train=n_train,
                    held=len(test),
                )
            new, calibrated_on = on_held_out, "held_out"
        old, old_what = self._head_in_use(encoder, last, target, vectors[: len(texts)])
        acc_new = accuracy(new, test_vectors, test_gold)
        acc_old = accuracy(old, test_vectors, test_gold)
        # A decision on the checked fit reports its figures.
        fitted = partial(
            done, train=n_train, held=len(test), accuracy_new=acc_new, accuracy_old=acc_old
        )
        if acc_new < acc_old:
            return fitted("kept", f"the new head is worse on the held-out cases than {old_what}")
        version = self._store.head_version(name) + 1
        if self._dry_run:
            return fitted("skipped", f"dry run: would push version {version}")
        provenance = Provenance(
            skill_texts=len(texts),
            cloud_labels=n_train,
            held_out=len(test),
            accuracy_new=acc_new,
            accuracy_old=acc_old,
            paraphrases=len(written),
            calibrated_on=calibrated_on,
        )
        if not self._push(encoder, name, new, version, provenance, cases=len(cases)):
            return done("skipped", f"version {version} was pushed by another relay")
        how = "; calibrated on the held-out cases" if calibrated_on == "held_out" else ""
        return fitted(
            "pushed",
            f"at least as accurate on the held-out cases as {old_what}{how}",
            version=version,
        )

    def _first_head(
        self,
        encoder: TextEncoder,
        name: str,
        spec: SkillSpec,
        written: Sequence[Paraphrase],
        done: Callable[..., SkillResult],
    ) -> SkillResult:
        """A skill's first head, before enough cases escalated: its texts and the cloud's
        paraphrases. Checked on the skill's exemplars, which the cloud was not shown, each
        left out in turn: fitted on the skill's other texts and the paraphrases, the head
        must recognize at least as many as fitted on the other texts alone (the head the
        devices fit at load)."""
        labels = tuple(spec.labels)
        texts, text_gold = skill_texts(spec)
        lines = set(skill_texts(spec, exemplars=False)[0])
        check = [i for i, text in enumerate(texts) if text not in lines]
        if not check:
            return done("skipped", "no exemplars to check the paraphrases on")
        vectors = encoder.embed([*texts, *(p.text for p in written)])
        own, extra = vectors[: len(texts)], vectors[len(texts) :]
        extra_gold = [p.label for p in written]
        right_old = right_new = 0
        for i in check:
            rest = np.arange(len(texts)) != i  # every label keeps its line
            gold = [g for g, kept in zip(text_gold, rest, strict=True) if kept]
            old = fit_head(own[rest], gold, labels, calibrate=False)
            new = fit_head(
                np.concatenate([own[rest], extra]), [*gold, *extra_gold], labels, calibrate=False
            )
            right_old += old.predict(own[i]).label == text_gold[i]
            right_new += new.predict(own[i]).label == text_gold[i]
        acc_new, acc_old = right_new / len(check), right_old / len(check)
        fitted = partial(done, held=len(check), accuracy_new=acc_new, accuracy_old=acc_old)
        if acc_new < acc_old:
            return fitted(
                "kept", "with the paraphrases the head recognizes fewer of the skill's exemplars"
            )
        version = self._store.head_version(name) + 1
        if self._dry_run:
            return fitted("skipped", f"dry run: would push version {version} (paraphrases)")
        head = fit_head(vectors, [*text_gold, *extra_gold], labels)
        provenance = Provenance(
            skill_texts=len(texts),
            cloud_labels=0,
            held_out=len(check),
            accuracy_new=acc_new,
            accuracy_old=acc_old,
            paraphrases=len(written),
            calibrated_on="out_of_fold" if head.calibrated else None,
        )
        if not self._push(encoder, name, head, version, provenance, cases=0):
            return done("skipped", f"version {version} was pushed by another relay")
        return fitted(
            "pushed",
            "from the skill's texts and the paraphrases: with them it recognizes at least as "
            "many of its exemplars",
            version=version,
        )

    def _push(
        self,
        encoder: TextEncoder,
        name: str,
        head: Head,
        version: int,
        provenance: Provenance,
        *,
        cases: int,
    ) -> bool:
        """Claim ``version`` in the store and publish the head; False: already taken."""
        wire = head.to_wire(
            skill=name, version=version, embedder=encoder.name, provenance=provenance
        )
        payload = wire.to_wire()
        pushed = PushedHead(
            skill=name,
            embedder=encoder.name,
            version=version,
            payload=payload.decode(),
            pushed_at=time.time(),
            cases=cases,
        )
        if not self._store.record_head(pushed):
            return False
        self._publish(skill_head(self._prefix, name, encoder.name), payload)
        return True

    def _paraphrases(self, name: str, spec: SkillSpec) -> list[Paraphrase]:
        """The cloud's paraphrases of ``spec``'s labels: kept ones, or asked for now (and
        kept); none when off, for a skill without a head, or when the cloud fails."""
        each = self._s.paraphrases
        if not each or self._teacher is None or not (spec.embedding and spec.head):
            return []
        key = fingerprint(spec, each, self._s.paraphrase_temperature)
        kept = list(self._store.paraphrases(name, key))
        if kept:
            return kept
        try:
            written = self._teacher.paraphrase(name, spec, each)
        except TeacherUnavailable as exc:
            log.warning("paraphrases_unavailable", skill=name, error=str(exc))
            return []
        if written:
            self._store.record_paraphrases(name, key, self._teacher.model, written)
        return written

    def _head_in_use(
        self,
        encoder: TextEncoder,
        last: PushedHead | None,
        target: Target,
        text_vectors: Vectors,
    ) -> tuple[Head, str]:
        """The head the devices run: the last pushed one if it still fits the target and
        the encoder, else the one a device has before any push (``Target.baseline``)."""
        if last is not None:
            try:
                wire = decode(SkillHead, last.payload.encode())
            except WireError:
                log.warning("learn_last_head_unreadable", skill=last.skill, version=last.version)
            else:
                if wire.embedder == encoder.name and tuple(wire.labels) == target.labels:
                    return Head.from_wire(wire), f"version {last.version}"
        return target.baseline(text_vectors)
