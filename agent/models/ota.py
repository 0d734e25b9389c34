"""Over-the-air model updates: a desired-model message becomes the running model, or nothing.

The relay publishes a retained :class:`~edge_slm.contract.DesiredModel` on
``<prefix>/<device_id>/model`` (``cloud-relay models push``). The agent hands it
to :class:`OtaUpdater`, whose own thread (never the MQTT network thread, never
the inference worker) runs the steps, reporting each in the retained status
(``model_update``):

1. ``downloading``: the archive into a fresh temp folder under ``ota.work_dir``
   (resumable, retried; ``download.download_file``), refused above
   ``ota.max_archive_bytes``;
2. ``verifying``: its size (when the message gives one) and sha256;
3. ``unpacking``: tar (``filter="data"``: no absolute paths, no ``..``, no links
   out, no devices) or zip (the same checks by hand), refused above
   ``ota.max_unpacked_bytes``; the folder holding ``genai_config.json`` is the model;
4. ``importing``: copied into the model cache as ``<name>-<sha256[:12]>``, so the
   previous model's files stay intact for a rollback;
5. ``loading`` and ``self_test``: the new engine is loaded beside the old one
   and must generate (the start-up self-test);
6. ``swapping``: the inference worker swaps engines between two requests, and
   the choice is persisted (``ota.state_path``) so a restart runs the new model.

Any failure removes what this attempt installed, keeps the previous model
serving, and reports ``failed`` with the step and the reason (and logs
``model_update_failed``). Devices have no build extra, so the archive must
hold a built onnxruntime-genai folder: building from GGUF stays on CI.

A retained message arrives again on every reconnect: an update is identified
by its (sha256, issued_at), and one already handled, done or failed, is not
tried again until the operator issues it anew.
"""

from __future__ import annotations

import queue
import shutil
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Generic, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.engine.holder import ModelSpec
from agent.models.cache import GENAI_CONFIG, ModelCache
from agent.models.download import download_file
from agent.models.errors import ModelError
from agent.models.hashing import sha256_file
from agent.models.manifest import Manifest, SourceRecord
from edge_slm.contract import DesiredModel, ModelUpdate, ModelUpdateState
from edge_slm.logs import get_logger

log = get_logger("agent.models.ota")

E = TypeVar("E")
S = ModelUpdateState


class OtaStepFailed(Exception):
    """One step of an update failed; the update is rolled back."""

    def __init__(self, step: ModelUpdateState, reason: str) -> None:
        self.step = step
        self.reason = reason
        super().__init__(f"{step.value}: {reason}")


