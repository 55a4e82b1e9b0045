"""bench/record.py keeps the host's CPU steal beside each result: capacity the benchmark did not get."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.record import cpu_times, steal_share


def test_steal_is_the_stolen_share_of_all_cpu_time_spent_over_the_run():
    # /proc/stat's order: user nice system idle iowait irq softirq steal
    before = [1000, 0, 100, 5000, 0, 0, 10, 200]
    after = [1255, 0, 146, 5426, 12, 0, 10, 576]  # 255 + 46 + 426 + 12 + 376 = 1115 ticks, 376 of them stolen
    assert steal_share(before, after) == pytest.approx(376 / 1115, abs=1e-3)
    assert steal_share(before, before) is None  # no time passed: no figure rather than 0%
    assert steal_share([], after) is None  # no procfs at the start


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="no procfs on this platform")
def test_cpu_times_reads_the_eight_summed_counters_from_procfs():
    times = cpu_times()
    assert len(times) == 8 and all(t >= 0 for t in times) and sum(times) > 0
