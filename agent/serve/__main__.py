"""``python -m agent.serve [flags]``: the same as ``edge-agent serve [flags]``."""

from __future__ import annotations

import argparse
import sys

from agent.serve.cli import add_serve_command
from edge_slm.console import run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.serve")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_command(sub)
    return run_command(parser, ["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