class OtaState(BaseModel):
    """What ``ota.state_path`` holds: the installed choice and the latest outcome."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(default=None, description="Installed model name.")
    cache_key: str | None = Field(default=None, description="Its model cache entry.")
    sha256: str | None = Field(default=None, description="sha256 of its archive.")
    pin: bool | None = Field(default=None, description="The pin it was pushed with.")
    last: ModelUpdate | None = Field(default=None, description="Outcome of the latest update.")

    @classmethod
    def read(cls, path: Path) -> OtaState:
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (ValidationError, ValueError, OSError) as exc:
            log.warning("ota_state_unreadable", path=str(path), error=str(exc)[:200])
            return cls()

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)


def cache_key(name: str, sha256: str) -> str:
    """The cache entry of an OTA model: a new one per archive, so a rollback keeps its files."""
    return f"{name}-{sha256[:12]}"


def installed_spec(state: OtaState, cache: ModelCache) -> ModelSpec | None:
    """The persisted OTA choice if its files are still installed, else None."""
    if not (state.name and state.cache_key and state.sha256):
        return None
    try:
        path = cache.require(state.cache_key)
    except ModelError as exc:
        log.warning("ota_model_missing", cache_key=state.cache_key, error=str(exc)[:200])
        return None
    return ModelSpec(
        name=state.name, path=path, version=state.sha256[:12], cache_key=state.cache_key
    )


# -- unpacking -----------------------------------------------------------------


def _check_member(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise OtaStepFailed(S.UNPACKING, f"unsafe path in the archive: {name!r}")


def unpack(archive: Path, dest: Path, *, fmt: str, max_bytes: int) -> Path:
    """Unpack safely into ``dest``; return the folder that holds ``genai_config.json``."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if fmt == "zip":
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                for info in infos:
                    _check_member(info.filename)
                total = sum(i.file_size for i in infos)
                if total > max_bytes:
                    raise OtaStepFailed(S.UNPACKING, f"unpacks to {total} bytes > {max_bytes}")
                zf.extractall(dest)  # noqa: S202 - every member name was checked above
        else:
            with tarfile.open(archive, "r:*") as tf:
                members = tf.getmembers()
                for member in members:
                    _check_member(member.name)  # refused, not silently rewritten by the filter
                total = sum(m.size for m in members if m.isfile())
                if total > max_bytes:
                    raise OtaStepFailed(S.UNPACKING, f"unpacks to {total} bytes > {max_bytes}")
                # "data": refuses absolute paths, "..", links leaving dest, devices (PEP 706).
                tf.extractall(dest, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise OtaStepFailed(S.UNPACKING, f"{type(exc).__name__}: {exc}") from exc
    if (dest / GENAI_CONFIG).is_file():
        return dest
    found = sorted(p.parent for p in dest.glob(f"*/{GENAI_CONFIG}"))
    if len(found) != 1:
        raise OtaStepFailed(
            S.UNPACKING,
            f"the archive holds no onnxruntime-genai folder ({GENAI_CONFIG} at the top or in "
            f"one top-level folder); found {len(found)}",
        )
    return found[0]


# -- the updater -----------------------------------------------------------------


Report = Callable[[ModelUpdate], None]


class OtaUpdater(Generic[E]):
    """Runs desired-model updates one at a time on its own thread."""

    def __init__(
        self,
        *,
        cache: ModelCache,
        work_dir: Path,
        state_path: Path,
        current: Callable[[], ModelSpec],
        load: Callable[[ModelSpec], E],
        self_test: Callable[[E], None],
        swap: Callable[[ModelSpec, E, float], Callable[[], None]],
        set_pin: Callable[[bool], None],
        report: Report,
        max_archive_bytes: int,
        max_unpacked_bytes: int,
        http_timeout_s: float = 30.0,
        retries: int = 5,
    ) -> None:
        self.cache = cache
        self.work_dir = work_dir
        self.state_path = state_path
        self._current = current
        self._load = load
        self._self_test = self_test
        self._swap = swap
        self._set_pin = set_pin
        self._report = report
        self._max_archive = max_archive_bytes
        self._max_unpacked = max_unpacked_bytes
        self._timeout = http_timeout_s
        self._retries = retries
        self._state = OtaState.read(state_path)
        self._lock = threading.Lock()
        self._update = self._state.last  # what the status shows; survives a restart
        self._queue: queue.Queue[DesiredModel | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ota", daemon=True)

    @property
    def update(self) -> ModelUpdate | None:
        with self._lock:
            return self._update

    @property
    def state(self) -> OtaState:
        with self._lock:
            return self._state.model_copy()

    def start(self) -> None:
        self._thread.start()

    def stop(self, join_timeout_s: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(join_timeout_s)

    def submit(self, desired: DesiredModel) -> bool:
        """Queue an update (any thread, cheap); False when it was handled before."""
        last = self.update
        if last is not None and (last.sha256, last.issued_at) == (
            desired.sha256,
            desired.issued_at,
        ):
            log.info(
                "model_update_skipped",
                model=desired.name,
                sha256=desired.sha256[:12],
                why=f"already handled: {last.state.value}",
            )
            return False
        self._queue.put(desired)
        return True

    # -- the thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            desired = self._queue.get()
            if desired is None:
                return
            # A newer message queued behind this one makes it moot: run the newest.
            while True:
                try:
                    newer = self._queue.get_nowait()
                except queue.Empty:
                    break
                if newer is None:
                    return
                desired = newer
            try:
                self.apply(desired)
            except Exception:
                log.exception("model_update_crashed", model=desired.name)

    def _progress(
        self,
        desired: DesiredModel,
        state: ModelUpdateState,
        *,
        failed_step: ModelUpdateState | None = None,
        reason: str | None = None,
    ) -> None:
        update = ModelUpdate(
            name=desired.name,
            sha256=desired.sha256,
            state=state,
            failed_step=failed_step,
            reason=reason,
            issued_at=desired.issued_at,
            ts=time.time(),
        )
        with self._lock:
            self._update = update
        log.info("model_update_progress", model=desired.name, state=state.value)
        try:
            self._report(update)
        except Exception:
            log.exception("model_update_report_failed")

    def apply(self, desired: DesiredModel) -> bool:
        """Run every step; True when the new model serves, False after a rollback."""
        current = self._current()
        if current.version == desired.sha256[:12] and current.name == desired.name:
            log.info("model_update_skipped", model=desired.name, why="already running")
            self._finish(desired)
            return True
        key = cache_key(desired.name, desired.sha256)
        installed_here = False
        started = time.monotonic()
        log.info(
            "model_update_started",
            model=desired.name,
            sha256=desired.sha256[:12],
            url=desired.url,
            issued_by=desired.issued_by,
        )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{desired.name}-", dir=self.work_dir))
        try:
            archive = self._download(desired, tmp)
            self._verify(desired, archive)
            self._progress(desired, S.UNPACKING)
            folder = unpack(
                archive, tmp / "unpacked", fmt=desired.format, max_bytes=self._max_unpacked
            )
            archive.unlink()  # free the space before the cache copy
            self._progress(desired, S.IMPORTING)
            installed_here = self.cache.manifest(key) is None
            path = self._import(desired, folder, key)
            spec = ModelSpec(
                name=desired.name, path=path, version=desired.sha256[:12], cache_key=key
            )
            self._progress(desired, S.LOADING)
            loading = time.perf_counter()
            try:
                engine = self._load(spec)
            except Exception as exc:
                raise OtaStepFailed(S.LOADING, f"{type(exc).__name__}: {exc}") from exc
            load_s = time.perf_counter() - loading
            self._progress(desired, S.SELF_TEST)
            try:
                self._self_test(engine)
            except Exception as exc:
                raise OtaStepFailed(S.SELF_TEST, f"{type(exc).__name__}: {exc}") from exc
            self._progress(desired, S.SWAPPING)
            self._swap_and_persist(desired, spec, engine, load_s, previous=current)
            del engine
        except OtaStepFailed as exc:
            if installed_here:
                self.cache.remove(key)
            log.warning(
                "model_update_failed",
                model=desired.name,
                sha256=desired.sha256[:12],
                step=exc.step.value,
                reason=exc.reason,
                kept=current.name,
            )
            self._finish(desired, exc)
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if desired.pin is not None:
            self._set_pin(desired.pin)
        self._prune(keep={key, current.cache_key})
        log.info(
            "model_update_done",
            model=desired.name,
            version=desired.sha256[:12],
            previous=current.name,
            load_ms=round(load_s * 1000, 1),
            took_s=round(time.monotonic() - started, 2),
        )
        self._finish(desired)
        return True

    def _download(self, desired: DesiredModel, tmp: Path) -> Path:
        self._progress(desired, S.DOWNLOADING)
        if desired.size is not None and desired.size > self._max_archive:
            raise OtaStepFailed(
                S.DOWNLOADING, f"the archive's {desired.size} bytes exceed {self._max_archive}"
            )
        limit = self._max_archive

        def too_large(response: httpx.Response) -> None:
            length = response.headers.get("content-length")
            if length is not None and int(length) > limit:
                raise OtaStepFailed(S.DOWNLOADING, f"the server sends {length} bytes > {limit}")

        archive = tmp / "archive"
        client = httpx.Client(
            follow_redirects=True,
            timeout=httpx.Timeout(self._timeout),
            event_hooks={"response": [too_large]},
        )
        try:
            download_file(
                desired.url,
                archive,
                sha256=None,  # verified in its own step, so the report says which check failed
                size=desired.size,
                client=client,
                retries=self._retries,
                backoff=0.5,
                name=desired.name,
                on_retry=lambda note: log.info("model_update_retry", note=note),
            )
        except ModelError as exc:
            raise OtaStepFailed(S.DOWNLOADING, str(exc)) from exc
        except httpx.HTTPError as exc:
            raise OtaStepFailed(S.DOWNLOADING, f"{type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise OtaStepFailed(S.DOWNLOADING, f"{type(exc).__name__}: {exc}") from exc
        finally:
            client.close()
        return archive

    def _verify(self, desired: DesiredModel, archive: Path) -> None:
        self._progress(desired, S.VERIFYING)
        size = archive.stat().st_size
        if desired.size is not None and size != desired.size:
            raise OtaStepFailed(S.VERIFYING, f"size {size} bytes, expected {desired.size}")
        if size > self._max_archive:
            raise OtaStepFailed(S.VERIFYING, f"size {size} bytes > {self._max_archive}")
        actual = sha256_file(archive)
        if actual != desired.sha256:
            raise OtaStepFailed(S.VERIFYING, f"sha256 {actual}, expected {desired.sha256}")

    def _import(self, desired: DesiredModel, folder: Path, key: str) -> Path:
        try:
            manifest = self.cache.import_dir(folder, key)
            source = SourceRecord(kind="import", url=desired.url, sha256=desired.sha256)
            manifest = Manifest.model_validate(
                {**manifest.model_dump(), "source": source.model_dump()}
            )
            path = self.cache.path(key)
            manifest.write(path)
        except (ModelError, OSError, ValidationError) as exc:
            raise OtaStepFailed(S.IMPORTING, str(exc)) from exc
        return path

    def _swap_and_persist(
        self,
        desired: DesiredModel,
        spec: ModelSpec,
        engine: E,
        load_s: float,
        *,
        previous: ModelSpec,
    ) -> None:
        try:
            undo = self._swap(spec, engine, load_s)
        except Exception as exc:
            raise OtaStepFailed(S.SWAPPING, f"{type(exc).__name__}: {exc}") from exc
        with self._lock:
            new_state = self._state.model_copy(
                update={
                    "name": desired.name,
                    "cache_key": spec.cache_key,
                    "sha256": desired.sha256,
                    "pin": desired.pin,
                }
            )
        try:
            new_state.write(self.state_path)
        except OSError as exc:
            undo()  # a restart would not run it: better not run it now
            raise OtaStepFailed(
                S.SWAPPING, f"could not persist the choice, swapped back to {previous.name}: {exc}"
            ) from exc
        with self._lock:
            self._state = new_state

    def _finish(self, desired: DesiredModel, failure: OtaStepFailed | None = None) -> None:
        """Report the outcome, done or (with ``failure``) failed, and keep it as ``last``."""
        if failure is None:
            self._progress(desired, S.DONE)
        else:
            self._progress(desired, S.FAILED, failed_step=failure.step, reason=failure.reason[:500])
        with self._lock:
            self._state = self._state.model_copy(update={"last": self._update})
            snapshot = self._state
        try:
            snapshot.write(self.state_path)
        except OSError as exc:
            log.warning("ota_state_not_written", path=str(self.state_path), error=str(exc))

    def _prune(self, keep: set[str | None]) -> None:
        """Remove OTA-installed models other than the new one and the one it replaced."""
        for manifest in self.cache.list():
            url = manifest.source.url or ""
            if manifest.name in keep or not url.startswith(("http://", "https://")):
                continue
            if manifest.source.kind == "import" and self.cache.remove(manifest.name):
                log.info("ota_model_pruned", cache_key=manifest.name)
