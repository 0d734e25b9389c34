"""Device profiles: which model, provider, threads and memory limit suit this device.

The table lives in ``deploy/profiles.toml``; :func:`detect` reads the hardware from
files only (``/proc/device-tree``, ``/etc/nv_tegra_release``, DMI, ``/proc/cpuinfo``,
``/proc/meminfo``), all relative to ``root``, so tests build fake root filesystems and
an installer can inspect a mounted image. Nothing here imports onnxruntime.

``python -m agent.profiles detect [--root DIR] [--json | --env]`` prints the choice;
``python -m agent.profiles show NAME`` prints one row; ``list`` prints them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE_ENV = "EDGE_SLM_PROFILES"
# The table ships in the checkout (deploy/) and install-device.sh copies it here; it is
# not package data, so an installed wheel alone finds it only through these two paths.
INSTALLED_TABLE = Path("/opt/edge-slm/profiles.toml")
CHECKOUT_TABLE = Path(__file__).resolve().parent.parent / "deploy" / "profiles.toml"

# MemTotal is below the nominal RAM (firmware, GPU carve-outs, kernel); a board holds a
# profile when MemTotal >= RAM_SLACK * ram_gb. 0.85 keeps 4 GB Pis (~3.7 GiB) and 8 GB
# Orins (~7.4 GiB) in their class while a 2 GB Pi 5 (~1.9 GiB) stays out of 4 GB rows.
RAM_SLACK = 0.85
_GIB = 1024**3
_FIELDS = (
    "description",
    "family",
    "arch",
    "ram_gb",
    "accelerator",
    "provider",
    "model",
    "embedder",
)
_PROVIDERS = ("auto", "cpu", "cuda", "qnn", "dml")
_MEMORY_MAX = re.compile(r"^(\d+(\.\d+)?[KMGT]?|infinity|\d+%)$")
_CATALOG_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_RPI = re.compile(r"Raspberry Pi (?:Compute Module )?([45])(?:00)?\b")


class ProfileError(Exception):
    """The table is missing or malformed, or a profile name is unknown."""


@dataclass(frozen=True, slots=True)
class Profile:
    """One row of ``profiles.toml``, plus why it was chosen when detected."""

    name: str
    description: str
    family: str
    arch: str
    ram_gb: float
    accelerator: str
    provider: str
    model: str
    embedder: str  # the skills' sentence encoder (model.embedder)
    threads: int
    memory_max: str
    memory_high: str | None = None
    unit_dropin: str | None = None
    detected_by: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def table_path(explicit: Path | None = None) -> Path:
    """The table to read: ``explicit``, ``$EDGE_SLM_PROFILES``, the checkout's, the installed."""
    if explicit is not None:
        return explicit
    env = os.environ.get(TABLE_ENV)
    if env:
        return Path(env)
    if CHECKOUT_TABLE.is_file():
        return CHECKOUT_TABLE
    return INSTALLED_TABLE


def _profile(name: str, row: Mapping[str, Any]) -> Profile:
    missing = [f for f in (*_FIELDS, "threads", "memory_max") if f not in row]
    if missing:
        raise ProfileError(f"profile {name!r} lacks {', '.join(missing)}")
    unknown = set(row) - {*_FIELDS, "threads", "memory_max", "memory_high", "unit_dropin"}
    if unknown:
        raise ProfileError(f"profile {name!r} has unknown keys {sorted(unknown)}")
    if row["provider"] not in _PROVIDERS:
        raise ProfileError(f"profile {name!r}: provider must be one of {_PROVIDERS}")
    threads = row["threads"]
    if not isinstance(threads, int) or threads < 0:
        raise ProfileError(f"profile {name!r}: threads must be an integer >= 0")
    for key in ("model", "embedder"):
        if not _CATALOG_NAME.match(str(row[key])):
            raise ProfileError(f"profile {name!r}: {key} {row[key]!r} is not a catalog name")
    for key in ("memory_max", "memory_high"):
        if key in row and not _MEMORY_MAX.match(str(row[key])):
            raise ProfileError(f"profile {name!r}: {key} {row[key]!r} is not a size")
    return Profile(
        name=name,
        description=str(row["description"]),
        family=str(row["family"]),
        arch=str(row["arch"]),
        ram_gb=float(row["ram_gb"]),
        accelerator=str(row["accelerator"]),
        provider=str(row["provider"]),
        model=str(row["model"]),
        embedder=str(row["embedder"]),
        threads=threads,
        memory_max=str(row["memory_max"]),
        memory_high=str(row["memory_high"]) if "memory_high" in row else None,
        unit_dropin=str(row["unit_dropin"]) if "unit_dropin" in row else None,
    )


