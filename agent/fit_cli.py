"""What ``edge-agent skills`` and ``edge-agent toolsets`` share: their ``list`` and ``fit``
verbs, the fit's model, config and dry-run options, the settings a fit loads, and how a
fit ends (printed, then written into its TOML file)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from agent.config import AgentSettings

Command = Callable[[argparse.Namespace], int]

EXIT_BAD_INPUT = 2


def add_list_and_fit(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    list_help: str,
    list_cmd: Command,
    fit_help: str,
    fit_description: str,
    fit_cmd: Command,
) -> argparse.ArgumentParser:
    """The ``<name> list`` and ``<name> fit`` verbs; returns ``fit`` for its own options."""
    group = sub.add_parser(name, help=help)
    verbs = group.add_subparsers(dest=f"{name}_command", required=True)
    verbs.add_parser("list", help=list_help).set_defaults(func=list_cmd)
    fit = verbs.add_parser("fit", help=fit_help, description=fit_description)
    fit.set_defaults(func=fit_cmd)
    return fit


def add_fit_options(fit: argparse.ArgumentParser, *, data_help: str, config_help: str) -> None:
    fit.add_argument("--data", type=Path, required=True, help=data_help)
    fit.add_argument("--model", default=None, help="edge model (catalog name); default: config")
    fit.add_argument("--config", type=Path, help=config_help)
    fit.add_argument("--dry-run", action="store_true", help="print the fit, write nothing")


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


def finish_fit(model: str, fit: BaseModel, *, target: Path | None, dry_run: bool) -> int:
    """Print the fit's TOML table and, unless ``dry_run``, write it into ``target``."""
    from agent.skills.fitting import render_fit, write_fit

    print(render_fit(model, fit))
    if not dry_run and target is not None:
        write_fit(target, model, fit)
        print(f"wrote the fit into {target}", file=sys.stderr)
    return 0
