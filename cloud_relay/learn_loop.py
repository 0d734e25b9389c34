"""The learn job, once (``cloud-relay learn``) or on a schedule inside ``cloud-relay run``.

Inside the relay it runs on a thread of its own, every ``learn.interval_s``: never
on the MQTT network thread nor the event loop that answers escalations. It opens
its own store connection for each run, so its reads never wait behind the hot
path's group commits, and reads the skill files again each time, so a changed
``learn.skills_dir`` takes effect without a restart. The encoders are loaded on the
first run that finds one installed, and kept (one installed later is taken at the
next start). On start it first publishes the last head of each skill and encoder again
(:func:`cloud_relay.learn.republish`).
"""

from __future__ import annotations

import threading

from cloud_relay.config import RelaySettings
from cloud_relay.learn import (
    Learner,
    LearnUnavailable,
    Publish,
    SkillResult,
    TextEncoder,
    republish,
)
from cloud_relay.learn import load_encoders as _load_encoders
from cloud_relay.learn_skills import SkillFileError, load_skills
from cloud_relay.paraphrase import Teacher, teacher_for
from cloud_relay.store import StoreError, open_store
from edge_slm.contract.skills import is_label_set
from edge_slm.logs import get_logger

log = get_logger("cloud_relay.learn")


def learn_once(
    settings: RelaySettings,
    publish: Publish,
    encoders: list[TextEncoder] | None = None,
    *,
    teacher: Teacher | None = None,
    dry_run: bool = False,
) -> list[SkillResult]:
    """One learn run over every skill; raises LearnUnavailable, SkillFileError, StoreError.
    The teacher (paraphrases) is the relay's LLM unless one is given."""
    skills = load_skills(settings.learn.skills_dir)
    if encoders is None:
        encoders = _load_encoders(settings.learn)
    store = open_store(settings.db)
    try:
        learner = Learner(
            settings.learn,
            prefix=settings.topic_prefix,
            store=store,
            encoders=encoders,
            publish=publish,
            skills=skills,
            teacher=teacher if teacher is not None else teacher_for(settings),
            dry_run=dry_run,
        )
        return learner.run()
    finally:
        store.close()


def republish_once(settings: RelaySettings, publish: Publish) -> int:
    """The last head of each skill, learned label set and encoder, published again; how many.
    Raises SkillFileError, StoreError."""
    skills = load_skills(settings.learn.skills_dir)
    wanted = settings.learn.skills
    store = open_store(settings.db)
    try:
        names = [name for name in skills if wanted is None or name in wanted]
        if settings.learn.label_sets:
            names += [name for name in store.head_names() if is_label_set(name)]
        heads = republish(
            store,
            publish,
            prefix=settings.topic_prefix,
            skills=names,
            encoders=settings.learn.encoders,
        )
    finally:
        store.close()
    return len(heads)


class LearnLoop:
    """``learn_once`` every ``learn.interval_s`` on its own thread, until stopped."""

    def __init__(self, settings: RelaySettings, publish: Publish) -> None:
        self._settings = settings
        self._publish = publish
        self._stop = threading.Event()
        self._encoders: list[TextEncoder] | None = None
        self._unavailable: str | None = None
        self._thread = threading.Thread(target=self._run, name="relay-learn", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop waiting for the next run; a run under way finishes its current skill."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            republish_once(self._settings, self._publish)
        except (SkillFileError, StoreError) as exc:  # the runs say it again, once per cause
            log.warning("heads_not_republished", error=str(exc))
        except Exception:
            log.exception("heads_not_republished")
        interval = self._settings.learn.interval_s
        while not self._stop.wait(interval):
            self.run_once()

    def run_once(self) -> list[SkillResult]:
        """One run; every failure is logged, never raised (the schedule goes on)."""
        try:
            if self._encoders is None:
                self._encoders = _load_encoders(self._settings.learn)
            results = learn_once(self._settings, self._publish, self._encoders)
        except (LearnUnavailable, SkillFileError, StoreError) as exc:
            if str(exc) != self._unavailable:  # once per cause, not every interval
                log.warning("learn_unavailable", error=str(exc))
            self._unavailable = str(exc)
            return []
        except Exception:
            log.exception("learn_run_failed")
            return []
        self._unavailable = None
        log.info(
            "learn_run_done",
            pushed=[r.skill for r in results if r.action == "pushed"],
            kept=[r.skill for r in results if r.action == "kept"],
            skipped=[r.skill for r in results if r.action == "skipped"],
        )
        return results
