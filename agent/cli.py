"""``edge-agent``: run the daemon, check its config, manage the model cache."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from edge_slm import __version__
from edge_slm.console import quiet_on_closed_pipe, run_command
from edge_slm.logs import configure_logging
from edge_slm.settings import describe_errors


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run",
        help="run the agent daemon",
        description="Answer MQTT requests with the on-device model. Flags override "
        "EDGE_AGENT_* environment variables, which override the TOML config file.",
    )
    run.add_argument("--config", type=Path, help="TOML config file (e.g. /etc/edge-slm/agent.toml)")
    run.add_argument("--broker", help="broker URL, mqtt://host:port or mqtts://host:port")
    run.add_argument("--device-id", help="this device's id (one topic segment)")
    run.add_argument("--model", help="catalog name of the model to serve")
    run.add_argument("--model-path", type=Path, help="serve this onnxruntime-genai folder")
    run.add_argument("--provider", choices=["auto", "cpu", "cuda", "qnn", "dml"])
    run.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration and the model, print it, and exit",
    )
    run.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from agent.config import load_settings
    from agent.models.errors import ModelError

    try:
        settings = load_settings(
            args.config,
            device_id=args.device_id,
            **{
                "mqtt.broker": args.broker,
                "model.name": args.model,
                "model.path": args.model_path,
                "model.provider": args.provider,
            },
        )
    except ValidationError as exc:
        print(describe_errors(exc), file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2

    from agent.daemon import AgentDaemon, resolve_model_dir

    try:
        model_dir = resolve_model_dir(settings)
    except ModelError as exc:
        print(f"model problem: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        shown = settings.model_dump(mode="json")  # SecretStr dumps as "**********"
        shown["model"]["resolved_path"] = str(model_dir)
        print(json.dumps(shown, indent=2))
        print("configuration OK", file=sys.stderr)
        return 0
    configure_logging(settings.log_level, settings.log_format)
    daemon = AgentDaemon(settings)
    daemon.install_signal_handlers()
    return daemon.run()


def build_parser() -> argparse.ArgumentParser:
    from agent.bundle.cli import add_bundle_command
    from agent.models.cli import add_models_commands
    from agent.profiles import build_parser as build_profile_parser
    from agent.serve.cli import add_serve_command
    from agent.skills.cli import add_skills_commands
    from agent.toolsets_cli import add_toolsets_commands

    parser = argparse.ArgumentParser(
        prog="edge-agent", description="Edge SLM agent with cloud fallback over MQTT."
    )
    parser.add_argument("--version", action="version", version=f"edge-slm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    add_models_commands(sub)
    add_serve_command(sub)
    add_skills_commands(sub)
    add_toolsets_commands(sub)
    add_bundle_command(sub)
    build_profile_parser(sub.add_parser("profile", help="device profiles (deploy/profiles.toml)"))
    return parser


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
