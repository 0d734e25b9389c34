"""Resumable, verified downloads against a real loopback HTTP server."""

from __future__ import annotations

import errno
import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from agent.models import IntegrityError, ModelCache
from agent.models.catalog import CatalogEntry, HubFile, HubSource
from agent.models.download import download_file, install_download
from agent.models.errors import DiskFull, DownloadFailed, UnpinnedFile
from agent.models.progress import Progress

BLOB = bytes(range(256)) * 4096  # 1 MiB
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()
CONFIG = b'{"model": {"type": "llama"}}'


@dataclass
class ServerState:
    files: dict[str, bytes]
    cut_first: set[str] = field(default_factory=set)  # paths whose first GET dies halfway
    ignore_range: bool = False
    ranges: list[str | None] = field(default_factory=list)
    gets: int = 0


def make_handler(state: ServerState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.gets += 1
            path = self.path.lstrip("/")
            body = state.files.get(path)
            if body is None:
                self.send_error(404)
                return
            rng = self.headers.get("Range")
            state.ranges.append(rng)
            start = 0
            if rng and not state.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if path in state.cut_first:
                state.cut_first.discard(path)
                self.wfile.write(chunk[: len(chunk) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(chunk)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState(files={"m/genai_config.json": CONFIG, "m/model.onnx.data": BLOB})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()


def entry_for(base: str, blob_sha: str | None = BLOB_SHA) -> CatalogEntry:
    return CatalogEntry(
        name="tiny-hub",
        description="test",
        source=HubSource(
            repo="test/tiny",
            revision="abc",
            base_url=f"{base}/m/",
            files=(
                HubFile(path="genai_config.json", sha256=hashlib.sha256(CONFIG).hexdigest()),
                HubFile(path="model.onnx.data", size=len(BLOB), sha256=blob_sha),
            ),
            approx_bytes=len(BLOB),
            license="none",
        ),
        precision="int4",
    )


QUIET = Progress(3, enabled=False)


def test_download_resumes_after_interrupted_transfer(server, tmp_path):
    base, state = server
    state.cut_first.add("m/model.onnx.data")
    dest = tmp_path / "model.onnx.data"
    sha = download_file(f"{base}/m/model.onnx.data", dest, sha256=BLOB_SHA, backoff=0.01)
    assert sha == BLOB_SHA
    assert dest.read_bytes() == BLOB
    assert not dest.with_name("model.onnx.data.part").exists()
    assert state.ranges[0] is None
    # resumed from the received bytes, not restarted
    assert state.ranges[1] is not None
    resumed_from = int(state.ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= len(BLOB) // 2


def test_download_resumes_from_an_existing_part_file(server, tmp_path):
    base, state = server
    dest = tmp_path / "model.onnx.data"
    dest.with_name("model.onnx.data.part").write_bytes(BLOB[:1000])
    download_file(f"{base}/m/model.onnx.data", dest, sha256=BLOB_SHA, size=len(BLOB))
    assert state.ranges == ["bytes=1000-"]
    assert dest.read_bytes() == BLOB


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    base, state = server
    state.ignore_range = True
    dest = tmp_path / "f"
    dest.with_name("f.part").write_bytes(b"garbage")
    assert download_file(f"{base}/m/model.onnx.data", dest, sha256=BLOB_SHA) == BLOB_SHA
    assert dest.read_bytes() == BLOB


def test_hash_mismatch_deletes_the_file(server, tmp_path):
    base, _ = server
    dest = tmp_path / "f"
    with pytest.raises(IntegrityError) as err:
        download_file(f"{base}/m/model.onnx.data", dest, sha256="0" * 64)
    assert BLOB_SHA in str(err.value)
    assert not dest.exists()
    assert not dest.with_name("f.part").exists()


def test_http_errors_are_download_failed(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadFailed, match="HTTP 404"):
        download_file(f"{base}/m/missing", tmp_path / "x", sha256=None)


def test_retries_give_up(tmp_path):
    with pytest.raises(DownloadFailed, match="rerun the same command"):
        download_file("http://127.0.0.1:9/x", tmp_path / "x", sha256=None, retries=1, backoff=0.01)


def test_install_download_verifies_and_installs(server, tmp_path):
    base, state = server
    state.cut_first.add("m/model.onnx.data")
    cache = ModelCache(tmp_path / "cache")
    m = install_download(entry_for(base), cache, progress=QUIET, backoff=0.01)
    assert m.source.kind == "hub-onnx"
    assert {f.path: f.sha256 for f in m.files}["model.onnx.data"] == BLOB_SHA
    assert cache.verify("tiny-hub").ok
    assert sorted(p.name for p in cache.root.iterdir()) == ["tiny-hub"]


def test_install_download_bad_hash_installs_nothing(server, tmp_path):
    base, _ = server
    cache = ModelCache(tmp_path / "cache")
    with pytest.raises(IntegrityError, match=r"model\.onnx\.data"):
        install_download(entry_for(base, blob_sha="1" * 64), cache, progress=QUIET)
    assert cache.manifest("tiny-hub") is None
    assert not cache.path("tiny-hub").exists()


def test_unpinned_files_need_trust(server, tmp_path):
    base, state = server
    cache = ModelCache(tmp_path / "cache")
    entry = entry_for(base, blob_sha=None)
    with pytest.raises(UnpinnedFile, match="--trust-unpinned"):
        install_download(entry, cache, progress=QUIET)
    assert state.gets == 0  # refused before any transfer
    m = install_download(entry, cache, trust_unpinned=True, progress=QUIET)
    assert {f.path: f.sha256 for f in m.files}["model.onnx.data"] == BLOB_SHA


def test_enospc_during_download_is_disk_full(server, tmp_path, monkeypatch):
    base, _ = server
    cache = ModelCache(tmp_path / "cache")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("agent.models.download._fetch", full)
    with pytest.raises(DiskFull) as err:
        install_download(entry_for(base), cache, progress=QUIET)
    assert str(cache.root) in str(err.value)
    assert "1.0 MB free" in str(err.value)


def test_client_can_be_injected(server, tmp_path):
    base, _ = server
    with httpx.Client() as client:
        sha = download_file(
            f"{base}/m/genai_config.json", tmp_path / "g", sha256=None, client=client
        )
    assert sha == hashlib.sha256(CONFIG).hexdigest()
