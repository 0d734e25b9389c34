"""The desired-model topic (over-the-air updates) on the deployed brokers.

Only a relay identity may publish ``slm/<id>/model`` on the cloud broker; the
device reads its own only; and the device's bridge (``edge.conf``) carries it in,
retained, so ``cloud-relay models push`` reaches an agent behind its local broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from edge_slm.topics import DeviceTopics
from tests.security.conftest import (
    DEVICE_A,
    DEVICE_B,
    NOT_AUTHORIZED,
    RELAY,
    LocalClient,
    TlsClient,
)
from tests.support.broker import PrivateBroker

pytestmark = pytest.mark.broker

ACCEPTED = (0x00, 0x10)
A = DeviceTopics("slm", DEVICE_A)
Connect = Callable[..., TlsClient]


def test_only_a_relay_pushes_a_model_and_only_to_the_device_it_names(connect: Connect) -> None:
    a = connect(DEVICE_A)
    assert a.subscribe(A.model) == 1
    relay = connect(RELAY)
    assert relay.publish(A.model, b"desired", retain=True) in ACCEPTED
    assert [m.payload for m in a.received()] == [b"desired"]
    b = connect(DEVICE_B)
    for topic in (A.model, DeviceTopics("slm", DEVICE_B).model):
        assert b.publish(topic, b"forged", retain=True) == NOT_AUTHORIZED
    assert a.received(0.3) == []
    assert b.subscribe(A.model) == NOT_AUTHORIZED  # nor read another device's
    assert b.subscribe("slm/+/model") == NOT_AUTHORIZED


def test_the_bridge_carries_the_retained_desired_model_in(
    bridged: tuple[PrivateBroker, PrivateBroker, TlsClient],
) -> None:
    _cloud, edge, relay = bridged
    assert relay.publish(A.model, b"desired", retain=True) in ACCEPTED
    time.sleep(0.5)
    agent = LocalClient(edge.port)  # subscribes after the push: the retained copy arrives
    try:
        agent.c.subscribe(A.model, 1)
        deadline = time.monotonic() + 5
        while not agent.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(m.topic, m.payload, m.retain) for m in agent.messages] == [
            (A.model, b"desired", True)
        ]
    finally:
        agent.close()
