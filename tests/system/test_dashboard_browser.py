"""The dashboard in a real headless Chromium, over the log of a real run.

Real mosquitto, real LLM server, real relay, two real agents (two devices);
requests escalate, the agents publish telemetry, one agent stops (retained
``offline``). Then ``cloud-relay dashboard`` (a real process, token auth) serves
that store and Debian's Chromium, driven by Playwright, loads the page, filters
by device, checks the device list and that charts are drawn, sees a new
escalation arrive live, and saves a screenshot as a CI artifact.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from cloud_relay.store import LogQuery, open_store
from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, wait_for_status
from tests.support.broker import free_port
from tests.support.procs import Daemon
from tests.support.system import System

CHROMIUM = Path(os.environ.get("EDGE_SLM_CHROMIUM", "/usr/bin/chromium"))
REPO = Path(__file__).resolve().parents[2]
LABELS = ["lights_on", "lights_off", "play_music"]
ALWAYS_ESCALATE = json.dumps({"classify": 1.0, "answer": 1.0})
TOKEN = "dashboard-test-token"  # noqa: S105 - a test credential
#: The series colours app.js gives "cost avoided" and "escalation rate".
GREEN = (5, 150, 105)
VIOLET = (124, 58, 237)


def artifacts_dir() -> Path:
    path = Path(os.environ.get("EDGE_SLM_ARTIFACTS", REPO / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/bootstrap.sh (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


#: Chromium's console warning for repeated ``getImageData`` calls (``colour_pixels``).
CANVAS_READBACK = "Canvas2D: Multiple readback operations using getImageData"


def colour_pixels(page: Page, chart_id: str, rgb: tuple[int, int, int]) -> int:
    """Canvas pixels of ``chart_id`` close to ``rgb``: a series line was drawn."""
    count: int = page.evaluate(
        """([id, rgb]) => {
            const c = document.querySelector(`#${id} canvas`);
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (d[i + 3] > 200 && Math.abs(d[i] - rgb[0]) < 30 &&
                    Math.abs(d[i + 1] - rgb[1]) < 30 && Math.abs(d[i + 2] - rgb[2]) < 30) n++;
            }
            return n;
        }""",
        [chart_id, list(rgb)],
    )
    return count


class Fleet:
    """Two devices on the system's broker, sending classify requests that escalate."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.kitchen = system.topics
        self.garage = DeviceTopics("slm", f"{system.topics.device_id}-garage")
        env = {
            "EDGE_AGENT_POLICY__THRESHOLDS": ALWAYS_ESCALATE,
            "EDGE_AGENT_TELEMETRY__INTERVAL_S": "1",
        }
        system.start_agent(**env)
        self.garage_agent = AgentProcess(
            broker_url=system.broker.url,
            device_id=self.garage.device_id,
            log_path=system.tmp / "agent-garage.log",
            EDGE_AGENT_OUTBOX__PATH=str(system.tmp / "outbox-garage.db"),
            EDGE_AGENT_OUTBOX__REPUBLISH_S="1",
            **env,
        )
        system.agents.append(self.garage_agent)  # closed with the system
        wait_for_status(system.broker.port, self.garage.status, "online")
        self.sent = 0

    def ask(self, topics: DeviceTopics, request_id: str, text: str, **fields: Any) -> None:
        # A long deadline: one small LLM server on two cores answers them one by one.
        payload = {
            "v": 1,
            "id": request_id,
            "text": text,
            "task": "classify",
            "labels": LABELS,
            "deadline_ms": 120_000,
        }
        self.system.app.publish(
            topics.request, {**payload, **fields}, response_topic=self.system.reply_topic
        )
        self.sent += 1

    def replies(self) -> dict[str, dict[str, Any]]:
        got = self.system.app.collect(self.sent, timeout=240)
        self.sent = 0
        return {r.payload["id"]: r.payload for r in got}


