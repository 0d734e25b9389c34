from agent.actions import NO_TOOL_REASON
from agent.config import CloudSettings, PolicySettings
from agent.policy.router import Router
from edge_slm.contract import EscalationReason, Request, Response, Source, Task, ToolCall

TOPIC = "slm/dev/request"


def _router(budget: bool = True, **policy: object) -> Router:
    return Router(PolicySettings(**policy), CloudSettings(), budget_left=lambda: budget)  # type: ignore[arg-type]


def _req(**fields: object) -> Request:
    return Request.model_validate({"v": 1, "text": "turn on the lights", **fields})


def _edge(confidence: float) -> Response:
    return Response(id="x", ok=True, answer="a", confidence=confidence, source=Source.EDGE)


def test_plain_request_is_not_escalated_before_generation() -> None:
    d = _router().before(_req(), TOPIC)
    assert (d.escalate, d.allowed, d.reason) == (False, True, None)


def test_cloud_always_goes_straight_to_the_cloud() -> None:
    d = _router().before(_req(cloud="always"), TOPIC)
    assert d.escalate
    assert d.reason is EscalationReason.CLOUD_ALWAYS


def test_very_complex_request_goes_straight_to_the_cloud() -> None:
    text = (
        "First compare the energy use of the heat pump and the gas boiler over the last "
        "three winters, then explain step by step why the bill doubled, and finally plan "
        "a schedule that keeps every room above 20 degrees while halving the cost. "
    ) * 3
    d = _router(complexity_direct=0.7).before(_req(text=text, task="answer"), TOPIC)
    assert d.escalate
    assert d.reason is EscalationReason.COMPLEX
    assert "complexity" in d.text


def test_local_only_rules_block_escalation() -> None:
    cases = [
        (_router(), _req(cloud="never"), "cloud: never"),
        (_router(), _req(privacy="local"), "privacy: local"),
        (_router(local_only_kinds=["voice"]), _req(kind="voice"), "kind voice"),
        (
            _router(local_only_sensors=["camera/*"]),
            _req(kind="sensor", sensor={"name": "camera/door", "value": "person"}),
            "sensor camera/door",
        ),
        (_router(local_only_topics=["slm/+/request/health"]), _req(), None),
        (_router(budget=False), _req(cloud="always"), "budget"),
    ]
    for router, request, fragment in cases:
        topic = "slm/dev/request/health" if fragment is None else TOPIC
        d = router.before(request, topic)
        assert not d.escalate
        assert not d.allowed
        assert (fragment or "topic slm/dev/request/health") in d.text


def test_low_confidence_escalates_after_generation() -> None:
    router = _router(thresholds={"classify": 0.6})
    request = _req(task="classify", labels=["on", "off"])
    before = router.before(request, TOPIC)
    low = router.after(request, _edge(0.4), before)
    assert low.escalate
    assert low.reason is EscalationReason.LOW_CONFIDENCE
    assert "0.40 < 0.60" in low.text
    high = router.after(request, _edge(0.8), before)
    assert not high.escalate
    assert "0.80 >= 0.60" in high.text


def test_low_confidence_stays_local_when_not_allowed() -> None:
    router = _router()
    request = _req(cloud="never")
    d = router.after(request, _edge(0.01), router.before(request, TOPIC))
    assert not d.escalate
    assert "cloud: never" in d.text


def test_edge_errors_are_not_escalated() -> None:
    router = _router()
    request = _req()
    error = Response.failure("x", "deadline_exceeded", "late")  # type: ignore[arg-type]
    assert not router.after(request, error, router.before(request, TOPIC)).escalate


def test_cloud_disabled_blocks_everything() -> None:
    router = Router(PolicySettings(), CloudSettings(enabled=False), budget_left=lambda: True)
    assert not router.before(_req(cloud="always"), TOPIC).allowed


# -- act (#17) ----------------------------------------------------------------

