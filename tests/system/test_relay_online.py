"""A relay coming online gets the escalations that waited for it, at once."""

from __future__ import annotations

from tests.support.system import System


def test_a_relay_coming_online_gets_the_waiting_escalations_at_once(system: System) -> None:
    # Re-sends every 600 s: the only way the escalation goes again within this test is
    # the relay's `online` on its status topic.
    system.start_agent(EDGE_AGENT_OUTBOX__REPUBLISH_S="600", EDGE_AGENT_CLOUD__TIMEOUT_S="1")
    system.ask("waits-1", cloud="always", max_tokens=8)
    first = system.app.next_reply(timeout=60).payload
    assert first["source"] == "edge-fallback"  # no relay: the broker dropped the escalation
    assert system.spy.next_reply(timeout=5).payload["id"] == "waits-1"  # sent once, lost
    system.start_relay()
    resent = system.spy.next_reply(timeout=60).payload
    assert resent["id"] == "waits-1"
    correction = system.app.next_reply(timeout=120).payload
    assert correction["id"] == "waits-1"
    assert correction["supersedes"] is True
    assert correction["source"] == "cloud"
