from agent.recent import RecentRequests
from edge_slm.contract import ErrorCode, Response
from edge_slm.mqtt import Inbound

KEY = ("apps/r", "id-1")


def _ok() -> Response:
    return Response(id="id-1", ok=True, answer="a")


def test_copies_in_flight_are_absorbed_and_answered_ones_replayed() -> None:
    recent = RecentRequests()
    assert recent.begin(KEY) is False  # first copy: go ahead
    assert recent.begin(KEY) is True  # second copy while in flight: absorbed
    recent.finish(KEY, _ok())
    assert recent.begin(KEY) == _ok()  # later copies: the same reply again


def test_retryable_refusals_and_unadmitted_requests_are_not_cached() -> None:
    recent = RecentRequests()
    recent.begin(KEY)
    recent.finish(KEY, Response.failure("id-1", ErrorCode.BUSY, "full"))
    assert recent.begin(KEY) is False  # a retry is served afresh


def test_a_second_final_reply_for_the_same_request_is_refused() -> None:
    recent = RecentRequests()
    orphan = ("apps/r", "from-a-crashed-run")  # answered without being in flight here
    assert recent.finish(orphan, _ok()) == []
    assert recent.finish(orphan, _ok()) is None  # the redelivered copy's own answer: dropped
    assert recent.begin(orphan) == _ok()
    recent.begin(KEY)
    assert recent.finish(KEY, _ok()) == []
    assert recent.finish(KEY, _ok()) is None


def test_bounded_and_expiring() -> None:
    recent = RecentRequests(size=2, ttl_s=60)
    for n in range(3):
        key = ("t", str(n))
        recent.begin(key)
        recent.finish(key, Response(id=str(n), ok=True, answer="a"))
    assert recent.begin(("t", "0")) is False  # evicted (oldest)
    assert isinstance(recent.begin(("t", "2")), Response)
    stale = RecentRequests(ttl_s=0.0)
    stale.begin(KEY)
    stale.finish(KEY, _ok())
    assert stale.begin(KEY) is False


def _delivery(mid: int) -> Inbound:
    return Inbound(topic="slm/d/request", payload=b"{}", qos=1, retain=False, mid=mid)


def test_every_delivery_of_a_request_is_handed_back_once_at_its_final_reply() -> None:
    recent = RecentRequests()
    first, copy = _delivery(1), _delivery(2)
    assert recent.begin(KEY, first) is False
    assert recent.begin(KEY, copy) is True  # absorbed, but still owed a PUBACK
    assert recent.in_flight() == 1
    assert recent.finish(KEY, _ok()) == [first, copy]
    assert recent.finish(KEY, _ok()) is None  # never twice
    assert recent.in_flight() == 0
    # A copy after the reply gets the cached reply; the caller acks it, nothing is held.
    assert recent.begin(KEY, _delivery(3)) == _ok()
    assert recent.in_flight() == 0


def test_a_refused_request_hands_back_its_deliveries() -> None:
    recent = RecentRequests()
    recent.begin(KEY, _delivery(7))
    assert recent.forget(KEY) == [_delivery(7)]
    assert recent.forget(KEY) == []
    recent.begin(KEY, _delivery(8))
    busy = Response.failure("id-1", ErrorCode.BUSY, "full")
    assert recent.finish(KEY, busy) == [_delivery(8)]
    assert recent.begin(KEY) is False  # not cached: a retry is served afresh
