"""What ``edge-agent skills fit`` and ``edge-agent toolsets fit`` share: the model and
config options, and the settings they load."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from agent.config import AgentSettings

EXIT_BAD_INPUT = 2


def add_fit_options(fit: argparse.ArgumentParser, *, config_help: str) -> None:
    fit.add_argument("--model", default=None, help="edge model (catalog name); default: config")
    fit.add_argument("--config", type=Path, help=config_help)


def fit_settings(args: argparse.Namespace, *, device_id: str) -> AgentSettings | None:
    """The agent settings a fit runs with (only the model section matters; ``device_id``
    stands in for the id the schema requires), or None after saying why on stderr."""
    from agent.config import load_settings

    try:
        return load_settings(
            args.config,
            device_id=None if args.config else device_id,
            **{"model.name": args.model},
        )
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return None
