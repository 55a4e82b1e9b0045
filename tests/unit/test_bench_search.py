"""The goodput benchmark's rate search and its retry of machine stalls, against a fake config with a known limit."""

from __future__ import annotations

import pytest

from bench.common import bracket, paired_descent, rate_search, retry_blips, search_below

SLO_MS = 50.0


def config_with_limit(limit_per_s: float, stalls: set[int] = frozenset()):
    """A probe for a config that holds the SLO up to ``limit_per_s``; the calls numbered in ``stalls`` hit a
    ~200 ms stall of the machine whatever the rate."""
    calls = []

    def probe(rate: float):
        calls.append(rate)
        if len(calls) - 1 in stalls:
            return False, {"p99_ms": 210.0, "failed": 0}
        if rate <= limit_per_s:
            return True, {"p99_ms": 8.0, "failed": 0}
        return False, {"p99_ms": 2500.0, "failed": 0}  # a backlog: seconds, not a stall

    return probe, calls


def test_rate_search_finds_the_limit_within_its_bisection_step():
    probe, _ = config_with_limit(700)
    rate, trail = rate_search(probe, 200)
    assert 650 <= rate <= 700
    assert [t["rate_per_s"] for t in trail][:3] == [200, 400, 800]


def test_a_single_stall_fails_the_search_without_retries_and_not_with_one():
    probe, _ = config_with_limit(700, stalls={1})  # the probe at 400 req/s stalls
    assert rate_search(probe, 200)[0] < 400

    probe, calls = config_with_limit(700, stalls={1})
    rate, trail = rate_search(retry_blips(probe, SLO_MS, retries=1), 200)
    assert 650 <= rate <= 700
    assert calls[1:3] == [400, 400]  # the stalled probe was tried again at the same rate
    assert [t["ok"] for t in trail[1]["tries"]] == [False, True]


def test_an_overload_or_a_failed_request_is_not_retried():
    probe, calls = config_with_limit(100)
    ok, info = retry_blips(probe, SLO_MS, retries=3)(400)
    assert not ok and calls == [400] and "tries" not in info

    def failing(rate):
        return False, {"p99_ms": 20.0, "failed": 3}

    assert retry_blips(failing, SLO_MS, retries=3)(400) == (False, {"p99_ms": 20.0, "failed": 3})


@pytest.mark.parametrize("retries", [1, 2])
def test_a_config_that_always_stalls_fails_after_every_try(retries):
    def stalls(rate):
        return False, {"p99_ms_last": 150.0, "failed": 0}  # the orchestrator probe reports p99_ms_last

    ok, info = retry_blips(stalls, SLO_MS, retries=retries)(400)
    assert not ok and len(info["tries"]) == retries + 1


@pytest.mark.parametrize(
    ("limit", "steps", "expected"), [(1200, 3, 1200), (1150, 3, 1100), (1150, 2, 1000), (900, 3, 900)]
)
def test_search_below_tries_the_high_rate_first_then_bisects_to_its_resolution(limit, steps, expected):
    probe, calls = config_with_limit(limit)
    rate, trail = search_below(probe, 400, 1200, bisect_steps=steps)
    assert calls[0] == 1200
    assert rate == expected  # the highest passing point of the grid 400 + k (1200 - 400) / 2^steps
    assert len(calls) == (1 if limit >= 1200 else 1 + steps)
    if rate < 1200:
        lo, hi = bracket(trail, rate)
        assert lo == rate and hi - lo == (1200 - 400) / 2**steps


def test_search_below_checks_the_low_rate_only_when_nothing_above_it_held():
    probe, calls = config_with_limit(300)
    rate, trail = search_below(probe, 400, 1200, bisect_steps=2)
    assert rate == 0.0 and calls == [1200, 800, 600, 400]
    probe, calls = config_with_limit(450)
    assert search_below(probe, 400, 1200, bisect_steps=2)[0] == 400 and calls[-1] == 400
    assert bracket(trail, 0.0) == [0.0, 400]


def drifting_machine(limits_per_s: list[float]):
    """Probes for two arms sharing one machine whose capacity drifts: the n-th probe of either arm meets
    ``limits_per_s[n]`` (the last one from then on)."""
    calls: list[tuple[str, float]] = []

    def probe_for(arm: str):
        def probe(rate: float):
            limit = limits_per_s[min(len(calls), len(limits_per_s) - 1)]
            calls.append((arm, rate))
            return rate <= limit, {"p99_ms": 8.0 if rate <= limit else 2500.0, "failed": 0}

        return probe

    return probe_for, calls


def test_paired_descent_probes_both_arms_at_each_level_until_each_has_held_one():
    probe_for, calls = drifting_machine([1000])
    ref, arm, trail = paired_descent(probe_for("oracle"), probe_for("orch"), 1200, 300, step_frac=0.05)
    assert ref == arm == pytest.approx(960)  # the first level at or below 1,000 (1,020 is above it)
    assert calls[:2] == [("oracle", 1200), ("orch", 1200)]  # in turn, the reference first
    assert [t["level"] for t in trail] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_paired_arms_meet_the_same_machine():
    # The oracle's own search met a machine that held 1,200 req/s; by the orchestrator's turn it holds 900. Probed
    # beside it, the oracle reads 900 too: the same config gives c/b 1 paired (sequentially 900 / 1,200 = 0.75).
    probe_for, _ = drifting_machine([900])
    ref, arm, _ = paired_descent(probe_for("oracle"), probe_for("orch"), 1200, 300, step_frac=0.05)
    assert ref == arm == pytest.approx(900)


def test_a_drift_inside_one_level_is_not_cancelled():
    probe_for, _ = drifting_machine([1200, 900])  # slows between the oracle's and the orchestrator's first probe
    ref, arm, _ = paired_descent(probe_for("oracle"), probe_for("orch"), 1200, 300, step_frac=0.05)
    assert ref == 1200 and arm == pytest.approx(900)


def test_paired_descent_falls_back_to_the_low_rate_when_the_arm_holds_no_level():
    probe_for, _ = drifting_machine([10_000])
    weak = config_with_limit(350)[0]
    ref, arm, trail = paired_descent(probe_for("oracle"), weak, 1200, 300, step_frac=0.1, max_levels=3)
    assert ref == 1200 and arm == 300
    assert trail[-1] == {"level": None, "arm": "arm", "rate_per_s": 300, "ok": True, "p99_ms": 8.0, "failed": 0}
    assert [t["rate_per_s"] for t in trail if t["arm"] == "arm"] == [1200, 1080, 960, 840, 300]
