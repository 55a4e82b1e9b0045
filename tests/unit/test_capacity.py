"""The fleet capacity signal (orchestrator/capacity.py) on windows recorded from a real Triton
(tests/data/capacity_windows.json, written by tests/data/record_capacity_windows.py), and the HPA's algorithm
applied to it over a load step. The HPA here is test code: its documented formula, tolerance and stabilization."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import pytest

from orchestrator.capacity import LEARNED_WINDOWS, CapacityEstimator
from orchestrator.metrics import Window
from orchestrator.policy import Context, Objective, ServingConfig, VariantInfo

DATA = json.loads((Path(__file__).parent.parent / "data" / "capacity_windows.json").read_text())
WINDOW_FIELDS = {f.name for f in fields(Window)}


def recorded(phase: int) -> tuple[ServingConfig, list[Window]]:
    p = DATA["phases"][phase]
    config = ServingConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in p["config"].items()})
    windows = []
    for s in p["windows"]:
        kw = {k: v for k, v in s.items() if k in WINDOW_FIELDS}
        kw["replica_pending"] = tuple(sorted((kw.get("replica_pending") or {}).items()))
        windows.append(Window(**kw))
    return config, windows


def context() -> Context:
    """The two recorded variants with their recorded costs. On the bundled digits every variant ties on top-1, so
    the served-first variant is made the most accurate here: the capacity maths needs only that it is the
    expensive one, which the recorded costs and service rates show."""
    served = [p["config"]["variant"] for p in DATA["phases"]]
    variants = {n: VariantInfo(n, f"cnn_{n}", DATA["variants"][n]["top1"], DATA["variants"][n]["latency_ms_b32"])
                for n in served}  # fmt: skip
    accurate = DATA["accurate"]
    variants[accurate] = replace(variants[accurate], top1=max(v.top1 for v in variants.values()) + 0.01)
    return Context(objective=Objective(50.0), variants=variants, cores=2)


def test_the_recording_is_what_the_tests_assume():
    (accurate, _), (cheaper, _) = recorded(0), recorded(1)
    ctx = context()
    assert accurate.variant == ctx.most_accurate().name and ctx.cost(cheaper.variant) < ctx.cost(accurate.variant)
    for phase in (0, 1):
        _, ws = recorded(phase)
        assert len(ws) >= LEARNED_WINDOWS and all(w.requests and not w.failures for w in ws)
    assert service_rate(1) > 1.2 * service_rate(0)  # the cheaper variant has capacity to bridge with


def test_the_signal_does_not_fall_when_the_orchestrator_steps_down_a_variant():
    """Same offered load, first on the most accurate variant, then on a cheaper one (what the orchestrator does
    under pressure): the cheaper variant is busy for less of each window, which a queue- or busy-based signal
    reads as less demand; the capacity signal, quoted at the most accurate variant, does not fall."""
    ctx = context()
    est = CapacityEstimator()
    (acc_cfg, acc), (cheap_cfg, cheap) = recorded(0), recorded(1)
    before = [est.observe(w, acc_cfg, ctx) for w in acc][-1]
    assert before.source == "learned" and before.variant == ctx.most_accurate().name
    busy_before = statistics.median(w.busy_s / w.interval_s for w in acc)
    busy_after = statistics.median(w.busy_s / w.interval_s for w in cheap)
    assert busy_after < busy_before
    after = [est.observe(w, cheap_cfg, ctx) for w in cheap]
    offered_before = statistics.median(w.throughput_infer_per_s for w in acc)
    for reading in after:
        assert reading.per_replica_infer_per_s == before.per_replica_infer_per_s
        # the offered load is the same load: the ratio moves with its noise only, inside the HPA's 10% tolerance
        assert reading.ratio >= before.ratio * (reading.offered_infer_per_s / offered_before) * 0.999
        assert reading.ratio >= 0.9 * before.ratio, (before, reading)


def test_before_the_accurate_variant_is_measured_the_manifest_converts_another_variant_s_rate():
    ctx = context()
    cheap_cfg, cheap = recorded(1)
    est = CapacityEstimator()
    reading = [est.observe(w, cheap_cfg, ctx) for w in cheap][-1]
    assert reading.source == "learned-converted" and reading.variant == ctx.most_accurate().name
    rate = statistics.median(w.throughput_infer_per_s / (w.busy_s / w.interval_s) for w in cheap[-20:])
    expected = rate * ctx.cost(cheap_cfg.variant) / ctx.cost(reading.variant) * 0.9
    assert reading.per_replica_infer_per_s == pytest.approx(expected, rel=0.05)


def test_the_sweep_estimate_serves_until_enough_windows_are_learned():
    ctx = context()
    est = CapacityEstimator(sweep_infer_per_s=400.0)
    cfg, ws = recorded(0)
    readings = [est.observe(w, cfg, ctx) for w in ws]
    assert [r.source for r in readings[: LEARNED_WINDOWS - 1]] == ["sweep"] * (LEARNED_WINDOWS - 1)
    assert readings[0].ratio == pytest.approx(readings[0].offered_infer_per_s / 400.0)
    assert readings[-1].source == "learned"
    assert CapacityEstimator().observe(Window(0, 2), cfg, ctx).source == "none"


# -- the HPA's algorithm over a load step --------------------------------------------------------------------------
@dataclass
class Hpa:
    """Kubernetes' HPA for one metric, every sync: usage = value / target (Value) or value / (target × replicas)
    (AverageValue); unless within the 10% tolerance, desired = ceil(replicas × usage); scale-up at once
    (stabilization 0 s), scale-down to the highest recommendation of the last 300 s. ``replicas`` is the
    Deployment's: the pods asked for, ready or not."""

    target_type: str  # "Value" or "AverageValue"
    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int = 4
    tolerance: float = 0.1
    down_window_s: float = 300.0
    history: list = field(default_factory=list)

    def sync(self, t: float, value: float | None, target: float = 1.0) -> int:
        desired = self.replicas
        if value is not None:
            usage = value / target if self.target_type == "Value" else value / (target * self.replicas)
            if abs(usage - 1) > self.tolerance:
                desired = math.ceil(self.replicas * usage - 1e-9)
        desired = max(self.min_replicas, min(self.max_replicas, desired))
        self.history.append((t, desired))
        if desired < self.replicas:
            desired = max(d for tt, d in self.history if t - tt <= self.down_window_s)
        self.replicas = desired
        return desired


