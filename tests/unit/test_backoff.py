"""``edge_slm.backoff``: one equal-jitter formula, used by the MQTT reconnect and downloads.

Equal jitter: each delay lies in [step / 2, step]. A full-jitter formula
(``uniform(0, step)``), which ``edge_slm.mqtt``'s comment once claimed while its
code did equal jitter, puts delays below step / 2 and fails these tests.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.models import download
from agent.models.errors import DownloadFailed
from edge_slm.backoff import backoff_delay
from edge_slm.mqtt import BrokerUrl, MqttConnection

SAMPLES = 400


def _within_equal_jitter(delays: list[float], step: float) -> None:
    assert all(step / 2 <= d <= step for d in delays)  # a floor: every retry pauses
    # and spread over the upper half, not a fixed value (seeded: deterministic)
    assert min(delays) < 0.55 * step
    assert max(delays) > 0.95 * step


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 12])
def test_delay_is_equal_jitter_around_a_capped_doubling_step(attempt: int) -> None:
    random.seed(attempt)
    step = min(8.0, 0.5 * 2 ** (attempt - 1))
    _within_equal_jitter([backoff_delay(attempt, 0.5, 8.0) for _ in range(SAMPLES)], step)


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        backoff_delay(0, 0.5, 8.0)


def test_mqtt_reconnect_base_is_the_first_step() -> None:
    """paho doubles from the base we give it; that base is backoff_delay's first step."""
    random.seed(7)
    bases = []
    for i in range(SAMPLES):
        conn = MqttConnection(
            url=BrokerUrl.parse("mqtt://127.0.0.1:1"),  # never connected
            client_id=f"backoff-{i}",
            on_connect=lambda: None,
            on_message=lambda _m: None,
            reconnect_min_s=2.0,
            reconnect_max_s=30.0,
        )
        bases.append(float(conn._client._reconnect_min_delay))  # paho keeps it private
    _within_equal_jitter(bases, 2.0)


def test_download_retries_wait_the_shared_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(download.time, "sleep", slept.append)  # record, don't wait
    with pytest.raises(DownloadFailed):
        # port 9 (discard) refuses on loopback: every try fails at once
        download.download_file(
            "http://127.0.0.1:9/x", tmp_path / "x", sha256=None, retries=4, backoff=1.0
        )
    assert len(slept) == 4
    for attempt, delay in enumerate(slept, start=1):
        step = 2.0 ** (attempt - 1)
        assert step / 2 <= delay <= step
