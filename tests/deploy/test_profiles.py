"""agent.profiles: the table in deploy/profiles.toml and detection on fake root filesystems."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.models.catalog import CATALOG
from agent.models.embedders import DEFAULT_EMBEDDER, EMBEDDERS
from agent.profiles import CHECKOUT_TABLE, ProfileError, detect, load_profiles, main

GIB_KB = 1024 * 1024
EXPECTED = {
    "rpi4-2gb",
    "rpi4-4gb",
    "rpi4-8gb",
    "rpi5-4gb",
    "rpi5-8gb",
    "jetson-orin-nano-8gb",
    "jetson-orin-nx-16gb",
    "snapdragon-x",
    "generic-x86-64",
    "generic-x86-64-8gb",
    "generic-arm64",
}


def fake_root(tmp_path: Path, mem_gib: float | None, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    if mem_gib is not None:
        meminfo = tmp_path / "proc/meminfo"
        meminfo.parent.mkdir(parents=True, exist_ok=True)
        meminfo.write_text(f"MemTotal:       {int(mem_gib * GIB_KB)} kB\nMemFree: 1 kB\n")
    return tmp_path


# What the kernel really shows: device-tree strings are NUL-terminated.
PI4 = {"proc/device-tree/model": b"Raspberry Pi 4 Model B Rev 1.4\x00"}
PI5 = {"proc/device-tree/model": b"Raspberry Pi 5 Model B Rev 1.0\x00"}
ORIN_NANO_DT = {
    "proc/device-tree/model": b"NVIDIA Jetson Orin Nano Developer Kit\x00",
    "proc/device-tree/compatible": b"nvidia,p3768-0000+p3767-0005\x00nvidia,p3767-0005"
    b"\x00nvidia,tegra234\x00",
}
TEGRA_RELEASE = {
    "etc/nv_tegra_release": "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, "
    "EABI: aarch64, DATE: Mon May  6 17:34:21 UTC 2024\n"
}
ORYON_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 38.40\nCPU implementer\t: 0x51\nCPU architecture: 8\n"
    "CPU variant\t: 0x1\nCPU part\t: 0x001\nCPU revision\t: 2\n\n"
    for i in range(12)
)


@pytest.mark.parametrize(
    ("files", "mem_gib", "machine", "expected"),
    [
        (PI4, 1.8, None, "rpi4-2gb"),
        (PI4, 3.7, None, "rpi4-4gb"),
        (PI4, 7.6, None, "rpi4-8gb"),
        (
            {"proc/device-tree/model": b"Raspberry Pi Compute Module 4 Rev 1.1\x00"},
            3.7,
            None,
            "rpi4-4gb",
        ),
        ({"proc/device-tree/model": b"Raspberry Pi 400 Rev 1.0\x00"}, 3.7, None, "rpi4-4gb"),
        (PI5, 3.9, None, "rpi5-4gb"),
        (PI5, 7.9, None, "rpi5-8gb"),
        (PI5, 15.8, None, "rpi5-8gb"),  # 16 GB Pi 5: the largest rpi5 row
        (ORIN_NANO_DT, 7.4, None, "jetson-orin-nano-8gb"),
        (
            {"proc/device-tree/compatible": b"nvidia,p3509-0000+p3767-0000\x00nvidia,tegra234\x00"},
            15.3,
            None,
            "jetson-orin-nx-16gb",
        ),
        (TEGRA_RELEASE, 15.3, None, "jetson-orin-nx-16gb"),  # container: no device tree
        (TEGRA_RELEASE, 7.4, None, "jetson-orin-nano-8gb"),
        (
            {
                "sys/class/dmi/id/product_name": "Snapdragon(R) X Elite - X1E80100 - Qualcomm(R) "
                "Oryon(TM) CPU\n"
            },
            31.5,
            None,
            "snapdragon-x",
        ),
        ({"proc/cpuinfo": ORYON_CPUINFO}, 15.5, None, "snapdragon-x"),
        (
            {"proc/device-tree/compatible": b"lenovo,thinkpad-t14s\x00qcom,x1e80100\x00"},
            31.5,
            None,
            "snapdragon-x",
        ),
        ({}, 15.5, "x86_64", "generic-x86-64-8gb"),
        ({}, 7.6, "x86_64", "generic-x86-64-8gb"),  # 8 GB nominal, after the firmware's share
        ({}, 3.8, "x86_64", "generic-x86-64"),
        ({}, 3.8, "aarch64", "generic-arm64"),
        (
            {"proc/cpuinfo": "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\n"},
            64,
            "x86_64",
            "generic-x86-64-8gb",
        ),
    ],
)
def test_detect(
    tmp_path: Path,
    files: dict[str, str | bytes],
    mem_gib: float,
    machine: str | None,
    expected: str,
) -> None:
    root = fake_root(tmp_path, mem_gib, files)
    profile = detect(root, machine=machine or "x86_64")
    assert profile.name == expected, profile.detected_by
    assert profile.detected_by


def test_small_boards_fall_back_to_generic(tmp_path: Path) -> None:
    pi5_2gb = detect(fake_root(tmp_path, 1.9, PI5), machine="aarch64")
    assert pi5_2gb.name == "generic-arm64"
    assert "below every rpi5 profile" in pi5_2gb.detected_by


def test_older_jetson_is_not_an_orin(tmp_path: Path) -> None:
    xavier = {"proc/device-tree/compatible": b"nvidia,p3668-0001\x00nvidia,tegra194\x00"}
    profile = detect(fake_root(tmp_path, 7.6, xavier), machine="aarch64")
    assert profile.name == "generic-arm64"
    assert "tegra194" in profile.detected_by


def test_unreadable_meminfo_picks_the_smallest(tmp_path: Path) -> None:
    assert detect(fake_root(tmp_path, None, PI4)).name == "rpi4-2gb"
    assert detect(fake_root(tmp_path / "x86", None, {}), machine="x86_64").name == "generic-x86-64"


def test_unknown_architecture(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="riscv64"):
        detect(fake_root(tmp_path, 4, {}), machine="riscv64")


def test_kernel_arch_file_is_read_relative_to_root(tmp_path: Path) -> None:
    root = fake_root(tmp_path, 4, {"proc/sys/kernel/arch": "aarch64\n"})
    assert detect(root).name == "generic-arm64"


# -- the table ---------------------------------------------------------------------


def test_table_has_every_class_and_sane_values() -> None:
    profiles = load_profiles(CHECKOUT_TABLE)
    assert set(profiles) == EXPECTED
    for p in profiles.values():
        assert p.model in CATALOG, p.name
        assert p.embedder in EMBEDDERS, p.name
        assert p.arch in ("aarch64", "x86_64")
    assert profiles["jetson-orin-nano-8gb"].provider == "cuda"
    assert profiles["jetson-orin-nx-16gb"].provider == "cuda"
    assert profiles["snapdragon-x"].provider == "qnn"
    assert {p.provider for n, p in profiles.items() if not n.startswith(("jetson", "snap"))} == {
        "cpu"
    }


def test_the_larger_encoder_goes_only_where_it_was_measured_to_pay() -> None:
    # BENCHMARKS.md, "Encoder portfolio": measured on x86-64 only (16 ms p50 on 2 cores).
    chosen = {n: p.embedder for n, p in load_profiles(CHECKOUT_TABLE).items()}
    assert {n for n, e in chosen.items() if e != DEFAULT_EMBEDDER} == {"generic-x86-64-8gb"}
    assert chosen["generic-x86-64-8gb"] == "mpnet-base-v2-int8"


def test_a_bad_encoder_name_is_refused(tmp_path: Path) -> None:
    row = CHECKOUT_TABLE.read_text().split("[profiles.rpi4-4gb]")[0]
    table = tmp_path / "p.toml"
    table.write_text(row.replace('embedder = "minilm-l6-v2-int8"', 'embedder = "../x"'))
    with pytest.raises(ProfileError, match=r"embedder '\.\./x' is not a catalog name"):
        load_profiles(table)


def test_memory_max_leaves_room_for_the_os() -> None:
    units = {"G": 1.0, "M": 1 / 1024}
    for p in load_profiles(CHECKOUT_TABLE).values():
        limit = float(p.memory_max[:-1]) * units[p.memory_max[-1]]
        if p.ram_gb:
            assert limit <= p.ram_gb - 1, p.name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"no \[profiles\.\*\] tables"),
        ("[profiles.x]\ndescription = 'x'\n", "lacks"),
        ("[profiles.x\n", "profile table"),
    ],
)
def test_bad_tables(tmp_path: Path, text: str, message: str) -> None:
    table = tmp_path / "p.toml"
    table.write_text(text)
    with pytest.raises(ProfileError, match=message):
        load_profiles(table)


def test_bad_provider(tmp_path: Path) -> None:
    row = CHECKOUT_TABLE.read_text().split("[profiles.rpi4-4gb]")[0]
    table = tmp_path / "p.toml"
    table.write_text(row.replace('provider = "cpu"', 'provider = "tpu"'))
    with pytest.raises(ProfileError, match="provider must be one of"):
        load_profiles(table)


# -- command line ----------------------------------------------------------------------


def test_main_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_root(tmp_path, 7.9, PI5)
    assert main(["detect", "--root", str(root), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "rpi5-8gb"
    assert shown["model"] == "qwen2.5-coder-1.5b-instruct"


def test_main_env_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "snapdragon-x", "--env"]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["provider"] == "qnn"
    assert lines["embedder"] == "minilm-l6-v2-int8"  # install-device.sh writes it
    assert lines["unit_dropin"] == "qualcomm"
    assert main(["show", "nope"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err


def test_module_entry_point(tmp_path: Path) -> None:
    root = fake_root(tmp_path, 3.7, PI4)
    out = subprocess.run(
        [sys.executable, "-m", "agent.profiles", "detect", "--root", str(root)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("rpi4-4gb: ")
    assert "detected_by" in out
