from agent.recent import RecentRequests
from edge_slm.contract import ErrorCode, Response

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
    other = ("apps/r", "never-admitted")
    recent.finish(other, Response.failure("never-admitted", ErrorCode.INVALID_REQUEST, "bad"))
    assert recent.begin(other) is False


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