def test_dashboard_in_headless_chromium(system: System, browser: Browser) -> None:
    system.start_relay()
    fleet = Fleet(system)
    kitchen, garage = fleet.kitchen.device_id, fleet.garage.device_id
    for i, text in enumerate(["turn on the lights", "play some jazz", "lights off please"]):
        fleet.ask(fleet.kitchen, f"kitchen-{i}", text)
    fleet.ask(fleet.kitchen, "kitchen-local", "turn on the lights", cloud="never")
    for i, text in enumerate(["open the garage door", "is the car charging"]):
        fleet.ask(fleet.garage, f"garage-{i}", text)
    fleet.ask(fleet.garage, "garage-local", "lights on", cloud="never")
    replies = fleet.replies()
    sources = {k: (r["source"], r.get("confidence"), r.get("reason")) for k, r in replies.items()}
    assert {s[0] for k, s in sources.items() if "local" not in k} == {"cloud"}, sources
    assert {replies[k]["source"] for k in ("kitchen-local", "garage-local")} == {"edge"}

    store = open_store(system.db, read_only=True)
    try:
        # Telemetry counts every answer, edge ones included (they carry the cost avoided).
        def reported() -> bool:
            devices = {d.device_id: d for d in store.devices()}
            return all(
                d in devices and devices[d].totals.answered >= (3 if d == garage else 4)
                for d in (kitchen, garage)
            )

        wait_until("telemetry of both devices", reported)
        fleet.garage_agent.terminate()  # clean shutdown: retained "offline"

        def garage_offline() -> bool:
            return {d.device_id: d.state for d in store.devices()}.get(garage) == "offline"

        wait_until("the garage's offline status", garage_offline)
        in_store = {r.request_id: r.device_id for r in store.logs(LogQuery(limit=None))}
        avoided = {d.device_id: d.totals.cost_avoided_usd for d in store.devices()}
        heads = {d.device_id: d.heads for d in store.devices()}
    finally:
        store.close()
    assert sorted(in_store) == sorted(
        [f"kitchen-{i}" for i in range(3)] + [f"garage-{i}" for i in range(2)]
    )
    assert avoided[kitchen] > 0
    assert avoided[garage] > 0

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dashboard = Daemon(
        ["-m", "cloud_relay", "dashboard", "--db", system.db, "--port", str(port)],
        system.tmp / "dashboard.log",
        env={
            "CLOUD_RELAY_DASHBOARD__TOKEN": TOKEN,
            "CLOUD_RELAY_DASHBOARD__REFRESH_S": "1",
            "CLOUD_RELAY_LOG_FORMAT": "json",
        },
    )
    try:
        wait_until("the dashboard", lambda: _healthy(url), timeout=30)
        assert httpx.get(f"{url}/api/logs").status_code == 401
        assert httpx.post(f"{url}/api/logs").status_code in {401, 405}

        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        try:
            _drive(page, url, fleet, in_store, heads[kitchen])
        except BaseException:
            page.screenshot(path=str(artifacts_dir() / "dashboard-failure.png"), full_page=True)
            raise
        finally:
            page.close()
    finally:
        dashboard.terminate(timeout=15)
        dashboard.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _page_problems(page: Page) -> list[str]:
    """The page's errors and console errors and warnings, collected as they come."""
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    def console(m: ConsoleMessage) -> None:
        # Chromium warns when a canvas is read back repeatedly: that is this test's own
        # pixel probe (``colour_pixels``), not the page.
        if m.type in {"error", "warning"} and not m.text.startswith(CANVAS_READBACK):
            problems.append(m.text)

    page.on("console", console)
    return problems


