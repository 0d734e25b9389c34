"""``cloud-relay``: the cloud side. Only a skeleton until the relay lands (issue #3)."""

from __future__ import annotations

import argparse
import sys

from edge_slm import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cloud-relay", description="Forward edge escalations to a large LLM (not yet built)."
    )
    parser.add_argument("--version", action="version", version=f"edge-slm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the relay (not implemented yet)")
    parser.parse_args(argv)
    print(
        "cloud-relay run: not implemented yet; the relay is tracked in issue #3",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
