from pathlib import Path

import pytest

from cloud_relay.calibrate import Pair, curve, plot, recommend, reliability


def _pairs() -> list[Pair]:
    # Confident answers mostly agree with the cloud, unsure ones mostly do not.
    pairs = []
    for k in range(100):
        confidence = k / 100
        pairs.append(Pair(confidence=confidence, agrees=confidence >= 0.4, shadow=k % 2 == 0))
    return pairs


def test_curve_runs_from_all_edge_to_all_cloud() -> None:
    points = curve(_pairs())
    assert points[0][1:] == (0.0, 0.6)  # nothing escalated: 60 of 100 agree
    assert points[-1][1:] == (1.0, 1.0)  # everything escalated: the cloud's answers
    rates = [p[1] for p in points]
    assert rates == sorted(rates)


def test_target_escalation_rate() -> None:
    rec = recommend("task=classify", _pairs(), target_escalation=0.3)
    assert rec.threshold == pytest.approx(0.30)
    assert rec.escalation_rate == pytest.approx(0.30)
    assert rec.quality == pytest.approx(0.30 + 0.60)
    assert rec.quality_all_edge == pytest.approx(0.6)
    assert (rec.pairs, rec.shadow_pairs) == (100, 50)


def test_target_quality_takes_the_least_escalation() -> None:
    rec = recommend("task=classify", _pairs(), target_quality=1.0)
    assert rec.threshold == pytest.approx(0.40)  # escalate exactly the disagreeing ones
    assert rec.escalation_rate == pytest.approx(0.40)
    assert rec.quality == pytest.approx(1.0)


def test_exactly_one_target_and_some_data() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        recommend("g", _pairs())
    with pytest.raises(ValueError, match="no logged pairs"):
        recommend("g", [], target_escalation=0.3)


def test_reliability_bins() -> None:
    bins = reliability(_pairs(), bins=10)
    assert len(bins) == 10
    assert bins[0][1] == 0.0  # 0.0-0.1: none agree
    assert bins[-1][1] == 1.0
    assert sum(b[2] for b in bins) == 100


def test_plots_are_real_pngs(tmp_path: Path) -> None:
    pairs = _pairs()
    written = plot(
        "task=classify", pairs, recommend("task=classify", pairs, target_escalation=0.3), tmp_path
    )
    assert len(written) == 2
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5_000
