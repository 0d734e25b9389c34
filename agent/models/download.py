"""Resumable, verified HTTP downloads of prebuilt onnxruntime-genai folders.

Each file goes to ``<file>.part`` inside a per-model download folder kept in the
cache root (``.download-<name>/``), so an interrupted download resumes with an
HTTP ``Range`` request from the partial file's size. Every file is checked
against its pinned sha256 when complete. A file without a pinned sha256 is
refused unless the caller trusts unpinned files; its computed hash is then
recorded in the manifest (which ``models verify`` checks from then on).

Honest caveat: the catalog's hub entries have no pinned hashes yet (the hub was
unreachable when they were written), so today they all need ``--trust-unpinned``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from agent.models.cache import ModelCache
from agent.models.catalog import CatalogEntry, HubSource
from agent.models.errors import (
    DownloadFailed,
    IntegrityError,
    ModelError,
    UnpinnedFile,
    enospc_as_disk_full,
)
from agent.models.hashing import sha256_file
from agent.models.manifest import Manifest, SourceRecord, record_files
from agent.models.progress import Progress
from edge_slm.backoff import backoff_delay

RETRYABLE = (httpx.TransportError, httpx.RemoteProtocolError)
StatusCallback = Callable[[str], None]


#: The longest pause between two tries of one file.
MAX_BACKOFF_S = 30.0


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    size: int | None = None,
    client: httpx.Client | None = None,
    retries: int = 5,
    backoff: float = 0.5,
    name: str = "download",
    on_retry: StatusCallback | None = None,
) -> str:
    """Download ``url`` to ``dest`` resumably; verify and return the sha256.

    The partial file is ``dest`` + ``.part``; on a hash mismatch it is deleted
    and :class:`IntegrityError` raised, so a bad file is never left at ``dest``.
    A dropped connection, 429 or 5xx is retried up to ``retries`` times, from the
    byte reached, after :func:`edge_slm.backoff.backoff_delay` with ``backoff`` as
    its base (doubling per retry, at most :data:`MAX_BACKOFF_S`).
    """
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        # Finished by an earlier, interrupted install: keep it if it checks out.
        done = sha256_file(dest)
        if sha256 is None or done == sha256:
            return done
        dest.unlink()
    own = client is None
    http = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0))
    try:
        attempt = 0
        while True:
            try:
                _fetch(http, url, part, size)
                break
            except RETRYABLE as exc:
                attempt += 1
                if attempt > retries:
                    raise DownloadFailed(url, f"{type(exc).__name__}: {exc}") from exc
                if on_retry:
                    on_retry(f"retry {attempt}/{retries} of {url} from byte {_size(part)}: {exc}")
                time.sleep(backoff_delay(attempt, backoff, MAX_BACKOFF_S))
            except httpx.HTTPStatusError as exc:
                code = exc.response.status_code
                if code >= 500 or code == 429:
                    attempt += 1
                    if attempt > retries:
                        raise DownloadFailed(url, f"HTTP {code}") from exc
                    time.sleep(backoff_delay(attempt, backoff, MAX_BACKOFF_S))
                    continue
                raise DownloadFailed(url, f"HTTP {code}") from exc
    finally:
        if own:
            http.close()
    actual = sha256_file(part)
    if sha256 is not None and actual != sha256:
        part.unlink()
        raise IntegrityError(
            name,
            dest.name,
            sha256,
            actual,
            fix="the partial file was deleted; rerun the download, and if it fails "
            "again the pinned hash or the server's file is wrong",
        )
    part.replace(dest)
    return actual


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _fetch(http: httpx.Client, url: str, part: Path, size: int | None) -> None:
    have = _size(part)
    if size is not None and have == size:
        return
    if size is not None and have > size:
        part.unlink()
        have = 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with http.stream("GET", url, headers=headers) as resp:
        if resp.status_code == 416 and have:
            # Range not satisfiable: the part is complete (size was unknown).
            return
        resp.raise_for_status()
        if have and resp.status_code != 206:
            # The server ignored Range: start over rather than append garbage.
            have = 0
        with part.open("ab" if have else "wb") as out:
            # No chunk_size: write each network read as it arrives, so an
            # interrupted transfer leaves every received byte in the .part file.
            for chunk in resp.iter_bytes():
                out.write(chunk)
        expected = resp.headers.get("content-length")
        if expected is not None and _size(part) != have + int(expected):
            raise httpx.RemoteProtocolError("connection closed before the body was complete")


def install_download(
    entry: CatalogEntry,
    cache: ModelCache,
    *,
    trust_unpinned: bool = False,
    client: httpx.Client | None = None,
    progress: Progress | None = None,
    retries: int = 5,
    backoff: float = 0.5,
) -> Manifest:
    """Download every file of a hub entry, verify it, and install it atomically."""
    source = entry.source
    if not isinstance(source, HubSource):
        raise ModelError(
            f"{entry.name!r} is built from source; run `edge-agent models build {entry.name}`"
        )
    unpinned = [f.path for f in source.files if f.sha256 is None]
    if unpinned and not trust_unpinned:
        raise UnpinnedFile(entry.name, unpinned)
    progress = progress or Progress(len(source.files) + 1)
    cache.root.mkdir(parents=True, exist_ok=True)
    workdir = cache.root / f".download-{entry.name}"
    needed = sum(f.size or 0 for f in source.files) or source.approx_bytes
    with enospc_as_disk_full(cache.root, needed):
        for f in source.files:
            with progress.stage(f"download {f.path}"):
                download_file(
                    source.url(f),
                    workdir / f.path,
                    sha256=f.sha256,
                    size=f.size,
                    client=client,
                    retries=retries,
                    backoff=backoff,
                    name=entry.name,
                    on_retry=progress.note,
                )
        with progress.stage("install: hash files, write manifest"):
            files = record_files(workdir)
            manifest = Manifest(
                name=entry.name,
                source=SourceRecord(kind="hub-onnx", url=source.base_url),
                precision=entry.precision,
                execution_provider=entry.execution_providers[0],
                files=files,
            )
            with cache.staging(entry.name) as tmp:
                stage = tmp / "model"
                workdir.rename(stage)
                try:
                    cache.commit(stage, manifest)
                except BaseException:
                    shutil.rmtree(stage, ignore_errors=True)
                    raise
    return manifest
