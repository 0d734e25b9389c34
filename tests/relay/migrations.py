"""A store as an older relay left it: the schema cut at one migration."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cloud_relay.store import sql as sqlmod


@contextmanager
def schema_at(monkeypatch: pytest.MonkeyPatch, version: int) -> Iterator[None]:
    """Inside it, stores open (and migrate) only up to ``version``, as that relay did."""
    with monkeypatch.context() as m:
        m.setattr(sqlmod, "MIGRATIONS", [mig for mig in sqlmod.MIGRATIONS if mig[0] <= version])
        m.setattr(sqlmod, "SCHEMA_VERSION", version)
        yield