def service_rate(phase: int) -> float:
    """One replica's images/s when always busy, as recorded."""
    _, ws = recorded(phase)
    return statistics.median(w.throughput_infer_per_s / (w.busy_s / w.interval_s) for w in ws)


def simulate(signal: str) -> list[dict]:
    """A fleet serving a base load, a step beyond one replica's accurate capacity at t = 120 s, back at t = 600 s.
    Windows are built from the recorded service rates; the orchestrator steps down to the cheaper variant when the
    accurate one cannot hold the load and back when it fits with room; pods are ready 120 s after the HPA asks.
    ``signal``: "needed" (tritune_fleet_replicas_needed, AverageValue 1: what hpa.yaml does), "ratio"
    (tritune_fleet_capacity_ratio with a Value target of 1) or "queue" (NVIDIA's: queue time per request, Value
    target 5 ms)."""
    ctx = context()
    (acc_cfg, _), (cheap_cfg, _) = recorded(0), recorded(1)
    mu = {acc_cfg.variant: service_rate(0), cheap_cfg.variant: service_rate(1)}
    base = 0.6 * mu[acc_cfg.variant]
    # The step: beyond what one replica holds on the accurate variant, within what it holds on the cheaper one.
    step_x = (1.5 + 1.5 * mu[cheap_cfg.variant] / mu[acc_cfg.variant]) / 2
    est, hpa = CapacityEstimator(), Hpa("AverageValue" if signal == "needed" else "Value")
    ready, pending_pods = 1, []  # (ready_at_s, count)
    config, backlog, out = acc_cfg, 0.0, []
    reading = None
    for t in range(0, 1200, 2):
        load = base * (step_x if 120 <= t < 600 else 1.0)
        ready += sum(n for at, n in pending_pods if at == t)
        cap = ready * mu[config.variant]
        done = min(load + backlog / 2.0, cap * 0.98)
        backlog = max(0.0, backlog + (load - done) * 2.0)
        busy = done / cap
        w = Window(start_s=t, end_s=t + 2, requests=done * 2, throughput_infer_per_s=done, request_rate_per_s=done,
                   busy_s=busy * 2 * ready, pending_requests=backlog, replicas=ready)  # fmt: skip
        reading = est.observe(w, config, ctx)
        queue_ms = 0.0 if busy < 0.9 else 10.0 * (1 + backlog / max(done, 1))
        # The orchestrator: the ladder, faster than any HPA sync.
        if config == acc_cfg and load > 0.9 * ready * mu[acc_cfg.variant]:
            config = cheap_cfg
        elif config == cheap_cfg and load < 0.8 * ready * mu[acc_cfg.variant]:
            config = acc_cfg
        if t % 15 == 0 or t % 15 == 1:
            value = {"needed": reading.replicas_needed, "ratio": reading.ratio, "queue": queue_ms / 5.0}[signal]
            before = hpa.replicas
            desired = hpa.sync(t, value)
            if desired > before:
                pending_pods.append((t + 120 - (t + 120) % 2, desired - before))
            elif desired < before:
                ready = desired
        out.append({"t": t, "load": load, "ready": ready, "asked": hpa.replicas, "variant": config.variant,
                    "ratio": reading.ratio, "queue_ms": queue_ms})  # fmt: skip
    return out


