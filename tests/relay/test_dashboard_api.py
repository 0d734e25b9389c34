"""The dashboard's JSON API and its read-only store, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from starlette.testclient import TestClient

from cloud_relay.cli import main
from cloud_relay.config import DashboardSettings, load_settings
from cloud_relay.dashboard import Auth, create_app
from cloud_relay.dashboard.queries import bucket_size
from cloud_relay.store import (
    Final,
    LogQuery,
    NewEscalation,
    RelayStore,
    StatusUpdate,
    StoreError,
    TelemetrySample,
    open_store,
)
from edge_slm.contract import Outcome
from tests.relay.fleet import status_update

NOW = 1_800_000_000.0  # the app's clock in these tests
T0 = NOW - 3000  # the first escalation
TOKEN = "s3cret-token"  # noqa: S105 - a test credential


def _escalate(
    store: RelayStore,
    device: str,
    rid: str,
    at: float,
    outcome: Outcome | None,
    *,
    text: str = "turn on the lights",
    latency: float = 100.0,
    cost: float = 0.001,
    agreement: bool | None = True,
) -> None:
    store.claim(
        NewEscalation(
            device_id=device,
            request_id=rid,
            relay_id="relay-a",
            received_at=at,
            task="classify",
            kind="voice",
            reason="low_confidence",
            edge_label="lights_on",
            edge_confidence=0.3,
            text=text,
            labels=["lights_on", "lights_off"],
        ),
        stale_before=0,
    )
    if outcome is None:
        return  # in flight
    store.finalize(
        device,
        rid,
        Final(
            outcome=outcome,
            answered_at=at + latency / 1000,
            reply="{}",
            latency_ms=latency,
            llm_model="m",
            tokens_in=10,
            tokens_out=2,
            cost_usd=cost,
            attempts=1,
            cloud_label="lights_on" if outcome is Outcome.OK else None,
            agreement=agreement if outcome is Outcome.OK else None,
            error=None if outcome is Outcome.OK else "upstream 500",
        ),
    )


def _telemetry(
    device: str, ts: float, started_at: float, *, edge: int, cloud: int, esc: int, cost: float
) -> TelemetrySample:
    return TelemetrySample(
        device_id=device,
        ts=ts,
        received_at=ts,
        started_at=started_at,
        model="smol",
        provider="cpu",
        requests={"edge": edge, "cloud": cloud, "edge-fallback": 0, "error": 0},
        escalations=esc,
        cost_avoided_usd=cost,
        latency_ms={"edge": (80.0, 120.0)},
        conditions=None,
        raw=json.dumps({"device_id": device, "ts": ts}),
    )


def _status(device: str, state: str, at: float) -> StatusUpdate:
    return status_update(device, state, at=at)


@pytest.fixture
def filled(store_url: str) -> str:
    """Two devices: 'kitchen' (12 rows, some failed, one in flight) and 'garage' (3 rows)."""
    s = open_store(store_url)
    try:
        for i in range(12):
            outcome = Outcome.LLM_ERROR if i % 4 == 3 else Outcome.OK
            _escalate(s, "kitchen", f"k-{i:02d}", T0 + i * 60, outcome, latency=100.0 + i)
        _escalate(s, "kitchen", "k-inflight", T0 + 800, None)
        for i in range(3):
            _escalate(
                s,
                "garage",
                f"g-{i}",
                T0 + 30 + i * 60,
                Outcome.OK,
                text=f"Open 100%_DOOR number {i}",
                agreement=False,
            )
        # kitchen: one run, started inside the window; counters cumulative.
        s.record_telemetry(_telemetry("kitchen", T0 + 10, T0, edge=4, cloud=1, esc=1, cost=0.0004))
        s.record_telemetry(
            _telemetry("kitchen", T0 + 610, T0, edge=10, cloud=5, esc=5, cost=0.0010)
        )
        # the cloud's answers land later, with no new requests
        s.record_telemetry(
            _telemetry("kitchen", T0 + 700, T0, edge=10, cloud=9, esc=5, cost=0.0010)
        )
        s.record_status(_status("kitchen", "online", NOW - 5))
        s.record_status(_status("garage", "offline", NOW - 600))
    finally:
        s.close()
    return store_url


@pytest.fixture
def ro_store(filled: str) -> Iterator[RelayStore]:
    s = open_store(filled, read_only=True)
    yield s
    s.close()


def _client(store: RelayStore, auth: Auth | None = None, **kw: float) -> TestClient:
    app = create_app(store, auth=auth, clock=lambda: NOW, max_page_size=100, **kw)  # type: ignore[arg-type]
    return TestClient(app)


def _basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


# -- auth ----------------------------------------------------------------------


def test_token_auth_guards_the_api_but_not_the_page_shell(ro_store: RelayStore) -> None:
    client = _client(ro_store, Auth(token=TOKEN))
    refused = client.get("/api/logs")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/api/logs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/devices", headers=_basic("u", TOKEN)).status_code == 401
    ok = client.get("/api/logs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert ok.json()["total"] == 16
    for public in ("/", "/health", "/static/app.js", "/api/config"):
        assert client.get(public).status_code == 200, public
    assert client.get("/api/config").json()["auth"] == "token"


def test_basic_auth_guards_everything_but_health(ro_store: RelayStore) -> None:
    client = _client(ro_store, Auth(username="ops", password="pw"))  # noqa: S106
    for path in ("/", "/static/app.js", "/api/config", "/api/summary"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == 'Basic realm="cloud-relay dashboard"'
    assert client.get("/api/summary", headers=_basic("ops", "wrong")).status_code == 401
    assert client.get("/api/summary", headers=_basic("other", "pw")).status_code == 401
    bad_b64 = {"Authorization": "Basic !!!not-base64"}
    assert client.get("/api/summary", headers=bad_b64).status_code == 401
    assert client.get("/", headers=_basic("ops", "pw")).status_code == 200
    assert client.get("/api/summary", headers=_basic("ops", "pw")).json()["escalations"] == 16
    assert client.get("/health").status_code == 200


def test_no_auth_configured_serves_everything(ro_store: RelayStore) -> None:
    client = _client(ro_store)
    assert client.get("/api/logs").status_code == 200
    assert client.get("/api/config").json()["auth"] == "none"


# -- read-only -----------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/api/logs", "/api/devices", "/api/series", "/static/app.js"]
)
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_only_get_is_allowed(ro_store: RelayStore, path: str, method: str) -> None:
    assert _client(ro_store).request(method, path).status_code == 405


def test_the_read_only_store_refuses_writes(ro_store: RelayStore) -> None:
    with pytest.raises((sqlite3.OperationalError, psycopg.errors.ReadOnlySqlTransaction)):
        _escalate(ro_store, "kitchen", "sneaky", NOW, Outcome.OK)
    assert ro_store.count_logs(LogQuery(device_id="kitchen")) == 13


def test_read_only_open_needs_an_existing_current_store(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(StoreError, match="no relay store"):
        open_store(f"sqlite:///{missing}", read_only=True)
    assert not missing.exists()  # nothing created
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(StoreError, match="no relay schema"):
        open_store(f"sqlite:///{empty}", read_only=True)


def test_security_headers_and_no_caching_of_data(ro_store: RelayStore) -> None:
    client = _client(ro_store)
    api = client.get("/api/logs")
    assert api.headers["cache-control"] == "no-store"
    assert "default-src 'self'" in api.headers["content-security-policy"]
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-frame-options"] == "DENY"
    # Every script and style the page names is served from here: no CDN.
    for asset in ("static/vendor/uplot/uPlot.iife.min.js", "static/app.js", "static/style.css"):
        assert f'"{asset}"' in page.text
        assert client.get(f"/{asset}").status_code == 200
    assert "http" not in page.text.replace("http-equiv", "")


def test_store_points_and_offset(ro_store: RelayStore) -> None:
    with pytest.raises(ValueError, match="offset needs a limit"):
        ro_store.logs(LogQuery(limit=None, offset=5))
    garage = ro_store.log_points("garage")
    assert [p.received_at for p in garage] == [T0 + 30, T0 + 90, T0 + 150]
    assert {p.outcome for p in garage} == {Outcome.OK}
    assert {p.agreement for p in garage} == {False}
    early = ro_store.log_points(since=T0, until=T0 + 31)
    assert [(p.device_id, p.received_at) for p in early] == [("kitchen", T0), ("garage", T0 + 30)]
    inflight = [p for p in ro_store.log_points("kitchen") if p.outcome is None]
    assert len(inflight) == 1
    assert inflight[0].latency_ms is None


# -- the log table: filters and paging -------------------------------------------


def _ids(client: TestClient, **params: str | int | float) -> list[str]:
    body = client.get("/api/logs", params={"page_size": 100, **params}).json()
    return [r["request_id"] for r in body["rows"]]


def test_device_and_outcome_filters(ro_store: RelayStore) -> None:
    client = _client(ro_store)
    assert _ids(client, device="garage") == ["g-2", "g-1", "g-0"]
    kitchen = client.get("/api/logs", params={"device": "kitchen", "page_size": 100}).json()
    assert {r["device_id"] for r in kitchen["rows"]} == {"kitchen"}
    assert kitchen["total"] == 13
    failed = _ids(client, outcome="llm_error")
    assert failed == ["k-11", "k-07", "k-03"]
    assert _ids(client, device="garage", outcome="llm_error") == []


def test_time_range_filter_is_half_open(ro_store: RelayStore) -> None:
    client = _client(ro_store)
    assert _ids(client, device="kitchen", since=T0 + 60, until=T0 + 180) == ["k-02", "k-01"]
    assert _ids(client, since=T0 + 600) == ["k-inflight", "k-11", "k-10"]


def test_text_search_is_case_insensitive_and_literal(ro_store: RelayStore) -> None:
    client = _client(ro_store)
    assert _ids(client, q="DOOR NUMBER 1") == ["g-1"]
    assert sorted(_ids(client, q="100%_door")) == ["g-0", "g-1", "g-2"]
    assert _ids(client, q="100%x") == []  # % is literal, not a wildcard
    assert _ids(client, q="0_d") == []  # and so is _
    assert _ids(client, q="upstream 500") == ["k-11", "k-07", "k-03"]  # the error text
    assert _ids(client, q="k-0") == [f"k-0{i}" for i in range(9, -1, -1)]


def test_paging_covers_every_row_once(ro_store: RelayStore) -> None:
    client = _client(ro_store)
    seen: list[str] = []
    first = client.get("/api/logs", params={"page_size": 5}).json()
    assert (first["total"], first["pages"]) == (16, 4)
    for page in range(1, 5):
        body = client.get("/api/logs", params={"page_size": 5, "page": page}).json()
        assert body["page"] == page
        seen += [r["request_id"] for r in body["rows"]]
    assert len(seen) == 16
    assert len(set(seen)) == 16
    assert seen == _ids(client)  # the same newest-first order as one big page
    past_end = client.get("/api/logs", params={"page_size": 5, "page": 9}).json()
    assert past_end["rows"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"page_size": 101},  # above max_page_size
        {"page": 0},
        {"since": "yesterday"},
        {"outcome": "great"},
    ],
)
def test_bad_parameters_are_400(ro_store: RelayStore, params: dict[str, object]) -> None:
    response = _client(ro_store).get("/api/logs", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


def test_row_fields(ro_store: RelayStore) -> None:
    rows = _client(ro_store).get("/api/logs", params={"q": "k-03"}).json()["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert row["outcome"] == "llm_error"
    assert row["error"] == "upstream 500"
    assert row["latency_ms"] == 103.0
    assert row["text"] == "turn on the lights"
    assert "reply" not in row


# -- devices, summary, series ---------------------------------------------------


def test_devices_show_status_from_the_retained_topic(ro_store: RelayStore) -> None:
    body = _client(ro_store).get("/api/devices").json()
    status = {d["device_id"]: d["status"] for d in body["devices"]}
    assert status == {"garage": "offline", "kitchen": "online"}
    kitchen = next(d for d in body["devices"] if d["device_id"] == "kitchen")
    assert kitchen["last_seen"] == NOW - 5
    assert kitchen["cost_avoided_usd"] == pytest.approx(0.0010)
    stale = _client(ro_store, stale_after_s=1.0).get("/api/devices").json()
    assert {d["device_id"]: d["status"] for d in stale["devices"]}["kitchen"] == "stale"


def test_summary(ro_store: RelayStore) -> None:
    client = _client(ro_store)
    fleet = client.get("/api/summary").json()
    assert fleet["escalations"] == 16
    assert fleet["in_flight"] == 1
    assert fleet["errors"] == 3
    assert fleet["cost_usd"] == pytest.approx(15 * 0.001)
    # agreement: 9 kitchen OK rows agree, 3 garage rows do not
    assert fleet["agreement_rate"] == pytest.approx(9 / 12)
    assert fleet["cost_avoided_usd"] == pytest.approx(0.0010)
    assert (fleet["online"], fleet["devices"]) == (1, 2)
    garage = client.get("/api/summary", params={"device": "garage"}).json()
    assert garage["escalations"] == 3
    assert garage["agreement_rate"] == 0.0
    assert garage["cost_avoided_usd"] is None  # no telemetry
    # a window after the first sample: only the second sample's additions count
    later = client.get("/api/summary", params={"since": T0 + 300}).json()
    assert later["cost_avoided_usd"] == pytest.approx(0.0006)


def test_series_buckets(ro_store: RelayStore) -> None:
    client = _client(ro_store)
    body = client.get("/api/series", params={"since": T0, "until": T0 + 900}).json()
    size = body["bucket_s"]
    assert size == bucket_size(900) == 10  # 90 buckets: the most allowed
    assert len(body["t"]) == 90
    assert body["t"][0] == pytest.approx(T0 // size * size)
    assert sum(body["escalations"]) == 16  # every row falls inside
    assert sum(body["errors"]) == 3
    # the kitchen run started inside the window: sample 1 adds 5 answers, 1 escalation
    first = int((T0 + 10 - body["t"][0]) // size)
    assert body["escalation_rate"][first] == pytest.approx(1 / 5)
    second = int((T0 + 610 - body["t"][0]) // size)
    # sample 2 adds 6 edge answers and 4 escalations: 4 of 10 requests went to the cloud
    assert body["escalation_rate"][second] == pytest.approx(4 / 10)
    third = int((T0 + 700 - body["t"][0]) // size)
    assert body["escalation_rate"][third] is None  # only late cloud answers: no requests
    assert body["cost_avoided_usd"][-1] == pytest.approx(0.0010)
    assert body["cost_usd"][-1] == pytest.approx(0.015)
    assert body["edge_p50_ms"][first] == 80.0
    k03 = int((T0 + 180 - body["t"][0]) // size)
    assert body["cloud_p50_ms"][k03] == 103.0  # failed rows count, as in `stats`
    assert body["cloud_p50_ms"][k03 + 1] is None  # nothing received in that bucket
    k02 = int((T0 + 120 - body["t"][0]) // size)
    assert body["cloud_p50_ms"][k02] == 102.0
    garage_only = client.get(
        "/api/series", params={"since": T0, "until": T0 + 900, "device": "garage"}
    ).json()
    assert sum(garage_only["escalations"]) == 3
    assert [v for v in garage_only["agreement_rate"] if v is not None] == [0.0, 0.0, 0.0]
    assert garage_only["cost_avoided_usd"][-1] == 0.0


def test_series_without_a_start_spans_the_data(ro_store: RelayStore) -> None:
    body = _client(ro_store).get("/api/series").json()
    assert body["t"][0] <= T0
    assert body["t"][-1] <= NOW
    assert sum(body["escalations"]) == 16
    assert body["cost_avoided_usd"][-1] == pytest.approx(0.0010)  # the run counts from zero


# -- settings and the CLI ---------------------------------------------------------


def test_non_loopback_host_needs_auth() -> None:
    with pytest.raises(ValueError, match="not loopback"):
        DashboardSettings(host="0.0.0.0")  # noqa: S104 - the case under test
    assert DashboardSettings(host="0.0.0.0", token=TOKEN).has_auth  # type: ignore[arg-type]  # noqa: S104
    assert DashboardSettings(host="::1").host == "::1"
    assert DashboardSettings(host="localhost").host == "localhost"
    allowed = DashboardSettings(host="10.0.0.5", allow_unauthenticated=True)
    assert not allowed.has_auth
    with pytest.raises(ValueError, match="together"):
        DashboardSettings(username="ops")


def test_token_from_env_and_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_RELAY_DASHBOARD__HOST", "0.0.0.0")  # noqa: S104
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "dashboard__token").write_text(TOKEN)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_settings()
    assert settings.dashboard.token is not None
    assert settings.dashboard.token.get_secret_value() == TOKEN


def test_check_config_hides_the_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUD_RELAY_DASHBOARD__TOKEN", TOKEN)
    assert main(["dashboard", "--port", "9999", "--check-config"]) == 0
    out = capsys.readouterr().out
    assert TOKEN not in out
    dashboard = json.loads(out)["dashboard"]
    assert dashboard["port"] == 9999
    assert dashboard["host"] == "127.0.0.1"


def test_cli_refuses_a_network_host_without_auth(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--host", "0.0.0.0", "--check-config"]) == 2  # noqa: S104
    assert "not loopback" in capsys.readouterr().err


def test_cli_reports_a_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["dashboard", "--db", db, "--port", "1"]) == 2
    assert "no relay store" in capsys.readouterr().err
