"""The scenario suite's pure parts: load shapes from capacities, convergence after each change, time-weighted top-1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.scenarios import (
    SCENARIOS,
    Capacity,
    change_points,
    change_values,
    convergence,
    frontier,
    missed_after_unforced,
    missed_per_change,
    step_to_decision,
    step_to_serving,
    steps,
)


def windows(missed: set[float], end_s: float) -> list[dict]:
    return [{"start_s": float(t), "slo_met": t not in missed} for t in range(0, int(end_s), 5)]


def test_convergence_counts_from_each_change_to_the_window_from_which_the_slo_held():
    shape = steps((30, 100), (45, 400), (120, 100))
    changes = change_points(shape)
    assert changes == [30.0, 75.0]
    out = convergence(windows({30, 35, 40, 45}, shape.duration_s), changes, shape.duration_s, [-7.0, 35.7, 47.5])
    assert out[0] == {"at_s": 30.0, "seconds_until_slo_holds": 20.0, "actions": 2}
    assert out[1] == {"at_s": 75.0, "seconds_until_slo_holds": 0.0, "actions": 0}
    never = convergence(windows({190}, shape.duration_s), changes, shape.duration_s, [100.0])
    assert never[1] == {"at_s": 75.0, "seconds_until_slo_holds": None, "actions": 1}


def test_every_scenario_builds_its_load_from_the_measured_capacities():
    c = Capacity((1200.0, 1950.0, 2000.0))
    assert c.beyond_top() == pytest.approx(1600.0)  # 1.4× the top level, capped at 0.8× the fastest lower level
    assert Capacity((1000.0, 3000.0)).beyond_top() == pytest.approx(1400.0)
    # a lower level no faster than the top (distilled beside pruned): the cap comes from the fastest below
    assert Capacity((1600.0, 1600.0, 2200.0, 2062.5)).beyond_top() == pytest.approx(1760.0)
    assert len(SCENARIOS) == 8
    for s in SCENARIOS.values():
        shape = s.shape(c)
        peak = max(v for _, v in shape.timeline(1.0))
        assert shape.duration_s >= 90 and 0 < peak <= 0.8 * c.fastest_below_top() + 1e-9
    assert SCENARIOS["long_trace"].shape(c).duration_s >= 300


def test_the_recorded_scenarios_render_as_the_tables_benchmarks_md_shows():
    from bench.render_scenarios import render

    parts = json.loads((Path(__file__).resolve().parents[2] / "docs/results/scenarios.json").read_text())["parts"]
    assert parts, "docs/results/scenarios.json holds no scenario"
    for name, record in parts.items():
        text = render(name, record)
        assert text.startswith(f"#### {name}\n") and f"Commit `{record['commit']}`" in text
        medians = record["result"]["scenarios"][name]["median"]
        for arm in medians:
            assert f"| {arm} | {medians[arm]['share_meeting_slo']:.0%} |" in text
        assert "Goals: " in text


def test_missed_windows_per_step_and_the_seconds_from_a_step_to_the_new_config_serving():
    shape = steps((30, 100), (45, 400), (120, 100))
    changes = change_points(shape)
    assert change_values(shape) == [100, 400, 100]
    ws = windows({30, 35, 105}, shape.duration_s)
    assert missed_per_change(ws, changes, shape.duration_s) == [2, 1]
    actions = [
        {"at_s": -7.0, "rule": "provision-headroom", "apply_s": 0.4},
        {"at_s": 31.2, "rule": "faster-variant", "apply_s": 0.3},
        {"at_s": 104.0, "rule": "restore-variant", "apply_s": 0.5},
    ]
    # an action is logged once its load returned (READY): that is when it serves; its apply time came before
    assert step_to_serving(changes, actions, shape.duration_s) == [1.2, 29.0]
    assert step_to_serving(changes, actions[:2], shape.duration_s) == [1.2, None]
    assert step_to_decision(changes, actions, shape.duration_s) == [0.9, 28.5]
    # the window after the restore missed: a reload the load did not force cost it (the step's misses do not count)
    assert missed_after_unforced(ws, actions, 5.0) == [105.0]


def test_the_frontier_and_who_dominates_whom():
    points = {"default": (0.0, 0.98), "static": (1.0, 0.92), "static_base": (0.9, 0.96), "orchestrator": (0.9, 0.961)}
    front, by = frontier(points)
    assert front == ["default", "static", "orchestrator"]
    assert by["static_base"] == ["orchestrator"] and by["orchestrator"] == []
    assert frontier({"a": (0.9, 0.9), "b": (0.9, 0.9)})[0] == ["a", "b"]  # equal points dominate nothing
    _, by = frontier({"static": (1.0, 0.96), "orchestrator": (0.95, 0.96)})
    assert by["orchestrator"] == ["static"]  # as accurate and more windows met


def test_the_steep_step_goes_to_three_times_its_base_beyond_the_top_level():
    c = Capacity((1000.0, 3000.0))
    timeline = [v for _, v in SCENARIOS["steep_step"].shape(c).timeline(1.0)]
    base, peak = timeline[0], max(timeline)
    assert peak == pytest.approx(3 * base) and peak > c.level(0) and peak <= 0.8 * c.fastest_below_top()
