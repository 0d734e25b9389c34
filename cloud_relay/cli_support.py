"""Shared pieces of the relay's sub-commands: settings, store and broker from the flags."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from cloud_relay.config import RelaySettings, load_settings
from cloud_relay.store import RelayStore, StoreError, open_store
from cloud_relay.timespec import parse_since
from edge_slm.contract import Outcome
from edge_slm.mqtt import MqttConnection
from edge_slm.settings import describe_errors


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (e.g. /etc/edge-slm/relay.toml)")
    p.add_argument("--db", help="store URL: sqlite:///path or postgresql://...")


def add_row_filters(p: argparse.ArgumentParser, *, outcome: bool = False) -> None:
    """``--device`` and ``--since`` (and ``--outcome``): which log rows a command reads."""
    p.add_argument("--device", help="only this device")
    p.add_argument("--since", help="ISO time or age: 10m, 2h, 1d (default: all)")
    if outcome:
        p.add_argument("--outcome", choices=[o.value for o in Outcome], help="only this outcome")


def settings_from(args: argparse.Namespace, **overrides: object) -> RelaySettings | None:
    try:
        return load_settings(args.config, db=args.db, **overrides)
    except ValidationError as exc:
        print(describe_errors(exc), file=sys.stderr)
    except (FileNotFoundError, ValueError) as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
    return None


def store_from(args: argparse.Namespace) -> RelayStore | None:
    settings = settings_from(args)
    if settings is None:
        return None
    try:
        return open_store(settings.db)
    except StoreError as exc:
        print(f"store problem: {exc}", file=sys.stderr)
        return None


def since_and_store(args: argparse.Namespace) -> tuple[float | None, RelayStore] | None:
    """``--since`` parsed and the store opened, or None after printing why not."""
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return None
    store = store_from(args)
    return None if store is None else (since, store)


def connect_publisher(settings: RelaySettings, role: str) -> MqttConnection:
    """A publish-only broker connection under the relay's identity (the broker lets only
    relays publish configs and heads), client id ``<mqtt.client_id>-<role>``.

    Raises ConnectionError when the broker cannot be reached.
    """
    conn = settings.mqtt.connection(
        client_id=f"{settings.mqtt.client_id}-{role}",
        on_connect=lambda: None,
        on_message=lambda _msg: None,
    )
    if not conn.start(connect_timeout_s=settings.mqtt.connect_timeout_s):
        conn.stop()
        raise ConnectionError(f"cannot reach the broker at {settings.mqtt.url}")
    return conn
