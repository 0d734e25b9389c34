"""The built default model that integration tests run on."""

from __future__ import annotations

from pathlib import Path

from agent.models import DEFAULT_MODEL, ModelCache, default_cache_dir


def built_model_dir() -> Path:
    """The default model's folder in the user's model cache, built first if missing.

    The build needs the ``build`` extra; ``scripts/bootstrap.sh`` normally builds it
    before the tests run, so this is the fallback for a bare ``pytest``.
    """
    cache = ModelCache(default_cache_dir())
    if not cache.is_current(DEFAULT_MODEL):
        # Imported only here: the build tooling pulls in torch.
        from agent.modelbuild.build import build

        build(DEFAULT_MODEL, cache)
    return cache.require(DEFAULT_MODEL)