def test_the_hpa_on_the_capacity_signal_scales_up_during_the_step_and_down_only_300_s_after_it():
    run = simulate("needed")
    acc = recorded(0)[0].variant
    at = {r["t"]: r for r in run}
    need = math.ceil(at[300]["load"] / (service_rate(0) * 0.9))
    assert at[100]["asked"] == 1 and at[100]["variant"] == acc
    first_ask = next(r["t"] for r in run if r["asked"] > 1)
    assert 120 <= first_ask <= 150  # the next sync or two after the step
    assert at[130]["variant"] != acc and at[130]["ratio"] > 1.1  # the cheaper variant bridges; the signal says short
    assert max(r["asked"] for r in run) == need  # exactly the replicas the load needs at full accuracy
    assert at[400]["ready"] == need and at[400]["variant"] == acc  # pods ready: accuracy is back
    down = next(r["t"] for r in run if r["t"] > 600 and r["asked"] < need)
    assert down >= 600 + 300 - 15  # scale-down waits out the 300-s stabilization
    assert all(r["variant"] == acc for r in run if r["t"] > 620)


def test_the_ratio_with_a_value_target_overshoots_while_pods_start():
    """Why hpa.yaml scales on replicas needed: the HPA multiplies a ready-replica ratio by the replicas it already
    asked for, so each sync before the new pods are ready asks for more again."""
    ratio_run, needed_run = simulate("ratio"), simulate("needed")
    assert max(r["asked"] for r in ratio_run) > max(r["asked"] for r in needed_run)


def test_on_queue_time_the_fleet_ends_on_the_cheaper_variant():
    """NVIDIA's signal on the same run: the step's first window queues and the HPA adds replicas, but once the
    orchestrator has stepped down the queue is empty, the HPA removes them after its 300 s, and the fleet serves
    the cheaper variant on one replica for the rest of the step; on the capacity signal it serves the accurate one."""
    queue, needed = simulate("queue"), simulate("needed")
    acc = recorded(0)[0].variant
    tail = [r for r in queue if 470 <= r["t"] < 600]
    assert all(r["asked"] == 1 and r["variant"] != acc for r in tail)
    assert all(r["variant"] == acc for r in needed if 470 <= r["t"] < 600)


def test_a_replica_window_with_no_requests_leaves_the_estimate_alone():
    ctx = context()
    cfg, ws = recorded(0)
    est = CapacityEstimator()
    for w in ws:
        est.observe(w, cfg, ctx)
    learned = est.estimate(cfg.variant, ctx)
    est.observe(replace(ws[0], requests=0, busy_s=0.0, throughput_infer_per_s=0.0), cfg, ctx)
    assert est.estimate(cfg.variant, ctx) == learned
