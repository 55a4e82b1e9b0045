"""The sweep generator as ask/tell on a made-up server model: order, early exit, frontier, best config."""

from __future__ import annotations

import json

import pytest

from loadtest.measure import Measurement, StabilityRule, _stable
from loadtest.report import write_report
from loadtest.sweep import SweepGenerator, SweepSpace
from tritune.errors import ConfigError
from tritune.serving import ServingConfig

BASE = ServingConfig("fp32")


def fake_server(c: ServingConfig, concurrency: int) -> Measurement:
    """Capacity grows with batching and instances; latency is queueing at the given concurrency."""
    capacity = 500.0 * (1.5 if c.dynamic_batching else 1) * (1.2 if c.instances > 1 else 1)
    capacity *= 2.0 if c.variant == "pruned" else 1.0
    throughput = min(capacity, concurrency * 1000 / 2.0)  # 2 ms per request without queueing
    p99 = max(2.0, concurrency / capacity * 1000) * 1.5 + c.max_queue_delay_us / 1000
    return Measurement(throughput, p99 / 2, p99 * 0.9, p99, p99 / 2, 100, 0, 0, True, 3)


def drive(gen: SweepGenerator):
    while (p := gen.ask()) is not None:
        gen.tell(p, fake_server(p.config, p.concurrency))
    return gen


def test_baseline_first_at_every_concurrency_then_the_grid():
    space = SweepSpace(variants=("fp32", "pruned"), instances=(1, 2), queue_delays_us=(None, 2000), concurrency=(1, 8))
    gen = drive(SweepGenerator(space, BASE, slo_p99_ms=30))
    assert [(p.config, p.concurrency, p.baseline) for p in gen.points[:2]] == [(BASE, 1, True), (BASE, 8, True)]
    assert not any(p.baseline for p in gen.points[2:])
    measured = {(p.config, p.concurrency) for p in gen.points}
    assert len(measured) == len(gen.points)  # nothing measured twice
    assert {p.config for p in gen.points} == set(space.server_configs())  # every config visited


def test_a_config_over_the_slo_is_not_pushed_to_more_concurrency():
    space = SweepSpace(variants=("fp32",), instances=(1,), queue_delays_us=(None,), concurrency=(1, 8, 64, 128))
    gen = SweepGenerator(space, ServingConfig("pruned"), slo_p99_ms=30)
    while (p := gen.ask()) is not None:  # throughput keeps growing with concurrency, and so does p99
        c = p.concurrency
        gen.tell(p, Measurement(100.0 * c, c / 2, c * 0.9, float(c), c / 2, 100, 0, 0, True, 3))
    # the baseline (pruned) is measured at every concurrency; fp32 stops at the first one over the SLO
    assert [p.concurrency for p in gen.points if p.baseline] == [1, 8, 64, 128]
    fp32 = [p for p in gen.points if p.config.variant == "fp32"]
    assert [(p.concurrency, p.feasible) for p in fp32] == [(1, True), (8, True), (64, False)]


def test_saturated_config_stops_when_more_concurrency_stops_paying():
    space = SweepSpace(variants=("fp32",), instances=(1,), queue_delays_us=(None,), concurrency=(1, 2, 4, 8, 16))
    gen = drive(SweepGenerator(space, ServingConfig("pruned"), slo_p99_ms=1000))
    fp32 = [p for p in gen.points if p.config.variant == "fp32"]
    # 500/s at concurrency 1 and 2 (2 ms each): no gain from 1 → 2 ends it
    assert [p.concurrency for p in fp32] == [1, 2]


def test_frontier_is_pareto_optimal_and_best_respects_the_slo():
    space = SweepSpace(
        variants=("fp32", "pruned"), instances=(1, 2), queue_delays_us=(None, 4000), concurrency=(1, 4, 16)
    )
    gen = drive(SweepGenerator(space, BASE, slo_p99_ms=30))
    front = gen.frontier()
    assert front
    for p in front:
        for q in gen.points:
            a, b = p.measurement, q.measurement
            assert not (
                b.throughput_infer_per_s >= a.throughput_infer_per_s
                and b.p99_ms <= a.p99_ms
                and (b.throughput_infer_per_s > a.throughput_infer_per_s or b.p99_ms < a.p99_ms)
            )
    best = gen.best()
    assert best.measurement.p99_ms <= 30
    assert best.measurement.throughput_infer_per_s == max(
        p.measurement.throughput_infer_per_s for p in gen.points if p.feasible
    )
    assert best.config.variant == "pruned"
    result = gen.result()
    assert result["points"][0]["baseline"] is True
    assert result["best_vs_baseline_throughput"] > 1
    json.dumps(result)  # serializable as is


def test_ask_tell_protocol_is_enforced():
    gen = SweepGenerator(SweepSpace(variants=("fp32",), concurrency=(1,)), BASE, slo_p99_ms=10)
    p = gen.ask()
    with pytest.raises(RuntimeError, match="tell"):
        gen.ask()
    gen.tell(p, fake_server(p.config, 1))
    with pytest.raises(RuntimeError, match="ask"):
        gen.tell(p, fake_server(p.config, 1))


@pytest.mark.parametrize(
    "kwargs",
    [dict(variants=()), dict(variants=("fp32",), instances=(0,)), dict(variants=("fp32",), queue_delays_us=(-5,))],
)
def test_bad_spaces_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        SweepSpace(**kwargs)


def test_preferred_sizes_without_batching_are_not_duplicated():
    space = SweepSpace(
        variants=("fp32",), instances=(1,), queue_delays_us=(None, 1000), preferred_batch_sizes=((), (8,))
    )
    configs = list(space.server_configs())
    assert len(configs) == 3  # off; 1000 µs; 1000 µs + preferred 8


def test_stability_rule_is_perf_analyzers():
    rule = StabilityRule(stable_windows=3, tolerance=0.10)
    assert not _stable([(100, 5.0), (100, 5.0)], rule)
    assert _stable([(50, 9.0), (100, 5.0), (104, 5.2), (97, 4.9)], rule)
    assert not _stable([(100, 5.0), (130, 5.0), (100, 5.0)], rule)
    assert not _stable([(100, 5.0), (100, 7.0), (100, 5.0)], rule)


def test_report_renders_the_frontier_and_marks_the_baseline(tmp_path):
    space = SweepSpace(variants=("fp32", "pruned"), instances=(1,), queue_delays_us=(None, 2000), concurrency=(1, 8))
    result = drive(SweepGenerator(space, BASE, slo_p99_ms=30)).result()
    path = write_report(tmp_path, "sweep", slo_p99_ms=30, sweep=result)
    text = path.read_text()
    assert text.count("data:image/png;base64,") == 1
    assert "Sweep frontier" in text and "baseline first" in text
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained
