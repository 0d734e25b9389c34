"""The one log stream: structlog's events, stdlib loggers and Python's warnings."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator

import pytest

from edge_slm.logs import configure_logging, get_logger


@pytest.fixture
def json_logs() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    logging.captureWarnings(False)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("json_logs")
def test_events_library_logs_and_warnings_are_json_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An earlier in-process daemon may have captured warnings already, and pytest then
    # put its own recorder back: start from uncaptured, as a fresh process does.
    logging.captureWarnings(False)
    configure_logging("INFO", "json")
    get_logger("agent").info("request_done", id="r1")
    logging.getLogger("paho.mqtt.client").warning("connection lost")
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # not "once per location" across test runs
        warnings.warn("a library's own warning", UserWarning, stacklevel=1)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["logger"], e["level"]) for e in lines] == [
        ("agent", "info"),
        ("paho.mqtt.client", "warning"),
        ("py.warnings", "warning"),
    ]
    assert lines[0]["id"] == "r1"
    assert "a library's own warning" in lines[2]["event"]
