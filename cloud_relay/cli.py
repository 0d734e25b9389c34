"""``cloud-relay``: run the relay, read its log (``logs``, ``stats``, ``export``), the
fleet view (``devices``) and the web ``dashboard``; ``learn`` skill heads from the log."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_relay import render
from cloud_relay.cli_support import add_common, add_row_filters, settings_from, since_and_store
from cloud_relay.stats import compute
from cloud_relay.store import LogQuery, LogRow, RelayStore, StoreError, open_store
from edge_slm import __version__
from edge_slm.console import quiet_on_closed_pipe, run_command, table
from edge_slm.contract import Outcome

if TYPE_CHECKING:
    from cloud_relay.config import RelaySettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloud-relay",
        description="Forward edge escalations to a large LLM and keep a log of them.",
    )
    parser.add_argument("--version", action="version", version=f"edge-slm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run the relay daemon",
        description="Answer escalations from the fleet. Flags override CLOUD_RELAY_* "
        "environment variables, which override the TOML config file.",
    )
    add_common(run)
    run.add_argument("--broker", help="broker URL, mqtt://host:port or mqtts://host:port")
    run.add_argument("--llm-url", help="OpenAI-compatible base URL, e.g. http://host:8080/v1")
    run.add_argument("--llm-model", help="model name to ask")
    run.add_argument(
        "--check-config", action="store_true", help="validate and print the configuration, exit"
    )
    run.set_defaults(func=_cmd_run)

    logs = sub.add_parser(
        "logs", help="show the newest relay log rows (printed oldest first, like a log)"
    )
    add_common(logs)
    add_row_filters(logs, outcome=True)
    logs.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new rows")
    logs.add_argument("--json", action="store_true", help="one JSON object per line")
    logs.set_defaults(func=_cmd_logs)

    stats = sub.add_parser("stats", help="per-device and fleet-wide figures")
    add_common(stats)
    add_row_filters(stats)
    stats.add_argument("--json", action="store_true", help="JSON output")
    stats.set_defaults(func=_cmd_stats)

    devices = sub.add_parser(
        "devices", help="the fleet: status, model, requests and cost avoided per device"
    )
    add_common(devices)
    devices.add_argument("--device", help="only this device")
    devices.add_argument("--json", action="store_true", help="JSON output")
    devices.set_defaults(func=_cmd_devices)

    export = sub.add_parser(
        "export",
        help="escalations as training data (one JSON object per line), for distillation",
        description="Each line: the case as the relay received it (already redacted on the "
        "device), the cloud's and the edge's answers and whether they agree. Rows logged "
        "without text (before this version, or with store_prompts off) are skipped.",
    )
    add_common(export)
    add_row_filters(export, outcome=True)
    export.add_argument("--format", choices=["jsonl"], default="jsonl", help="output format")
    export.add_argument("--output", "-o", type=Path, help="write here instead of stdout")
    export.set_defaults(func=_cmd_export)

    dashboard = sub.add_parser(
        "dashboard",
        help="serve the read-only web dashboard over the log store",
        description="A web page for fleet operators: the escalation log (filterable, paged), "
        "charts over time, the device list, updated live. Binds 127.0.0.1 unless told "
        "otherwise; any other host needs dashboard.token or dashboard.username/password. "
        "Flags override CLOUD_RELAY_DASHBOARD__* environment variables and the TOML file.",
    )
    add_common(dashboard)
    dashboard.add_argument("--host", help="address to bind (default 127.0.0.1)")
    dashboard.add_argument("--port", type=int, help="TCP port (default 8787)")
    dashboard.add_argument(
        "--check-config", action="store_true", help="validate and print the configuration, exit"
    )
    dashboard.set_defaults(func=_cmd_dashboard)

    from cloud_relay.calibrate_cmd import add_calibrate_command
    from cloud_relay.learn_cmd import add_learn_command
    from cloud_relay.models_cmd import add_models_command
    from cloud_relay.pki_cmd import add_pki_command

    add_calibrate_command(sub)
    add_learn_command(sub)
    add_models_command(sub)
    add_pki_command(sub)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from edge_slm.logs import configure_logging

    settings = settings_from(
        args,
        **{"mqtt.broker": args.broker, "llm.url": args.llm_url, "llm.model": args.llm_model},
    )
    if settings is None:
        return 2
    if not settings.llm.model:
        print("invalid configuration: llm.model is required (--llm-model)", file=sys.stderr)
        return 2
    if args.check_config:
        return _show_config(settings)
    configure_logging(settings.log_level, settings.log_format)
    from cloud_relay.daemon import RelayDaemon

    try:
        daemon = RelayDaemon(settings)
        daemon.install_signal_handlers()
        return daemon.run()
    except StoreError as exc:
        print(f"store problem: {exc}", file=sys.stderr)
        return 2


def _show_config(settings: RelaySettings) -> int:
    """``--check-config``: the validated settings (secrets as ****), then exit 0."""
    print(json.dumps(settings.model_dump(mode="json"), indent=2))
    print("configuration OK", file=sys.stderr)
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from edge_slm.logs import configure_logging

    settings = settings_from(args, **{"dashboard.host": args.host, "dashboard.port": args.port})
    if settings is None:
        return 2
    if args.check_config:
        return _show_config(settings)
    configure_logging(settings.log_level, settings.log_format)
    from cloud_relay.dashboard.server import serve

    try:
        return serve(settings)
    except StoreError as exc:
        print(f"store problem: {exc}", file=sys.stderr)
        return 2


def _query_and_store(
    args: argparse.Namespace, *, limit: int | None, oldest_first: bool = False
) -> tuple[LogQuery, RelayStore] | None:
    """The rows ``--device``, ``--since`` and ``--outcome`` ask for, and the store opened;
    None after printing why not."""
    opened = since_and_store(args)
    if opened is None:
        return None
    since, store = opened
    outcome = Outcome(args.outcome) if args.outcome else None
    query = LogQuery(
        device_id=args.device, since=since, outcome=outcome, limit=limit, oldest_first=oldest_first
    )
    return query, store


def _cmd_logs(args: argparse.Namespace) -> int:
    opened = _query_and_store(args, limit=args.limit)
    if opened is None:
        return 2
    query, store = opened
    try:
        rows = list(reversed(store.logs(query)))  # oldest first on screen, like a log
        if args.json:
            for r in rows:
                print(render.log_json(r))
        else:
            print(table(render.LOG_HEADERS, [render.log_cells(r) for r in rows]))
        sys.stdout.flush()
        if args.follow:
            _follow(store, query, rows, as_json=args.json)
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
    return 0


def _follow(store: RelayStore, query: LogQuery, rows: list[LogRow], *, as_json: bool) -> None:
    """Print the rows ``query`` matches as they are finalized (answered), until interrupted."""
    answered = [r.answered_at for r in rows if r.answered_at]
    cursor = max(answered, default=time.time())
    while True:
        time.sleep(0.5)
        newer = replace(query, answered_after=cursor, limit=None, oldest_first=True)
        for r in store.logs(newer):
            print(render.log_json(r) if as_json else "  ".join(render.log_cells(r)))
            cursor = max(cursor, r.answered_at or cursor)
        sys.stdout.flush()


def _cmd_stats(args: argparse.Namespace) -> int:
    opened = since_and_store(args)
    if opened is None:
        return 2
    since, store = opened
    try:
        rows = store.logs(LogQuery(device_id=args.device, since=since, limit=None))
        if since is None:
            avoided = {
                d.device_id: d.totals.cost_avoided_usd
                for d in store.devices(args.device)
                if d.telemetry is not None
            }
        else:
            avoided = store.cost_avoided_since(since, args.device)
    finally:
        store.close()
    result = compute(rows, avoided)
    if args.json:
        print(json.dumps([render.stats_dict(s) for s in result], indent=2))
    else:
        print(table(render.STATS_HEADERS, [render.stats_cells(s) for s in result]))
    return 0


def _cmd_devices(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if settings is None:
        return 2
    try:
        store = open_store(settings.db)
    except StoreError as exc:
        print(f"store problem: {exc}", file=sys.stderr)
        return 2
    try:
        rows = store.devices(args.device)
    finally:
        store.close()
    now = time.time()
    stale = settings.fleet.stale_after_s
    if args.json:
        data = [render.device_dict(d, now=now, stale_after_s=stale) for d in rows]
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        cells = [render.device_cells(d, now=now, stale_after_s=stale) for d in rows]
        print(table(render.DEVICE_HEADERS, cells))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    opened = _query_and_store(args, limit=None, oldest_first=True)
    if opened is None:
        return 2
    query, store = opened
    try:
        rows = store.logs(query)
    finally:
        store.close()
    written = skipped = 0
    out = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    try:
        for r in rows:
            if r.outcome is None or (r.text is None and r.sensor is None):
                skipped += 1  # in flight, or logged without its case
                continue
            out.write(json.dumps(render.export_record(r), ensure_ascii=False) + "\n")
            written += 1
    finally:
        if args.output:
            out.close()
    print(f"exported {written} escalation(s), skipped {skipped}", file=sys.stderr)
    return 0


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    return run_command(_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
