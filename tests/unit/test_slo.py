"""The one definition of percentiles and of "SLO met"."""

from __future__ import annotations

from tritune import slo


def test_percentiles_interpolate_and_round():
    assert slo.percentile_ms([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert slo.percentile_ms(list(range(101)), 99) == 99.0
    assert slo.percentile_ms([], 99) is None


def test_slo_met_needs_a_success_no_failure_and_a_p99_within():
    assert slo.slo_met(49.9, 0, 50.0) and slo.slo_met(50.0, 0, 50.0)
    assert not slo.slo_met(50.1, 0, 50.0)
    assert not slo.slo_met(10.0, 1, 50.0)  # one failure misses the window
    assert not slo.slo_met(None, 0, 50.0)  # no successful request: nothing was served


def test_window_stats_and_share():
    w = slo.window_stats([5.0] * 99 + [80.0], 0, 50.0)
    assert w["p50_ms"] == 5.0 and w["p99_ms"] > 5.0 and w["failures"] == 0
    assert slo.window_stats([5.0], 0, None)["slo_met"] is None  # no SLO given: not judged
    windows = [{"slo_met": True}, {"slo_met": False}, {"slo_met": True}, {"slo_met": True}]
    assert slo.share_met(windows) == 0.75 and slo.share_met([]) is None
