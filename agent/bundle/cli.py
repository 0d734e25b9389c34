"""``edge-agent bundle``: argument parsing only; the work is :mod:`agent.bundle.build`.

Imported by ``agent/cli.py`` on every start, the device's included, so it imports
nothing but the standard library; the builder is imported inside the handler.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

EXIT_BUNDLE_ERROR = 2
# Debian bookworm's python3, as on Raspberry Pi OS 12; JetPack 6 needs python3.11 added.
DEFAULT_PYTHON = "3.11"


def _checkout() -> Path:
    # agent/bundle/cli.py -> the project root, when run from a checkout.
    return Path(__file__).resolve().parents[2]


def cmd_bundle(args: argparse.Namespace) -> int:
    from agent.bundle import BundleError
    from agent.bundle.build import BundleSpec, make_bundle
    from agent.bundle.wheels import Target
    from agent.models.cache import ModelCache, default_cache_dir
    from agent.profiles import ProfileError

    arch: str = args.arch
    profile = args.profile or ("generic-arm64" if arch == "aarch64" else "generic-x86-64")
    output: Path = args.output or Path(f"edge-slm-bundle-{profile}-{arch}.tar")
    try:
        result = make_bundle(
            BundleSpec(
                project=args.project,
                target=Target(arch=arch, python=args.python),
                profile=profile,
                output=output,
                cache=ModelCache(args.cache_dir or default_cache_dir()),
                models=tuple(args.model or ()),
                find_links=tuple(args.find_links or ()),
                no_index=args.no_index,
            )
        )
    except (BundleError, ProfileError) as exc:
        print(f"bundle: error: {exc}", file=sys.stderr)
        return EXIT_BUNDLE_ERROR
    info = result.info
    print(
        f"wrote {result.path} ({result.size / 1e6:.0f} MB, {result.files} files): "
        f"{info['arch']} Python {info['python']}, profile {info['profile']}, "
        f"models {', '.join(result.models)}, {len(result.wheels)} wheels"
    )
    name = result.path.name
    print(
        f"install offline: tar -xf {name} edge-slm-bundle/deploy/install-device.sh && "
        f"sudo edge-slm-bundle/deploy/install-device.sh --bundle {name} --device-id ID"
    )
    return 0


def add_bundle_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``bundle`` on the ``edge-agent`` subparsers."""
    here = platform.machine()
    p = subparsers.add_parser(
        "bundle",
        help="build one offline install bundle for a device (workstation side)",
        description="Write a tar with wheels for the target, built models, the board "
        "profile, the unit and install-device.sh, and SHA256SUMS of every file. Install "
        "it with `install-device.sh --bundle FILE --device-id ID` (no network needed).",
    )
    p.add_argument(
        "--arch",
        choices=["aarch64", "x86_64"],
        default=here if here in ("aarch64", "x86_64") else "aarch64",
        help="the device's CPU (default: this machine's)",
    )
    p.add_argument(
        "--python",
        default=DEFAULT_PYTHON,
        help=f"the device's Python, major.minor (default {DEFAULT_PYTHON})",
    )
    p.add_argument(
        "--profile",
        default=None,
        help="board profile from deploy/profiles.toml (default generic-arm64 / generic-x86-64)",
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="a built model to include, repeatable; the first is the one served "
        "(default: the profile's model and its skills' encoder, `embedder`)",
    )
    p.add_argument(
        "-o", "--output", type=Path, default=None, help="the tar to write (.gz: gzipped)"
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="model cache to take models from")
    p.add_argument(
        "--project", type=Path, default=_checkout(), help="the edge-slm source tree to package"
    )
    p.add_argument(
        "--find-links",
        action="append",
        type=Path,
        metavar="DIR",
        help="also take wheels from DIR (e.g. ones built for the target), repeatable",
    )
    p.add_argument(
        "--no-index", action="store_true", help="only --find-links, never a package index"
    )
    p.set_defaults(func=cmd_bundle)
    return p
