from agent.engine.selftest import SelfTest


def _check(requested: str, provider: str) -> SelfTest:
    return SelfTest(load_s=0.5, tok_s=100.0, ttft_ms=40.0, provider=provider, requested=requested)


def test_a_silent_cpu_fallback_is_flagged() -> None:
    assert _check("cuda", "cpu").fell_back
    assert _check("qnn", "cpu").fell_back


def test_no_fallback_when_cpu_was_asked_or_auto_or_matched() -> None:
    assert not _check("cpu", "cpu").fell_back
    assert not _check("auto", "cpu").fell_back
    assert not _check("cuda", "cuda").fell_back
