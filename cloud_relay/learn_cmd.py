"""``cloud-relay learn``: fit each skill's head (and each label set's that requests list
themselves) on the cloud's labels, push the better ones.

The job ``cloud-relay run`` runs every ``learn.interval_s`` (:mod:`cloud_relay.learn`),
once, with a report per skill. Heads are published retained under the relay's
MQTT identity, the only one the broker lets publish them.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import asdict
from pathlib import Path

from cloud_relay.cli_support import add_common, connect_publisher, settings_from
from cloud_relay.config import RelaySettings
from cloud_relay.learn import LearnUnavailable, SkillResult
from cloud_relay.learn_loop import learn_once, republish_once
from cloud_relay.learn_skills import SkillFileError
from cloud_relay.store import StoreError
from edge_slm.console import table
from edge_slm.logs import configure_logging
from edge_slm.mqtt import MqttConnection

HEADERS = (
    "skill",
    "encoder",
    "action",
    "version",
    "cases",
    "train",
    "paraphrases",
    "held out",
    "acc in use",
    "acc new",
    "why",
)


def add_learn_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "learn",
        help="fit skill heads on the cloud's labels and push those not worse than the one in use",
        description="Per skill: the cloud-labelled escalations and shadow samples in the log "
        "(already redacted on the device) plus the skill's own texts. A held-out share "
        "(learn.holdout) checks the new head against the head in use; it is pushed, retained "
        "on <prefix>/_skills/<skill>/head/<encoder>, only if it is not worse there; one head "
        "per encoder of learn.encoders. With "
        "learn.paraphrases the cloud LLM first writes requests for each label, once per "
        "version of the skill's text: every head is fitted on them too, and a skill's first "
        "head is pushed from them before any case escalates. Requests that list their own "
        "labels and name no skill are learned per label set the same way (learn.label_sets), "
        "against the zero-shot head of the label names.",
    )
    add_common(p)
    p.add_argument("--broker", help="broker URL (default: the config's)")
    p.add_argument(
        "--skill",
        action="append",
        help="learn only this skill (repeatable; default: all); label sets follow learn.label_sets",
    )
    p.add_argument("--skills-dir", type=Path, help="folder of extra skill TOMLs")
    p.add_argument("--dry-run", action="store_true", help="fit and check, push nothing")
    p.add_argument(
        "--republish",
        action="store_true",
        help="fit nothing: publish the last head of each skill and encoder again, retained "
        "(after an upgrade, or a broker that lost its retained messages); `cloud-relay run` "
        "does it at start",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per skill and encoder")
    p.set_defaults(func=_cmd_learn)


class _Publisher:
    """Connects on the first push (a run that pushes nothing needs no broker)."""

    def __init__(self, settings: RelaySettings) -> None:
        self._settings = settings
        self._conn: MqttConnection | None = None

    def __call__(self, topic: str, payload: bytes) -> None:
        if self._conn is None:
            self._conn = connect_publisher(self._settings, f"learn-{uuid.uuid4().hex[:6]}")
        self._conn.publish(topic, payload, qos=1, retain=True)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.stop()  # waits for the PUBACKs


def _cells(r: SkillResult) -> list[str]:
    def acc(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    return [
        r.skill,
        r.encoder,
        r.action,
        "-" if r.version is None else str(r.version),
        str(r.cases),
        str(r.train),
        str(r.paraphrases),
        str(r.held_out),
        acc(r.accuracy_old),
        acc(r.accuracy_new),
        r.reason,
    ]


def _cmd_learn(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {"mqtt.broker": args.broker}
    if args.skill:
        overrides["learn.skills"] = args.skill
    if args.skills_dir:
        overrides["learn.skills_dir"] = args.skills_dir
    settings = settings_from(args, **overrides)
    if settings is None:
        return 2
    configure_logging(settings.log_level, "console")  # stderr; stdout carries the report
    publisher = _Publisher(settings)
    try:
        if args.republish:
            count = republish_once(settings, publisher)
            print(f"{count} head(s) published again")
            return 0
        results = learn_once(settings, publisher, dry_run=args.dry_run)
    except (LearnUnavailable, SkillFileError, StoreError, ConnectionError) as exc:
        print(f"cannot learn: {exc}", file=sys.stderr)
        return 2
    finally:
        publisher.close()
    if args.json:
        for r in results:
            print(json.dumps(asdict(r)))
    else:
        print(table(HEADERS, [_cells(r) for r in results]))
    return 0
