"""The goodput benchmark's rate search and its retry of machine stalls, against a fake config with a known limit."""

from __future__ import annotations

import pytest

from bench.common import rate_search, retry_blips

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
