from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cloud_relay.config import LearnSettings
from cloud_relay.learn import TextEncoder, encoder_folder, load_encoder
from cloud_relay.store import RelayStore, open_store

PG_BASE = os.environ.get("RELAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CLOUD_RELAY_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[str]:
    """A fresh schema in the test database, dropped at the end of the run."""
    schema = f"relay_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_BASE, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"!!! PostgreSQL at {PG_BASE} is unreachable, PG tests SKIPPED: {exc}")
    admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


@pytest.fixture
def pg_url(pg_schema_url: str) -> Iterator[str]:
    """The shared test schema, emptied for each test."""
    yield pg_schema_url
    with psycopg.connect(pg_schema_url, autocommit=True) as conn:
        conn.execute(
            "DROP TABLE IF EXISTS relay_log, relay_schema_version, fleet_device, fleet_telemetry, "
            "skill_head, skill_paraphrase"
        )


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relay.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[RelayStore]:
    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture(scope="session")
def encoder() -> TextEncoder:
    """The learn loop's sentence encoder, from the model cache."""
    settings = LearnSettings()
    (name,) = settings.encoders  # the default: the devices' default encoder
    if not (encoder_folder(settings, name) / "model.onnx").is_file():
        pytest.skip(f"encoder {name} is not installed in the model cache")
    return load_encoder(settings, name)
