"""bench.mqtt_trace: one request's stamps are picked out of the agent's event stream."""

from __future__ import annotations

from bench.mqtt_trace import PHASES, _request_marks

# The reply to the previous request, its PUBACK, then the next request and its reply.
EVENTS = [
    (0.9, "send_in", "paho", "404"),
    (1.00, "recv_in", "paho", "-"),
    (1.01, "recv_out", "paho", "2"),  # a PUBACK's payload: not the request's header
    (2.00, "recv_in", "paho", "-"),
    (2.01, "recv_out", "paho", "1"),
    (2.02, "recv_in", "paho", "-"),
    (2.03, "recv_out", "paho", "234"),
    (2.10, "on_message_in", "paho", "-"),
    (5.00, "latency_stamp_out", "inference", "-"),
    (5.05, "latency_stamp_out", "inference", "-"),
    (5.30, "send_reply_in", "inference", "-"),
    (5.35, "persist_in", "inference", "-"),
    (5.50, "persist_out", "inference", "-"),
    (5.55, "publish_in", "inference", "-"),
    (5.60, "send_in", "paho", "4"),  # a PUBACK going out first
    (5.80, "send_in", "paho", "404"),
]


def test_marks_follow_one_request_from_its_first_read_to_its_reply() -> None:
    marks = _request_marks(EVENTS, 1.5, 6.0)
    assert marks == {
        "read_start": 2.00,
        "on_message": 2.10,
        "latency_stamp": 5.05,
        "send_reply_in": 5.30,
        "persist_in": 5.35,
        "persist_out": 5.50,
        "publish_in": 5.55,
        "send_in": 5.80,
    }
    marks |= {"client_publish": 1.5, "client_reply": 6.0}
    spans = [marks[b] - marks[a] for _name, a, b in PHASES]
    assert all(span >= 0 for span in spans)
    assert abs(sum(spans) - 4.5) < 1e-9  # the phases tile the round trip


def test_a_request_whose_reply_was_not_seen_is_skipped() -> None:
    assert _request_marks(EVENTS[:-1], 1.5, 6.0) is None
    assert _request_marks(EVENTS, 3.0, 6.0) is None  # its read fell outside the window
