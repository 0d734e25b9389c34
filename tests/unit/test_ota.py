"""Over-the-air updates with stand-in engines over real local HTTP: every step, and rollback."""

from __future__ import annotations

import io
import json
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.engine.holder import ModelSpec
from agent.models.cache import ModelCache
from agent.models.ota import OtaState, OtaStepFailed, OtaUpdater, cache_key, installed_spec, unpack
from edge_slm.contract import DesiredModel, ModelUpdate, ModelUpdateState
from tests.support.http import FileServer, sha256_of, tar_folder

S = ModelUpdateState
OLD = ModelSpec(name="old-model", path=Path("/models/old"))


@dataclass
class FakeEngine:
    spec: ModelSpec
    provider: str = "cpu"


@dataclass
class Device:
    """The daemon's side of the updater: a current model, swaps, pins, reports."""

    current: ModelSpec = OLD
    swaps: list[ModelSpec] = field(default_factory=list)
    undos: int = 0
    pins: list[bool] = field(default_factory=list)
    reports: list[ModelUpdate] = field(default_factory=list)
    fail_load: bool = False
    fail_self_test: bool = False

    def load(self, spec: ModelSpec) -> FakeEngine:
        if self.fail_load:
            raise RuntimeError("Load model from model.onnx failed: protobuf parsing failed")
        config = json.loads((spec.path / "genai_config.json").read_text())
        return FakeEngine(spec, provider=config.get("provider", "cpu"))

    def self_test(self, engine: FakeEngine) -> None:
        if self.fail_self_test:
            raise RuntimeError("self-test: the model generated no tokens")

    def swap(self, spec: ModelSpec, engine: FakeEngine, load_s: float) -> Callable[[], None]:
        previous = self.current
        self.current = spec
        self.swaps.append(spec)

        def undo() -> None:
            self.current = previous
            self.undos += 1

        return undo


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "src" / "tiny-model"
    folder.mkdir(parents=True)
    (folder / "genai_config.json").write_text(json.dumps({"model": {"context_length": 64}}))
    (folder / "model.onnx").write_bytes(b"\x08\x01" * 1000)
    (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.fixture
def served(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "www"
    root.mkdir()
    with FileServer(root) as server:
        yield server


def _updater(tmp_path: Path, device: Device) -> OtaUpdater[FakeEngine]:
    return OtaUpdater[FakeEngine](
        cache=ModelCache(tmp_path / "cache"),
        work_dir=tmp_path / "ota",
        state_path=tmp_path / "state" / "model.json",
        current=lambda: device.current,
        load=device.load,
        self_test=device.self_test,
        swap=device.swap,
        set_pin=device.pins.append,
        report=device.reports.append,
        max_archive_bytes=10_000_000,
        max_unpacked_bytes=10_000_000,
        retries=0,
    )


def _desired(archive: Path, url: str, **fields: object) -> DesiredModel:
    base: dict[str, object] = {
        "device_id": "dev",
        "name": "tiny-model",
        "url": url,
        "sha256": sha256_of(archive),
        "size": archive.stat().st_size,
        "issued_at": time.time(),
    }
    return DesiredModel.model_validate({**base, **fields})


def _publish(served: FileServer, model_folder: Path, name: str = "tiny.tar") -> Path:
    return tar_folder(model_folder, served.root / name)


def test_an_update_installs_swaps_persists_and_reports_every_step(
    tmp_path: Path, served: FileServer, model_folder: Path
) -> None:
    device = Device()
    updater = _updater(tmp_path, device)
    archive = _publish(served, model_folder)
    desired = _desired(archive, served.url("tiny.tar"), pin=True)
    assert updater.apply(desired)
    key = cache_key("tiny-model", desired.sha256)
    [spec] = device.swaps
    assert spec == ModelSpec(
        name="tiny-model",
        path=tmp_path / "cache" / key,
        version=desired.sha256[:12],
        cache_key=key,
    )
    assert device.current == spec
    assert [r.state for r in device.reports] == [
        S.DOWNLOADING,
        S.VERIFYING,
        S.UNPACKING,
        S.IMPORTING,
        S.LOADING,
        S.SELF_TEST,
        S.SWAPPING,
        S.DONE,
    ]
    assert device.pins == [True]
    cache = ModelCache(tmp_path / "cache")
    assert cache.verify(key).ok
    manifest = cache.manifest(key)
    assert manifest is not None
    assert manifest.source.url == served.url("tiny.tar")
    assert manifest.source.sha256 == desired.sha256
    assert (cache.path(key) / "model.onnx").read_bytes() == (
        model_folder / "model.onnx"
    ).read_bytes()
    state = OtaState.read(tmp_path / "state" / "model.json")
    assert (state.name, state.cache_key, state.sha256, state.pin) == (
        "tiny-model",
        key,
        desired.sha256,
        True,
    )
    assert state.last is not None
    assert state.last.state is S.DONE
    assert installed_spec(state, cache) == spec  # what the next start loads
    assert list((tmp_path / "ota").iterdir()) == []  # the temp folder is gone


def test_a_bad_sha256_is_rolled_back_before_anything_is_installed(
    tmp_path: Path, served: FileServer, model_folder: Path
) -> None:
    device = Device()
    updater = _updater(tmp_path, device)
    archive = _publish(served, model_folder)
    desired = _desired(archive, served.url("tiny.tar"), sha256="0" * 64)
    assert not updater.apply(desired)
    assert device.swaps == []
    assert device.current == OLD
    last = device.reports[-1]
    assert last.state is S.FAILED
    assert last.failed_step is S.VERIFYING
    assert last.reason is not None
    assert f"expected {'0' * 64}" in last.reason
    assert ModelCache(tmp_path / "cache").list() == []
    assert list((tmp_path / "ota").iterdir()) == []
    state = OtaState.read(tmp_path / "state" / "model.json")
    assert state.name is None  # the choice is unchanged: a restart runs the old model
    assert state.last == last


def test_a_wrong_size_fails_verification(
    tmp_path: Path, served: FileServer, model_folder: Path
) -> None:
    device = Device()
    archive = _publish(served, model_folder)
    desired = _desired(archive, served.url("tiny.tar"), size=archive.stat().st_size + 1)
    assert not _updater(tmp_path, device).apply(desired)
    assert device.reports[-1].failed_step is S.VERIFYING
    assert "size" in (device.reports[-1].reason or "")


def test_a_missing_archive_fails_the_download(tmp_path: Path, served: FileServer) -> None:
    device = Device()
    desired = DesiredModel(
        device_id="dev",
        name="tiny-model",
        url=served.url("nope.tar"),
        sha256="a" * 64,
        issued_at=1.0,
    )
    assert not _updater(tmp_path, device).apply(desired)
    assert device.reports[-1].failed_step is S.DOWNLOADING
    assert "HTTP 404" in (device.reports[-1].reason or "")


def test_a_model_that_fails_to_load_is_rolled_back_and_uninstalled(
    tmp_path: Path, served: FileServer, model_folder: Path
) -> None:
    device = Device(fail_load=True)
    archive = _publish(served, model_folder)
    desired = _desired(archive, served.url("tiny.tar"))
    assert not _updater(tmp_path, device).apply(desired)
    assert device.swaps == []
    assert device.reports[-1].failed_step is S.LOADING
    assert "protobuf" in (device.reports[-1].reason or "")
    assert ModelCache(tmp_path / "cache").list() == []


def test_a_model_that_fails_the_self_test_is_rolled_back(
    tmp_path: Path, served: FileServer, model_folder: Path
) -> None:
    device = Device(fail_self_test=True)
    archive = _publish(served, model_folder)
    desired = _desired(archive, served.url("tiny.tar"))
    assert not _updater(tmp_path, device).apply(desired)
    assert device.swaps == []
    assert device.current == OLD
    assert device.reports[-1].failed_step is S.SELF_TEST
    assert ModelCache(tmp_path / "cache").list() == []


def test_a_state_file_that_cannot_be_written_swaps_back(
    tmp_path: Path, served: FileServer, model_folder: Path
) -> None:
    device = Device()
    updater = _updater(tmp_path, device)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "model.json.tmp").mkdir()  # the atomic write's temp file cannot exist
    archive = _publish(served, model_folder)
    assert not updater.apply(_desired(archive, served.url("tiny.tar")))
    assert len(device.swaps) == 1
    assert device.undos == 1
    assert device.current == OLD
    assert device.reports[-1].failed_step is S.SWAPPING


def test_zip_archives_and_a_folder_at_the_top(
    tmp_path: Path, served: FileServer, model_folder: Path
) -> None:
    archive = served.root / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in model_folder.iterdir():
            zf.write(path, arcname=path.name)
    device = Device()
    assert _updater(tmp_path, device).apply(_desired(archive, served.url("tiny.zip"), format="zip"))
    assert device.swaps


def _evil_tar(path: Path, member: str) -> Path:
    with tarfile.open(path, "w") as tf:
        data = b"{}"
        info = tarfile.TarInfo("genai_config.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("member", ["../escaped.txt", "/etc/escaped.txt"])
def test_unpacking_refuses_path_traversal(tmp_path: Path, member: str) -> None:
    archive = _evil_tar(tmp_path / "evil.tar", member)
    with pytest.raises(OtaStepFailed) as caught:
        unpack(archive, tmp_path / "out", fmt="tar", max_bytes=10_000)
    assert caught.value.step is S.UNPACKING
    assert "unsafe path" in caught.value.reason
    assert not (tmp_path / "escaped.txt").exists()
    assert not list((tmp_path / "out").rglob("escaped.txt"))


def test_unpacking_refuses_links_out_of_the_folder(tmp_path: Path) -> None:
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("genai_config.json")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(OtaStepFailed) as caught:
        unpack(archive, tmp_path / "out", fmt="tar", max_bytes=10_000)
    assert caught.value.step is S.UNPACKING
    assert not (tmp_path / "out" / "genai_config.json").is_symlink()


def test_unpacking_refuses_zip_traversal(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("genai_config.json", "{}")
        zf.writestr("../escaped.txt", "x")
    with pytest.raises(OtaStepFailed, match="unsafe path"):
        unpack(archive, tmp_path / "out", fmt="zip", max_bytes=10_000)


def test_unpacking_refuses_a_bomb_and_a_folder_without_a_model(tmp_path: Path) -> None:
    archive = tmp_path / "big.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("m/genai_config.json")
        info.size = 5000
        tf.addfile(info, io.BytesIO(b"x" * 5000))
    with pytest.raises(OtaStepFailed, match="bytes >"):
        unpack(archive, tmp_path / "out", fmt="tar", max_bytes=4000)
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as tf:
        info = tarfile.TarInfo("readme.txt")
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(OtaStepFailed, match="no onnxruntime-genai folder"):
        unpack(empty, tmp_path / "out2", fmt="tar", max_bytes=4000)


def test_a_handled_update_is_not_tried_again_but_a_reissued_one_is(
    tmp_path: Path, served: FileServer, model_folder: Path
) -> None:
    device = Device()
    archive = _publish(served, model_folder)
    bad = _desired(archive, served.url("tiny.tar"), sha256="1" * 64)
    updater = _updater(tmp_path, device)
    updater.start()
    try:
        assert updater.submit(bad)
        deadline = time.monotonic() + 10
        while updater.update is None or updater.update.state is not S.FAILED:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert not updater.submit(bad)  # the retained copy after a reconnect
        restarted = _updater(tmp_path, device)  # the outcome survives a restart
        assert not restarted.submit(bad)
        good = _desired(archive, served.url("tiny.tar"))
        assert updater.submit(good)
        while updater.update is None or updater.update.state is not S.DONE:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert updater.apply(good)  # already running: done without a download
        assert served.gets.count("/tiny.tar") == 2
    finally:
        updater.stop()


def test_ota_models_from_older_pushes_are_pruned(
    tmp_path: Path, served: FileServer, model_folder: Path
) -> None:
    device = Device()
    updater = _updater(tmp_path, device)
    keys = []
    for k in range(3):
        (model_folder / "tokenizer.json").write_text(json.dumps({"v": k}))
        archive = _publish(served, model_folder, f"t{k}.tar")
        desired = _desired(archive, served.url(f"t{k}.tar"))
        assert updater.apply(desired)
        keys.append(cache_key("tiny-model", desired.sha256))
    left = sorted(m.name for m in ModelCache(tmp_path / "cache").list())
    assert left == sorted(keys[1:])  # the running one and the one it replaced