_UNLOCK = {
    "type": "function",
    "function": {
        "name": "lock_door",
        "parameters": {"type": "object", "properties": {"locked": {"type": "boolean"}}},
    },
    "risk": "high",
}
_LIGHTS = {"type": "function", "function": {"name": "set_lights"}}


def _call(name: str, confidence: float, reason: str = "answered on the edge") -> Response:
    return Response(
        id="x",
        ok=True,
        tool_call=ToolCall(name=name, arguments={}),
        confidence=confidence,
        source=Source.EDGE,
        reason=reason,
    )


def test_high_risk_tool_escalates_under_its_stricter_threshold() -> None:
    router = _router(thresholds={Task.ACT: 0.5})
    request = _req(task="act", tools=[_UNLOCK, _LIGHTS])
    before = router.before(request, TOPIC)
    lights = router.after(request, _call("set_lights", 0.8), before)
    assert not lights.escalate
    unlock = router.after(request, _call("lock_door", 0.8), before)
    assert unlock.escalate
    assert unlock.reason is EscalationReason.LOW_CONFIDENCE
    assert "lock_door is high-risk" in unlock.text
    assert not router.after(request, _call("lock_door", 0.95), before).escalate


def test_tool_threshold_overrides_the_high_risk_default() -> None:
    router = _router(thresholds={Task.ACT: 0.5})
    request = _req(task="act", tools=[{**_UNLOCK, "threshold": 0.99}])
    before = router.before(request, TOPIC)
    assert router.after(request, _call("lock_door", 0.95), before).escalate


def test_no_tool_fits_escalates_and_cloud_never_keeps_the_edge_answer() -> None:
    router = _router()
    request = _req(task="act", tools=[_LIGHTS])
    none = Response(id="x", ok=True, confidence=0.0, source=Source.EDGE, reason=NO_TOOL_REASON)
    decision = router.after(request, none, router.before(request, TOPIC))
    assert decision.escalate
    assert NO_TOOL_REASON in decision.text
    local = _req(task="act", tools=[_UNLOCK], cloud="never")
    kept = router.after(local, _call("lock_door", 0.3), router.before(local, TOPIC))
    assert not kept.escalate
    assert not kept.allowed


def test_privacy_local_is_never_escalated_nor_sampled_for_learning() -> None:
    # Shadow samples and escalations are what `cloud-relay learn` trains heads on; the
    # handler samples a shadow only when `after(...).allowed`.
    router = _router(shadow_rate=1.0)
    request = _req(task="classify", skill="home_intents", privacy="local")
    before = router.before(request, TOPIC)
    for confidence in (0.01, 0.99):
        d = router.after(request, _edge(confidence), before)
        assert not d.escalate
        assert not d.allowed
    assert router.sample_shadow()  # sampling itself is on: the rule is what stops it


def test_a_young_skill_head_is_sampled_more_and_less_with_each_version() -> None:
    router = _router(shadow_rate=0.05, learning_shadow_rate=0.4)
    assert router.shadow_rate() == 0.05  # no skill: the device's rate
    assert router.shadow_rate(0) == 0.4  # the skill's own text's head
    assert router.shadow_rate(1) == 0.2  # halved per pushed head version
    assert router.shadow_rate(2) == 0.1
    assert router.shadow_rate(4) == 0.05  # never under the device's rate
    assert _router(shadow_rate=0.05).shadow_rate(0) == 0.05  # off by default
    assert _router(learning_shadow_rate=1.0).sample_shadow(0)
    assert not _router(learning_shadow_rate=1.0).sample_shadow()


def test_a_device_config_turns_the_learning_shadow_rate_on_live() -> None:
    router = _router()
    assert router.shadow_rate(0) == 0.0
    changes = router.update(thresholds=None, shadow_rate=None, learning_shadow_rate=0.5)
    assert changes == {"learning_shadow_rate": [0.0, 0.5]}
    assert router.shadow_rate(1) == 0.25
    assert router.update(thresholds=None, shadow_rate=None, learning_shadow_rate=None) == {}
    assert router.shadow_rate(0) == 0.5  # a config without the field keeps it