def load_profiles(path: Path | None = None) -> dict[str, Profile]:
    """Read and check the table; raises :class:`ProfileError` with the file named."""
    path = table_path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ProfileError(f"profile table {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile table {str(path)!r}: {exc}") from None
    rows = data.get("profiles")
    if not isinstance(rows, dict) or not rows:
        raise ProfileError(f"profile table {str(path)!r} has no [profiles.*] tables")
    return {name: _profile(name, row) for name, row in rows.items()}


def get_profile(name: str, profiles: Mapping[str, Profile]) -> Profile:
    try:
        return profiles[name]
    except KeyError:
        known = ", ".join(sorted(profiles))
        raise ProfileError(f"unknown profile {name!r}; known: {known}") from None


# -- reading the hardware -----------------------------------------------------


def _read(root: Path, rel: str) -> str:
    """A text file under ``root``, or "" when absent/unreadable (device-tree is NUL-terminated)."""
    try:
        return (root / rel).read_bytes().replace(b"\x00", b"\n").decode("utf-8", "replace")
    except OSError:
        return ""


def mem_total_bytes(root: Path) -> int | None:
    """MemTotal from ``/proc/meminfo``; None when it cannot be read."""
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", _read(root, "proc/meminfo"), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _machine(root: Path, machine: str | None) -> str:
    if machine:
        return machine
    # /proc/sys/kernel/arch (Linux >= 6.1) keeps the fake-root tests hermetic.
    return _read(root, "proc/sys/kernel/arch").strip() or platform.machine()


def _is_snapdragon_x(root: Path) -> str | None:
    dmi = " ".join(
        _read(root, f"sys/class/dmi/id/{f}")
        for f in ("product_name", "product_family", "board_name")
    )
    if re.search(r"Snapdragon(?:\(R\))?\s+X\b", dmi):
        return "DMI names a Snapdragon X"
    compatible = _read(root, "proc/device-tree/compatible")
    if re.search(r"^qcom,x1[ep]\d+", compatible, re.MULTILINE):
        return "device-tree compatible qcom,x1e/x1p (Snapdragon X)"
    cpuinfo = _read(root, "proc/cpuinfo")
    if re.search(r"Oryon|Snapdragon\(R\) X|Snapdragon X", cpuinfo):
        return "/proc/cpuinfo names Oryon / Snapdragon X"
    # arm64 cpuinfo usually has no model name: Qualcomm is implementer 0x51, Oryon part 0x001.
    if re.search(r"CPU implementer\s*:\s*0x51", cpuinfo) and re.search(
        r"CPU part\s*:\s*0x001\b", cpuinfo
    ):
        return "/proc/cpuinfo: Qualcomm implementer 0x51, Oryon part 0x001"
    return None


def _by_ram(
    family: str, fallback: str, mem: int | None, profiles: Mapping[str, Profile], why: str
) -> Profile:
    rows = sorted((p for p in profiles.values() if p.family == family), key=lambda p: p.ram_gb)
    if not rows:
        raise ProfileError(f"the table has no profile of family {family!r}")
    if mem is None:
        chosen = rows[0]
        return dataclasses.replace(chosen, detected_by=f"{why}; MemTotal unreadable: smallest")
    fits = [p for p in rows if mem >= RAM_SLACK * p.ram_gb * _GIB]
    gib = mem / _GIB
    if not fits:
        chosen = get_profile(fallback, profiles)
        return dataclasses.replace(
            chosen,
            detected_by=f"{why}; {gib:.1f} GiB is below every {family} profile: {fallback}",
        )
    return dataclasses.replace(fits[-1], detected_by=f"{why}; MemTotal {gib:.1f} GiB")


#: The generic family of each ``uname -m``.
_GENERIC = {
    "x86_64": "generic-x86-64",
    "amd64": "generic-x86-64",
    "aarch64": "generic-arm64",
    "arm64": "generic-arm64",
}


