"""``cloud-relay calibrate``: recommend thresholds from the log, plot, optionally apply."""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from cloud_relay.calibrate import Pair, Recommendation, plot, recommend
from cloud_relay.cli_support import (
    add_common,
    add_row_filters,
    connect_publisher,
    settings_from,
    since_and_store,
)
from cloud_relay.config import RelaySettings
from cloud_relay.store import LogQuery, LogRow
from edge_slm.contract import DeviceConfig, Task
from edge_slm.logs import configure_logging
from edge_slm.topics import DeviceTopics


def add_calibrate_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "calibrate",
        help="recommend escalation thresholds from logged edge/cloud pairs",
        description="Per task (and per device with --per-device): agreement vs edge "
        "confidence from the log, the threshold meeting one target, two PNG plots, and "
        "with --apply a retained DeviceConfig published to each device.",
    )
    add_common(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-escalation", type=float, help="highest escalation rate, 0-1")
    target.add_argument("--target-agreement", type=float, help="lowest expected quality, 0-1")
    add_row_filters(p)
    p.add_argument("--per-device", action="store_true", help="one threshold per device and task")
    p.add_argument("--min-pairs", type=int, default=20, help="skip groups with fewer pairs")
    p.add_argument("--out", type=Path, default=Path("calibration"), help="folder for the PNGs")
    p.add_argument("--apply", action="store_true", help="publish the thresholds to the devices")
    p.add_argument("--broker", help="broker URL for --apply (default: the config's)")
    p.set_defaults(func=_cmd_calibrate)


def _groups(rows: Sequence[LogRow], per_device: bool) -> dict[tuple[str | None, str], list[Pair]]:
    groups: dict[tuple[str | None, str], list[Pair]] = defaultdict(list)
    for r in rows:
        if r.edge_confidence is None or r.agreement is None or r.task is None:
            continue
        key = (r.device_id if per_device else None, r.task)
        groups[key].append(Pair(r.edge_confidence, r.agreement, r.reason == "shadow"))
    return groups


def _apply(settings: RelaySettings, configs: dict[str, DeviceConfig]) -> None:
    """Publish each config retained at QoS 1 under the relay's identity."""
    conn = connect_publisher(settings, "calibrate")
    try:
        for device_id, config in configs.items():
            topic = DeviceTopics(settings.topic_prefix, device_id).config
            conn.publish(topic, config.to_wire(), qos=1, retain=True)
    finally:
        conn.stop()


def _cmd_calibrate(args: argparse.Namespace) -> int:
    configure_logging("WARNING", "console")  # stdout carries the report only
    settings = settings_from(args, **{"mqtt.broker": args.broker})
    opened = since_and_store(args)
    if settings is None or opened is None:
        return 2
    since, store = opened
    try:
        rows = store.logs(LogQuery(device_id=args.device, since=since, limit=None))
    finally:
        store.close()
    recs: dict[tuple[str | None, str], Recommendation] = {}
    for (device, task), pairs in sorted(_groups(rows, args.per_device).items(), key=str):
        group = f"device={device} task={task}" if device else f"task={task}"
        if len(pairs) < args.min_pairs:
            print(f"{group}: {len(pairs)} pairs, fewer than --min-pairs; skipped", file=sys.stderr)
            continue
        rec = recommend(
            group,
            pairs,
            target_escalation=args.target_escalation,
            target_quality=args.target_agreement,
        )
        recs[(device, task)] = rec
        written = plot(group, pairs, rec, args.out)
        print(
            f"{group}: threshold {rec.threshold:.3f} -> escalation {rec.escalation_rate:.1%}, "
            f"expected quality {rec.quality:.1%} (all-edge {rec.quality_all_edge:.1%}; "
            f"{rec.pairs} pairs, {rec.shadow_pairs} shadow) plots: {', '.join(map(str, written))}"
        )
    if not recs:
        print("nothing to recommend: no group has enough logged pairs", file=sys.stderr)
        return 1
    if args.apply:
        devices = sorted({r.device_id for r in rows})
        configs = {}
        for device_id in devices:
            thresholds = {
                Task(task): rec.threshold
                for (dev, task), rec in recs.items()
                if dev in (None, device_id)
            }
            if thresholds:
                configs[device_id] = DeviceConfig(
                    device_id=device_id,
                    thresholds=thresholds,
                    issued_at=time.time(),
                    issued_by="cloud-relay calibrate",
                )
        _apply(settings, configs)
        print(f"applied to {len(configs)} device(s): {', '.join(configs)}")
    return 0