def _drive(
    page: Page,
    url: str,
    fleet: Fleet,
    in_store: dict[str, str],
    kitchen_heads: dict[str, int] | None,
) -> None:
    """Everything the browser does and checks."""
    kitchen, garage = fleet.kitchen.device_id, fleet.garage.device_id
    problems = _page_problems(page)

    # Without the token: the login form, no data.
    page.goto(f"{url}/")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()

    page.goto(f"{url}/#token={TOKEN}")
    expect(page.locator("body")).to_have_attribute("data-loaded", "true")
    assert "token" not in page.url  # taken out of the address bar
    rows = page.locator("#logs tbody tr[data-device]")
    expect(rows).to_have_count(len(in_store))
    shown = dict(
        zip(
            rows.evaluate_all("rs => rs.map(r => r.dataset.request)"),
            rows.evaluate_all("rs => rs.map(r => r.dataset.device)"),
            strict=True,
        )
    )
    assert shown == in_store

    # Filter by device: only that device's rows.
    page.select_option("#f-device", garage)
    expect(rows).to_have_count(2)
    assert set(rows.evaluate_all("rs => rs.map(r => r.dataset.device)")) == {garage}
    expect(page.locator("#logs-meta")).to_have_text("2 matching")
    page.select_option("#f-device", "")
    expect(rows).to_have_count(len(in_store))

    # Text search narrows the table too.
    page.fill("#f-q", "kitchen-1")
    expect(rows).to_have_count(1)
    page.fill("#f-q", "")
    expect(rows).to_have_count(len(in_store))

    # The device list, with status from the retained status topic.
    devices = page.locator("#devices tbody tr[data-device]")
    expect(devices).to_have_count(2)
    kitchen_row = page.locator(f'#devices tr[data-device="{kitchen}"]')
    expect(kitchen_row).to_have_attribute("data-status", "online")
    expect(page.locator(f'#devices tr[data-device="{garage}"]')).to_have_attribute(
        "data-status", "offline"
    )
    # The classify head per skill, as the device's retained status reported it (@0: the
    # head the device fitted from the skill's own text).
    assert kitchen_heads, "the kitchen's status reports no skill heads"
    expect(kitchen_row.locator("td").nth(5)).to_have_text(
        ", ".join(f"{skill}@{v}" for skill, v in sorted(kitchen_heads.items()))
    )
    expect(page.locator("#c-online")).to_have_text("1 / 2")
    expect(page.locator("#c-avoided")).to_have_text(re.compile(r"^\$\d"))  # a figure

    # Charts: four uPlot canvases, and the series lines are actually drawn.
    expect(page.locator(".chart canvas")).to_have_count(4)
    wait_until("the cost avoided line", lambda: colour_pixels(page, "chart-cost", GREEN) > 20, 10)
    # The requests all escalate within seconds: the rate may be one bucket, one point
    # (half of it clipped at the axis), so a few pixels of its colour are enough.
    wait_until(
        "the escalation rate point",
        lambda: colour_pixels(page, "chart-rate", VIOLET) >= 4,
        10,
    )

    # Live: a new escalation shows up without reloading the page.
    fleet.ask(fleet.kitchen, "kitchen-live", "dim the lights to half")
    assert fleet.replies()["kitchen-live"]["source"] == "cloud"
    expect(rows).to_have_count(len(in_store) + 1, timeout=15_000)
    expect(page.locator('#logs tr[data-request="kitchen-live"]')).to_have_count(1)

    # Clicking a device in the list filters by it.
    kitchen_row.click()
    expect(page.locator("#f-device")).to_have_value(kitchen)
    expect(rows).to_have_count(4)
    kitchen_row.click()
    expect(rows).to_have_count(len(in_store) + 1)

    time.sleep(1.5)  # one more live refresh, so the screenshot is settled
    shot = artifacts_dir() / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    assert not problems, problems
    page.close()


def test_act_and_extract_answers_read_as_calls_and_objects(
    browser: Browser, tmp_path: Path
) -> None:
    """An act row shows each side's call as ``name(key=value, ...)``, an extract row its
    object (store migration 6), from a store filled through its API."""
    from tests.relay.test_structured_store import _act, _extract

    db = f"sqlite:///{tmp_path / 'relay.db'}"
    store = open_store(db)
    try:
        _act(store)
        _extract(store, edge_data={"room": "bedroom", "celsius": 20})
    finally:
        store.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dashboard = Daemon(
        ["-m", "cloud_relay", "dashboard", "--db", db, "--port", str(port)],
        tmp_path / "dashboard.log",
        env={"CLOUD_RELAY_DASHBOARD__TOKEN": TOKEN, "CLOUD_RELAY_LOG_FORMAT": "json"},
    )
    try:
        wait_until("the dashboard", lambda: _healthy(url), timeout=30)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        try:
            problems = _page_problems(page)
            page.goto(f"{url}/#token={TOKEN}")
            expect(page.locator("body")).to_have_attribute("data-loaded", "true")
            act = page.locator('#logs tr[data-request="act-1"] td')
            edge, cloud = act.nth(10), act.nth(11)
            expect(cloud).to_have_text('set_temperature(room="bedroom", celsius=21.5)')
            # The edge cell is narrower: cut short, the whole call in its tooltip.
            expect(edge).to_have_text(re.compile(r"^set_temperature\(room=.*\(0\.40\)$"))
            expect(edge).to_have_attribute("title", 'set_temperature(room="bedroom", celsius=20)')
            extract = page.locator('#logs tr[data-request="ex-1"] td')
            expect(extract.nth(11)).to_have_text('{"room":"bedroom","celsius":21}')
            expect(extract.nth(10)).to_have_text('{"room":"bedroom","celsius":20} (0.30)')
            assert not problems, problems
        finally:
            page.close()
    finally:
        dashboard.terminate(timeout=15)
        dashboard.close()