def detect(
    root: Path = Path("/"),
    *,
    profiles: Mapping[str, Profile] | None = None,
    machine: str | None = None,
) -> Profile:
    """The profile for the device whose root filesystem is ``root``.

    Order: Raspberry Pi (device-tree model), Jetson Orin (nv_tegra_release or
    ``nvidia,tegra234``), Snapdragon X (DMI, device-tree, cpuinfo), then the generic
    profile of the architecture (``machine``, default ``/proc/sys/kernel/arch`` or
    ``uname -m``; x86-64 by RAM too). ``detected_by`` says what matched.
    """
    table = profiles if profiles is not None else load_profiles()
    mem = mem_total_bytes(root)

    model = _read(root, "proc/device-tree/model").strip()
    rpi = _RPI.search(model)
    if rpi:
        return _by_ram(f"rpi{rpi.group(1)}", "generic-arm64", mem, table, f"device-tree {model!r}")

    compatible = _read(root, "proc/device-tree/compatible")
    tegra_release = _read(root, "etc/nv_tegra_release").strip()
    if "nvidia,tegra234" in compatible:
        return _by_ram(
            "jetson-orin", "generic-arm64", mem, table, "device-tree compatible nvidia,tegra234"
        )
    soc = re.search(r"^(nvidia,tegra\d+)", compatible, re.MULTILINE)
    if soc:
        return dataclasses.replace(
            get_profile("generic-arm64", table),
            detected_by=f"{soc.group(1)} is a Jetson older than Orin: generic CPU",
        )
    if tegra_release:
        # Without a device tree (containers), L4T R35/R36 means JetPack 5/6; R36 is
        # Orin-only, R35 also runs Xavier, which the RAM rule then treats like an Orin.
        first = tegra_release.splitlines()[0]
        return _by_ram(
            "jetson-orin", "generic-arm64", mem, table, f"/etc/nv_tegra_release {first!r}"
        )

    snapdragon = _is_snapdragon_x(root)
    if snapdragon:
        return _by_ram("snapdragon-x", "generic-arm64", mem, table, snapdragon)

    arch = _machine(root, machine).lower()
    family = _GENERIC.get(arch)
    if family is None:
        raise ProfileError(f"no profile for architecture {arch!r} (64-bit x86 or Arm only)")
    # By RAM too: an x86 box with 8 GB carries the 1.5B (BENCHMARKS.md, free text per model).
    return _by_ram(family, family, mem, table, f"no known board; machine {arch}")


# -- command line -------------------------------------------------------------


def _emit(profile: Profile, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(profile.as_dict(), indent=2)
    if fmt == "env":
        # key=value, one per line, for `while IFS='=' read -r key value` in shell:
        # values never hold newlines (checked by the table loader's field types).
        return "\n".join(
            f"{k}={'' if v is None else str(v).replace(chr(10), ' ')}"
            for k, v in profile.as_dict().items()
        )
    lines = [f"{profile.name}: {profile.description}"]
    for key in (
        "model",
        "embedder",
        "provider",
        "threads",
        "memory_max",
        "memory_high",
        "accelerator",
        "detected_by",
    ):
        value = getattr(profile, key)
        if value not in (None, ""):
            lines.append(f"  {key:12} {value}")
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``profile`` command line; pass a subparser to mount it under ``edge-agent``."""
    parser = parser or argparse.ArgumentParser(
        prog="python -m agent.profiles", description="Pick the device profile for this board."
    )
    parser.add_argument("--table", type=Path, help=f"profiles.toml (default: ${TABLE_ENV}, …)")
    sub = parser.add_subparsers(dest="profile_command", required=True)
    det = sub.add_parser("detect", help="detect this device's profile")
    det.add_argument("--root", type=Path, default=Path("/"), help="root filesystem to inspect")
    det.add_argument("--machine", help=argparse.SUPPRESS)  # tests: stand-in for uname -m
    show = sub.add_parser("show", help="print one profile")
    show.add_argument("name")
    sub.add_parser("list", help="print every profile")
    for p in (det, show):
        fmt = p.add_mutually_exclusive_group()
        fmt.add_argument("--json", dest="fmt", action="store_const", const="json")
        fmt.add_argument("--env", dest="fmt", action="store_const", const="env")
        p.set_defaults(fmt="text")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``profile`` command; returns the exit code."""
    try:
        table = load_profiles(args.table)
        if args.profile_command == "list":
            for p in table.values():
                print(f"{p.name:22} {p.model:32} {p.provider:5} {p.memory_max:>4}  {p.description}")
            return 0
        if args.profile_command == "show":
            profile = get_profile(args.name, table)
        else:
            profile = detect(args.root, profiles=table, machine=args.machine)
    except ProfileError as exc:
        print(f"profile: {exc}", file=sys.stderr)
        return 2
    print(_emit(profile, args.fmt))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
