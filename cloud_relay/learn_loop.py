"""The learn job, once (``cloud-relay learn``) or on a schedule inside ``cloud-relay run``.

Inside the relay it runs on a thread of its own, every ``learn.interval_s``: never
on the MQTT network thread nor the event loop that answers escalations. It opens
its own store connection for each run, so its reads never wait behind the hot
path's group commits, and reads the skill files again each time, so a changed
``learn.skills_dir`` takes effect without a restart. The encoder is loaded on the
first run and kept.
"""

from __future__ import annotations

import threading

from cloud_relay.config import RelaySettings
from cloud_relay.learn import Learner, LearnUnavailable, Publish, SkillResult, TextEncoder
from cloud_relay.learn import load_encoder as _load_encoder
from cloud_relay.learn_skills import SkillFileError, load_skills
from cloud_relay.paraphrase import Teacher, teacher_for
from cloud_relay.store import StoreError, open_store
from edge_slm.logs import get_logger

log = get_logger("cloud_relay.learn")


def learn_once(
    settings: RelaySettings,
    publish: Publish,
    encoder: TextEncoder | None = None,
    *,
    teacher: Teacher | None = None,
    dry_run: bool = False,
) -> list[SkillResult]:
    """One learn run over every skill; raises LearnUnavailable, SkillFileError, StoreError.
    The teacher (paraphrases) is the relay's LLM unless one is given."""
    skills = load_skills(settings.learn.skills_dir)
    encoder = encoder if encoder is not None else _load_encoder(settings.learn)
    store = open_store(settings.db)
    try:
        learner = Learner(
            settings.learn,
            prefix=settings.topic_prefix,
            store=store,
            encoder=encoder,
            publish=publish,
            skills=skills,
            teacher=teacher if teacher is not None else teacher_for(settings),
            dry_run=dry_run,
        )
        return learner.run()
    finally:
        store.close()


class LearnLoop:
    """``learn_once`` every ``learn.interval_s`` on its own thread, until stopped."""

    def __init__(self, settings: RelaySettings, publish: Publish) -> None:
        self._settings = settings
        self._publish = publish
        self._stop = threading.Event()
        self._encoder: TextEncoder | None = None
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
        interval = self._settings.learn.interval_s
        while not self._stop.wait(interval):
            self.run_once()

    def run_once(self) -> list[SkillResult]:
        """One run; every failure is logged, never raised (the schedule goes on)."""
        try:
            if self._encoder is None:
                self._encoder = _load_encoder(self._settings.learn)
            results = learn_once(self._settings, self._publish, self._encoder)
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
