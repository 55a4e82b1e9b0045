"""The controller tick by tick with a fake clock: scale up, scale down, no flapping, rollback, variant degrade and
restore above the accuracy floor, restart recovery."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from orchestrator.metrics import Window
from orchestrator.policy import (
    Context,
    ControllerConfig,
    ControllerState,
    GuardConfig,
    Objective,
    Proposal,
    RulePolicy,
    ServingConfig,
    VariantInfo,
    applied,
    apply_failed,
    clamp,
    step,
)
from orchestrator.policy.signals import Thresholds, p99_from_means_ms, pressure
from orchestrator.policy.types import PressureKind
from tritune.errors import ConfigError

SLO = 50.0
VARIANTS = {
    "fp32": VariantInfo("fp32", "cnn_fp32", 0.978, 28.0),
    "fp16": VariantInfo("fp16", "cnn_fp16", 0.978, 29.0),
    "int8": VariantInfo("int8", "cnn_int8", 0.975, 15.5),
    "pruned": VariantInfo("pruned", "cnn_pruned", 0.970, 7.2),
    "distilled": VariantInfo("distilled", "cnn_distilled", 0.960, 7.1),
}
CFG = ControllerConfig(guards=GuardConfig(upscale_delay_s=4, downscale_delay_s=20, cooldown_s=6), verify_windows=2)
DEFAULT = ServingConfig("fp32")


def ctx(floor: float = 0.97, **kw) -> Context:
    """Headroom off unless a test asks for it: most tests exercise the ladder from Triton's default."""
    return Context(objective=Objective(SLO, floor), variants=VARIANTS, cores=2, **{"headroom": False, **kw})


def win(
    t: float,
    latency_ms: float = 5.0,
    util: float = 0.3,
    rate: float = 100.0,
    instances: int = 1,
    failures: float = 0,
    p99: float | None = None,
    dt: float = 2.0,
    **kw,
) -> Window:
    return Window(
        start_s=t - dt,
        end_s=t,
        requests=rate * dt,
        failures=failures,
        throughput_infer_per_s=rate,
        request_rate_per_s=rate,
        avg_batch=1.0,
        avg_latency_ms=latency_ms,
        avg_queue_ms=latency_ms * 0.6,
        avg_compute_ms=latency_ms * 0.4,
        busy_s=util * dt * instances,
        p99_latency_ms=p99 if p99 is not None else latency_ms * 2,
        **kw,
    )


class Sim:
    """Feeds windows to the controller every 2 s and applies what it decides (a fake Triton that always loads)."""

    def __init__(self, context: Context, config: ServingConfig = DEFAULT):
        self.ctx, self.config, self.state, self.t = context, config, ControllerState(), 0.0
        self.policy = RulePolicy()
        self.log: list[tuple[float, str, str]] = []
        self.configs: list[ServingConfig] = []
        self.reasons: list[str] = []

    def tick(self, w_factory, **kw):
        self.t += 2.0
        if getattr(w_factory, "needs_config", False):
            kw["config"] = self.config
        w = w_factory(self.t, instances=self.config.instances, **kw)
        decision, self.state = step(w, self.config, self.state, self.ctx, self.policy, CFG, self.t)
        if decision.changes:
            before = self.config
            self.config = decision.config
            self.configs.append(decision.config)
            self.reasons.append(decision.reason)
            self.state = applied(self.state, decision, before, w, self.t)
            self.log.append((self.t, decision.action, decision.rule))
        return decision

    def run(self, seconds: float, w_factory=win, **kw):
        return [self.tick(w_factory, **kw) for _ in range(int(seconds / 2))]


def overloaded(t, instances=1, **kw):
    return win(t, latency_ms=60.0, util=0.97, rate=600, instances=instances, **kw)


def overloaded_by(t, instances=1, config=DEFAULT, **kw):
    """Far more load than any config can serve; each rung of the ladder raises the service rate a little."""
    capacity = 500.0 * (2 if config.dynamic_batching else 1) * (1.3 if config.instances > 1 else 1)
    capacity *= 1 + config.max_queue_delay_us / 50_000
    capacity *= VARIANTS["fp32"].latency_ms_b32 / VARIANTS[config.variant].latency_ms_b32
    return win(t, latency_ms=60.0, util=0.97, rate=min(capacity, 50_000), instances=instances, **kw)


overloaded_by.needs_config = True


def test_scale_up_on_queueing_waits_for_the_upscale_delay_then_enables_batching():
    sim = Sim(ctx())
    decisions = sim.run(2, overloaded)
    assert [d.rule for d in decisions] == ["waiting-up-delay"]
    sim.run(4, overloaded)
    assert sim.log[0][1:] == ("apply", "enable-dynamic-batching")
    assert sim.config.dynamic_batching and sim.config.max_queue_delay_us == 1000
    # CPU: no preferred sizes (Triton would cut a queue of 12 into 8 + 4); a GPU's TensorRT engines keep them
    assert sim.config.preferred_batch_sizes == ()
    gpu = Sim(ctx(kind="gpu"))
    gpu.run(6, overloaded)
    assert gpu.log[0][2] == "enable-dynamic-batching" and gpu.config.preferred_batch_sizes == (4, 8, 16)


def steady(t, instances=1, **kw):
    """A window within the SLO band: an overload's queue just drained, or a summary lagging behind it."""
    return win(t, latency_ms=12.0, util=0.6, rate=400, instances=instances, **kw)


def test_an_overload_whose_windows_flicker_still_adds_up_to_an_action():
    """Pressure, steady, pressure…: each steady window used to restart the up delay, so an overload whose windows
    alternate never acted. The span now counts its evidence: it ends only when quiet windows outnumber pressed."""
    sim = Sim(ctx())
    for _ in range(2):
        sim.tick(overloaded)
        sim.tick(steady)
    assert sim.log[0][1:] == ("apply", "enable-dynamic-batching") and sim.log[0][0] == 6.0  # 4 s after t=2


def test_a_single_stall_is_outvoted_and_does_not_act():
    sim = Sim(ctx())
    sim.tick(overloaded)  # one window of pressure (a stall of the machine) …
    sim.run(4, steady)  # … then the queue is gone: two quiet windows end the span
    decisions = [sim.tick(overloaded)]
    assert sim.log == [] and decisions[0].rule == "waiting-up-delay"  # a new span, its delay from the start


def test_a_growing_backlog_acts_at_once_a_draining_one_waits():
    sim = Sim(ctx())
    sim.tick(overloaded, pending_requests=40)
    sim.tick(overloaded, pending_requests=100)  # the load outruns the config: no need to wait out the delay
    assert sim.log == [(4.0, "apply", "enable-dynamic-batching")]
    draining = Sim(ctx())
    draining.tick(overloaded, pending_requests=100)
    assert draining.tick(overloaded, pending_requests=60).rule == "waiting-up-delay"  # a stall's queue drains
    # a client that caps what it has in flight keeps the backlog from growing: a mean far over the SLO says it
    capped = Sim(ctx())
    far = lambda t, **kw: win(t, latency_ms=160.0, util=0.97, rate=600, pending_requests=400, **kw)  # noqa: E731
    capped.tick(far)
    capped.tick(far)
    assert capped.log == [(4.0, "apply", "batch-and-add-instance")]


def test_light_load_must_persist_without_a_break():
    """The span counting is for overloads only: a down move gives capacity back, and a window that is not light
    restarts its delay as before."""
    sim = Sim(ctx(), ServingConfig("fp32", 2, 1, True, 2000, (4, 8, 16)))
    light_window = lambda t, **kw: win(t, latency_ms=2.0, util=0.05, rate=5, **kw)  # noqa: E731
    for _ in range(8):
        sim.tick(light_window)
        sim.tick(steady)
    assert sim.log == []


def test_sustained_overload_climbs_the_ladder_one_action_at_a_time_and_stays_above_the_floor():
    sim = Sim(ctx(floor=0.97))
    sim.run(160, overloaded_by)
    rules = [r for _, a, r in sim.log if a == "apply"]
    assert rules[:2] == ["enable-dynamic-batching", "add-instance"]
    # requests queue 36 ms against a 1-ms timer: a backlog fills the batches, a longer delay would add nothing
    assert "lengthen-queue-delay" not in rules and "faster-variant" in rules
    assert sim.config.instances == 2 and sim.config.threads == 1  # 2 instances × 1 thread on 2 cores
    assert sim.config.variant == "pruned"  # the fastest allowed: distilled (0.960) is below the 0.97 floor
    assert all(VARIANTS[c.variant].top1 >= 0.97 for c in sim.configs)
    assert all(c.max_queue_delay_us <= ctx().delay_cap_us == 12_500 for c in sim.configs)
    times = [t for t, _, _ in sim.log]
    assert all(b - a >= CFG.guards.cooldown_s for a, b in itertools.pairwise(times))


def test_queue_delay_is_lengthened_only_while_the_timer_not_a_backlog_bounds_the_wait():
    maxed = ServingConfig("pruned", 2, 1, True, 1000, ())  # max instances, the fastest variant above the floor
    timer_bound = replace(win(10.0, latency_ms=20.0, p99=60.0, instances=2), avg_queue_ms=0.8, avg_batch=2.0)
    p = RulePolicy().propose(timer_bound, maxed, ctx())
    assert p.rule == "lengthen-queue-delay" and p.config.max_queue_delay_us == 2000
    backlog = replace(timer_bound, avg_queue_ms=30.0)  # a free instance takes the whole queue anyway
    assert RulePolicy().propose(backlog, maxed, ctx()) is None


def test_degraded_variant_is_restored_when_load_falls():
    sim = Sim(ctx(), ServingConfig("pruned", 2, 1, True, 12_500, (4, 8, 16)))
    sim.run(18, lambda t, **kw: win(t, latency_ms=3.0, util=0.10, **kw))
    assert sim.log == []  # light for less than the downscale delay: nothing yet
    sim.run(10, lambda t, **kw: win(t, latency_ms=3.0, util=0.10, **kw))
    # back to the most accurate level predicted to hold, in one reload (not int8, then fp16, then fp32)
    assert sim.log[0][2] == "restore-variant" and sim.config.variant in ("fp32", "fp16")
    sim.run(300, lambda t, **kw: win(t, latency_ms=3.0, util=0.10, **kw))
    assert sim.config.variant in ("fp32", "fp16") and sim.config.instances == 1
    assert sim.config.max_queue_delay_us == 1000  # the batching delay walked back down to its first step
    rules = [r for _, _, r in sim.log]
    assert rules.count("remove-instance") == 1 and "shorten-queue-delay" in rules and "rollback" not in rules
    assert rules.count("restore-variant") == 1


def test_scale_down_when_idle():
    sim = Sim(ctx(), ServingConfig("fp32", 2, 1, True, 2000, (4, 8, 16)))
    sim.run(90, lambda t, **kw: win(t, latency_ms=2.0, util=0.05, rate=5, **kw))
    assert [r for _, _, r in sim.log] == ["shorten-queue-delay", "remove-instance"]
    assert sim.config.instances == 1 and sim.config.threads == 2


def test_no_flapping_under_noisy_metrics():
    sim = Sim(ctx(), ServingConfig("fp32", 2, 1, True, 1000, (4, 8, 16)))
    for i in range(60):  # alternate pressure and calm every window
        sim.tick(overloaded if i % 2 else (lambda t, **kw: win(t, latency_ms=2.0, util=0.05, **kw)))
    assert sim.log == []


def test_regression_is_rolled_back_and_the_config_stays_tabu():
    sim = Sim(ctx())
    sim.run(6, overloaded)
    assert sim.log[-1][2] == "enable-dynamic-batching"
    before = ServingConfig("fp32")
    # after the action: latency doubles and throughput does not rise
    decisions = sim.run(10, lambda t, **kw: win(t, latency_ms=120.0, util=0.99, rate=600, **kw))
    rollback = next(d for d in decisions if d.action == "rollback")
    assert rollback.config == before and rollback.verified["outcome"] == "rolled-back"
    assert sim.config == before and sim.state.rollbacks == 1
    sim.run(30, overloaded)
    assert all(r != "enable-dynamic-batching" for _, _, r in sim.log[2:])  # tabu: the next rung is tried instead


def test_an_action_that_changes_nothing_is_rolled_back():
    sim = Sim(ctx())
    sim.run(30, overloaded)  # same windows whatever the config: enabling batching did not help here
    assert [r for _, _, r in sim.log][:2] == ["enable-dynamic-batching", "rollback"]
    assert sim.config == DEFAULT


def test_a_transient_bad_window_after_an_action_does_not_roll_it_back():
    sim = Sim(ctx())
    sim.run(6, overloaded)
    # reload transient: one window worse, then the backlog drains and throughput rises
    sim.run(2, lambda t, **kw: win(t, latency_ms=2000.0, util=0.99, rate=430, pending_requests=1800, **kw))
    sim.run(6, lambda t, **kw: win(t, latency_ms=900.0, util=0.99, rate=760, pending_requests=900, **kw))
    assert [r for _, _, r in sim.log] == ["enable-dynamic-batching"]
    assert sim.state.last_good.dynamic_batching


def test_a_below_floor_variant_found_serving_is_replaced_at_once():
    sim = Sim(ctx(floor=0.97), ServingConfig("distilled", 1))
    sim.tick(win)
    assert sim.log == [(2.0, "apply", "enforce-accuracy-floor")] and sim.config.variant == "fp32"
    assert sim.state.last_good.variant == "fp32"


def test_a_refused_rollback_is_retried_after_the_cool_down():
    sim = Sim(ctx())
    sim.run(6, overloaded)
    decisions = sim.run(10, lambda t, **kw: win(t, latency_ms=120.0, util=0.99, rate=600, pending_requests=50, **kw))
    rollback = next(d for d in decisions if d.action == "rollback")
    # pretend Triton refused it: the bad config still serves
    sim.config = rollback.verified and ServingConfig("fp32", 1, 2, True, 500, (4, 8, 16))
    sim.state = apply_failed(sim.state, rollback, sim.t, CFG)
    d1 = sim.tick(win)
    assert d1.rule == "retry-wait"
    later = sim.run(8)
    retry = next(d for d in later if d.action == "rollback")
    assert retry.config == DEFAULT and retry.reason.startswith("retry:") and sim.config == DEFAULT


def test_load_vanishing_during_verification_does_not_roll_back():
    sim = Sim(ctx())
    sim.run(6, overloaded)
    sim.run(14, lambda t, **kw: Window(start_s=t - 2, end_s=t))  # nobody sends anything any more
    assert [r for _, _, r in sim.log] == ["enable-dynamic-batching"] and sim.config.dynamic_batching


def test_improvement_is_kept_and_becomes_the_last_good_config():
    sim = Sim(ctx())
    sim.run(6, overloaded)
    decisions = sim.run(10, lambda t, **kw: win(t, latency_ms=8.0, util=0.6, rate=600, **kw))
    kept = next(d for d in decisions if d.verified)
    assert kept.verified["outcome"] == "kept"
    assert sim.state.last_good == sim.config and sim.config.dynamic_batching


def test_triton_restart_reapplies_the_last_good_config():
    good = ServingConfig("int8", 2, 1, True, 2000, (4, 8, 16))
    sim = Sim(ctx(), good)
    sim.run(4)
    sim.config = DEFAULT  # Triton came back with the on-disk default
    d = sim.tick(lambda t, **kw: Window(start_s=t - 2, end_s=t, restarted=True))
    assert d.action == "reapply" and d.config == good and sim.state.restarts == 1
    d = sim.tick(lambda t, **kw: Window(start_s=t - 2, end_s=t, model_missing=True))
    assert d.action == "reapply" and d.config == good


def test_a_refused_load_makes_the_target_tabu():
    sim = Sim(ctx())
    sim.run(4, overloaded)
    w = overloaded(sim.t)
    decision, state = step(w, sim.config, sim.state, sim.ctx, sim.policy, CFG, sim.t + 2)
    assert decision.changes
    state = apply_failed(state, decision, sim.t + 2, CFG)
    assert state.rollbacks == 1 and state.tabu[0][0] == decision.config
    decision, _ = step(overloaded(sim.t + 10), sim.config, state, sim.ctx, sim.policy, CFG, sim.t + 10)
    assert decision.config != state.tabu[0][0]


def test_guard_rails_bound_any_policy():
    c = ctx(floor=0.97)
    w = win(10.0)
    rogue = ServingConfig(
        "distilled",
        instances=9,
        threads=8,
        dynamic_batching=True,
        max_queue_delay_us=10**7,
        preferred_batch_sizes=(8, 128),
    )
    out = clamp(rogue, ServingConfig("fp32", 1, 0, True, 1000), w, c, CFG.guards)
    assert out.variant == "fp32"  # below the floor: refused
    assert out.instances == 2 and out.threads == 1  # one step, ≤ cores, instances × threads ≤ cores
    assert out.max_queue_delay_us == 2000  # at most ×2 per step
    assert out.preferred_batch_sizes == (8,)


def test_gpu_instances_never_ask_for_more_memory_than_is_free():
    c = Context(
        objective=Objective(SLO),
        variants=VARIANTS,
        cores=2,
        kind="gpu",
        max_instances=8,
        gpu_memory_per_instance_bytes=1e9,
    )
    up = ServingConfig("fp32", instances=3)
    assert clamp(up, ServingConfig("fp32", 2), win(1.0, gpu_memory_free_bytes=0.5e9), c, CFG.guards).instances == 2
    assert clamp(up, ServingConfig("fp32", 2), win(1.0, gpu_memory_free_bytes=1.5e9), c, CFG.guards).instances == 3


def test_policy_never_proposes_a_variant_below_the_floor():
    policy = RulePolicy()
    maxed = ServingConfig("fp32", 2, 1, True, 12_500, (4, 8, 16))
    p: Proposal = policy.propose(overloaded(10.0, instances=2), maxed, ctx(floor=0.975))
    assert p.rule == "faster-variant" and p.config.variant == "int8"
    assert policy.propose(overloaded(10.0, instances=2), replace(maxed, variant="int8"), ctx(floor=0.975)) is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Objective(0), "slo-p99-ms"),
        (lambda: Objective(50, 1.5), "accuracy-floor"),
        (lambda: ctx(floor=0.99), "no variant reaches"),
    ],
)
def test_invalid_objective_is_a_one_line_error(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_overload_beyond_both_configs_judges_by_service_rate_not_by_the_growing_backlog():
    """800 req/s offered, 550/s served before and 610/s after enabling batching: the backlog (and so latency)
    still grows after the action, but the action raised the service rate and must be kept."""
    sim = Sim(ctx())
    latency = [200.0]

    def swamped(t, instances=1, config=DEFAULT, **kw):
        latency[0] *= 1.3  # the queue keeps growing whatever the config
        rate = 610.0 if config.dynamic_batching else 550.0
        return win(t, latency_ms=latency[0], util=0.99, rate=rate, instances=instances, pending_requests=400, **kw)

    swamped.needs_config = True
    sim.run(24, swamped)
    assert sim.log[0][2] == "batch-and-add-instance"  # far over the SLO: both rungs in one reload
    # kept: a later rung (here a variant the fake serves no faster) may be rolled back, never to before batching
    rolled_back_to = [c for (_, a, _), c in zip(sim.log, sim.configs, strict=True) if a == "rollback"]
    assert all(c.dynamic_batching for c in rolled_back_to)
    assert sim.config.dynamic_batching


def test_a_much_cheaper_variant_at_no_accuracy_cost_is_the_first_rung():
    """When pruning cost no accuracy (as on the bundled data set), switching to it is cheaper than any reload of
    the fp32 variant: it comes before batching and instances, and it is never a less accurate variant."""
    variants = {**VARIANTS, "pruned": VariantInfo("pruned", "cnn_pruned", 0.978, 7.2)}
    sim = Sim(Context(objective=Objective(SLO, 0.97), variants=variants, cores=2, headroom=False))
    sim.run(40, overloaded_by)
    rules = [r for _, a, r in sim.log if a == "apply"]
    assert rules[0] == "free-faster-variant" and sim.configs[0].variant == "pruned"
    # under pressure the first variant-independent rung comes in the same reload: one drain instead of two
    assert sim.configs[0].dynamic_batching and "with enable-dynamic-batching" in sim.reasons[0]
    assert len(rules) > 1  # the ladder goes on from there
    assert all(variants[c.variant].top1 >= 0.978 for c in sim.configs)


def test_nothing_is_judged_or_applied_while_the_old_variant_drains():
    variants = {**VARIANTS, "pruned": VariantInfo("pruned", "cnn_pruned", 0.978, 7.2)}
    sim = Sim(Context(objective=Objective(SLO, 0.97), variants=variants, cores=2, headroom=False))
    sim.run(6, overloaded_by)
    assert sim.log[-1][2] == "free-faster-variant"
    switched_at = sim.log[-1][0]
    decisions = sim.run(20, overloaded_by, versions=2)  # the fp32 version still drains its queue
    assert {d.rule for d in decisions} == {"draining"} and sim.log[-1][0] == switched_at
    decisions = sim.run(40, overloaded_by)  # drained: verification and the ladder go on
    assert any(d.rule == "verifying" for d in decisions) and len(sim.log) > 1


DOMINATED = {**VARIANTS, "pruned": VariantInfo("pruned", "cnn_pruned", 0.978, 7.2)}  # as accurate as fp32, 3.9× cheaper


def idle(t, instances=1, **kw):
    return win(t, latency_ms=0.0, rate=0.0, util=0.0, instances=instances, **kw)  # Triton's means read 0 then


@pytest.mark.parametrize(
    "load",
    [idle, lambda t, **kw: win(t, latency_ms=3.0, util=0.1, **kw), lambda t, **kw: win(t, util=0.6, **kw)],
    ids=["no-traffic", "light", "moderate"],
)
def test_a_dominating_variant_is_taken_at_any_load_without_waiting_for_a_delay(load):
    """Switching before traffic rises is what spares the old variant a backlog to drain beside the new one."""
    sim = Sim(Context(objective=Objective(SLO, 0.97), variants=DOMINATED, cores=2, headroom=False))
    sim.run(2, load)  # the first window
    assert sim.log == [(2.0, "apply", "free-faster-variant")] and sim.config.variant == "pruned"
    decisions = sim.run(120, load)
    assert sim.log == [(2.0, "apply", "free-faster-variant")]  # kept (no windows said worse), never undone
    assert any((d.verified or {}).get("outcome") == "kept" for d in decisions)
    assert sim.config.variant == "pruned"


def test_a_dominating_variant_that_makes_things_worse_is_rolled_back():
    sim = Sim(Context(objective=Objective(SLO, 0.97), variants=DOMINATED, cores=2, headroom=False))

    def worse_on_pruned(t, instances=1, config=DEFAULT, **kw):
        latency = 20.0 if config.variant == "pruned" else 5.0
        return win(t, latency_ms=latency, util=0.6, instances=instances, **kw)

    worse_on_pruned.needs_config = True
    sim.run(30, worse_on_pruned)
    assert [r for _, _, r in sim.log][:2] == ["free-faster-variant", "rollback"]
    assert sim.config.variant == "fp32"  # and the rejected config stays tabu: no second switch within the run
    assert [r for _, _, r in sim.log].count("free-faster-variant") == 1


def test_no_dominating_variant_means_no_free_switch():
    """fp16 is no cheaper than fp32 and int8 is less accurate: nothing dominates fp32 in VARIANTS."""
    sim = Sim(ctx())
    sim.run(60, lambda t, **kw: win(t, util=0.6, **kw))
    assert sim.log == []


def test_after_a_reload_under_a_backlog_nothing_is_judged_or_applied_until_the_old_copy_could_drain_it():
    """10,000 requests queued at 500/s: the replaced copy needs ~20 s for them; a same-version reload shows no
    second version in the metrics, so the wait is estimated from the backlog and the service rate."""
    sim = Sim(ctx())
    backlogged = lambda t, **kw: win(t, latency_ms=60.0, util=0.97, rate=500, pending_requests=10_000, **kw)  # noqa: E731
    sim.run(6, backlogged)
    assert sim.log[-1][2] == "enable-dynamic-batching"
    acted_at = sim.log[-1][0]
    decisions = sim.run(18, backlogged)
    assert {d.rule for d in decisions} == {"draining"} and "~20 s" in decisions[0].reason
    decisions = sim.run(20, backlogged)
    assert decisions[0].rule == "verifying" and sim.log[0][0] == acted_at


def test_instances_busy_all_the_time_are_pressure_even_while_latency_is_low():
    """Triton's means still look healthy (3 ms, nothing pending) but the one instance never idles: no headroom."""
    sim = Sim(ctx(), ServingConfig("fp32", 1, 2, True, 500, (4, 8, 16)))
    saturated = lambda t, **kw: win(t, latency_ms=3.0, util=1.0, rate=1100, **kw)  # noqa: E731
    decisions = sim.run(6, saturated)
    assert decisions[0].rule == "waiting-up-delay"
    assert sim.log[0][2] == "add-instance" and sim.config.instances == 2
    assert RulePolicy().propose(saturated(2.0), ServingConfig("fp32", 1, 2, True, 500, (4, 8, 16)), ctx()).reason == (
        "instances 100% busy"
    )
    sim2 = Sim(ctx(), ServingConfig("fp32", 1, 2, True, 500, (4, 8, 16)))
    sim2.run(60, lambda t, **kw: win(t, latency_ms=3.0, util=0.85, rate=900, **kw))
    assert sim2.log == []  # busy but with headroom: nothing to do
    sim3 = Sim(ctx(), ServingConfig("fp32", 2, 1, True, 500, (4, 8, 16)))
    sim3.run(60, saturated)
    assert sim3.log == []  # at the instance limit, busy alone reloads nothing (no longer delays)


def test_far_over_the_slo_batching_and_an_instance_come_in_one_reload():
    sim = Sim(ctx())
    sim.run(6, lambda t, **kw: win(t, latency_ms=150.0, util=0.97, rate=900, pending_requests=700, **kw))
    assert [r for _, _, r in sim.log] == ["batch-and-add-instance"]
    assert sim.config.dynamic_batching and sim.config.instances == 2 and sim.config.threads == 1
    sim2 = Sim(ctx())  # over the SLO but not far: one rung at a time
    sim2.run(6, lambda t, **kw: win(t, latency_ms=60.0, util=0.97, rate=900, pending_requests=100, **kw))
    assert [r for _, _, r in sim2.log] == ["enable-dynamic-batching"] and sim2.config.instances == 1


def test_requests_pending_with_none_completing_is_a_stall_not_light_load():
    """Seen on Triton 2.51: after aborting on heap corruption it still answered /metrics, 6 requests pending, 0 done;
    the controller took that for light load and removed an instance. A stuck server gets no reload."""
    sim = Sim(ctx(), ServingConfig("fp32", 2, 1, True, 500, (4, 8, 16)))
    stuck = lambda t, **kw: win(t, latency_ms=0.0, util=0.0, rate=0.0, pending_requests=6, **kw)  # noqa: E731
    decisions = sim.run(120, stuck)
    assert sim.log == [] and {d.rule for d in decisions} == {"stalled"}
    assert "Triton looks stuck" in decisions[0].reason


def test_a_switch_taken_with_no_traffic_is_not_judged_against_the_empty_window():
    """Traffic arriving after a switch at idle reads 'slower' than the empty window the switch was taken in; that
    rolled a dominating variant back to fp32 in a benchmark run, just as 850 req/s arrived."""
    sim = Sim(Context(objective=Objective(SLO, 0.97), variants=DOMINATED, cores=2, headroom=False))
    sim.run(2, idle)
    assert sim.log == [(2.0, "apply", "free-faster-variant")]
    sim.run(60, lambda t, **kw: win(t, latency_ms=10.0, util=0.6, **kw))
    assert [r for _, _, r in sim.log] == ["free-faster-variant"] and sim.config.variant == "pruned"


# -- headroom (CPU): capacity in place before the load rises -----------------------------------------------------
@pytest.mark.parametrize("load", [idle, lambda t, **kw: win(t, latency_ms=3.0, util=0.1, **kw)], ids=["idle", "light"])
def test_headroom_provisions_batching_and_an_instance_per_core_in_one_reload_and_keeps_them(load):
    sim = Sim(ctx(headroom=True))
    sim.run(2, load)
    assert sim.log == [(2.0, "apply", "provision-headroom")]  # no persistence delay, one reload
    assert sim.config == ServingConfig("fp32", 2, 1, True, 1000, ())
    decisions = sim.run(200, load)
    # kept: no down rung gives the instance back at light load, nothing flaps
    assert sim.log == [(2.0, "apply", "provision-headroom")] and sim.config.instances == 2
    assert any((d.verified or {}).get("outcome") == "kept" for d in decisions)


def test_headroom_kept_though_the_batching_delay_adds_a_little_latency():
    sim = Sim(ctx(headroom=True))

    def light(t, instances=1, config=DEFAULT, **kw):  # +0.4 ms once batching waits for company
        return win(t, latency_ms=3.4 if config.dynamic_batching else 3.0, util=0.1, instances=instances, **kw)

    light.needs_config = True
    sim.run(60, light)
    assert [r for _, _, r in sim.log] == ["provision-headroom"] and sim.config.dynamic_batching


def test_headroom_with_a_dominating_variant_is_one_reload():
    sim = Sim(Context(objective=Objective(SLO, 0.97), variants=DOMINATED, cores=2, headroom=True))
    sim.run(2, idle)
    assert [r for _, _, r in sim.log] == ["free-faster-variant"]
    assert sim.config == ServingConfig("pruned", 2, 1, True, 1000, ())
    assert "with provision-headroom in the same reload" in sim.reasons[0]
    sim.run(120, idle)
    assert len(sim.log) == 1


def test_no_headroom_on_gpus_or_when_off():
    for context in (ctx(headroom=True, kind="gpu"), ctx()):
        sim = Sim(context)
        sim.run(60, idle)
        assert sim.log == []


def test_headroom_waits_while_under_pressure_the_ladder_decides():
    sim = Sim(ctx(headroom=True))
    sim.run(6, overloaded)
    assert sim.log[0][2] != "provision-headroom"


def test_the_floors_enforcement_is_not_verified_so_never_rolled_back_below_the_floor():
    """A served variant below the floor is replaced at once; judging that apply like a capacity rung could roll it
    back to the variant the floor forbids."""
    c = ctx(floor=0.975)
    below = ServingConfig("pruned")  # top-1 0.970 < 0.975
    decision, state = step(win(2.0), below, ControllerState(), c, RulePolicy(), CFG, 2.0)
    assert decision.action == "apply" and decision.rule == "enforce-accuracy-floor"
    state = applied(state, decision, below, win(2.0), 2.0)
    assert state.pending is None and state.last_good == decision.config


# -- a shared machine: cores a neighbour takes are not Triton's -------------------------------------------------
def test_cores_other_processes_keep_busy_are_not_given_to_instances():
    """Beside a one-core busy loop on 2 cores, Triton has one core: batching comes with 1 instance × 1 thread, not
    2 instances × 1 thread (two instances on the one free core); alone it gets both cores again."""
    busy_neighbour = lambda t, **kw: win(  # noqa: E731
        t, latency_ms=150.0, util=0.97, rate=900, pending_requests=700, cpu_other_cores=1.1, **kw
    )
    sim = Sim(ctx())
    sim.run(6, busy_neighbour)
    assert [r for _, _, r in sim.log] == ["enable-dynamic-batching"]
    assert sim.config.dynamic_batching and (sim.config.instances, sim.config.threads) == (1, 1)
    c = ctx()
    rogue = ServingConfig("fp32", 2, 0, True, 1000)
    assert clamp(rogue, DEFAULT, win(2.0, cpu_other_cores=1.1), c, CFG.guards).instances == 1
    assert clamp(rogue, DEFAULT, win(2.0, cpu_other_cores=0.4), c, CFG.guards).instances == 2  # the load generator
    assert clamp(rogue, DEFAULT, win(2.0), c, CFG.guards).instances == 2  # unknown (a remote Triton): all cores


def _saturated(rate: float, triton_cores: float | None, other_cores: float = 0.1, pending: float = 400) -> Window:
    cpu = {} if triton_cores is None else {"cpu_triton_cores": triton_cores, "cpu_other_cores": other_cores}
    return win(10.0, latency_ms=900.0, util=1.0, rate=rate, pending_requests=pending, cpu_machine_cores=2, **cpu)


@pytest.mark.parametrize(
    ("after_rate", "after_cores", "after_other", "verdict"),
    [
        (330.0, 1.0, 1.0, "better"),  # a neighbour took a core; each core Triton kept served 57% more
        (330.0, 1.9, 0.1, "worse"),  # the same cores served less: the action itself cost capacity
        (330.0, 1.0, 0.1, "worse"),  # Triton left CPU idle and served less: the config's doing, not a neighbour's
        (330.0, None, 0.0, "worse"),  # CPU unmeasured (a remote Triton): the rate alone decides, as before
        (470.0, 1.9, 0.1, "better"),
    ],
)
def test_under_a_backlog_the_service_rate_is_judged_per_core_triton_had(after_rate, after_cores, after_other, verdict):
    """A right action on a shared machine: batching under a backlog while a neighbour starts and takes a core.
    The service rate falls, but per core Triton had it rose: that is no regression."""
    from orchestrator.policy import Pending, judge

    before = _saturated(400.0, None if after_cores is None else 1.9)
    batched = ServingConfig("fp32", 1, 2, True, 1000)
    p = Pending(before=DEFAULT, after=batched, rule="enable-dynamic-batching", applied_s=10.0, before_window=before)
    after = _saturated(after_rate, after_cores, after_other, pending=390)
    assert judge(before, after, p, ctx(), CFG) == verdict


def test_a_neighbours_cap_never_takes_an_instance_away_inside_another_action():
    """Two instances serve; a neighbour now leaves one core. A longer delay keeps both instances (only a down rule
    removes one), and no new instance is added."""
    two = ServingConfig("fp32", 2, 1, True, 1000)
    w = win(2.0, cpu_other_cores=1.1, cpu_machine_cores=2)
    assert clamp(replace(two, max_queue_delay_us=2000), two, w, ctx(), CFG.guards).instances == 2
    four = Context(objective=Objective(SLO, 0.97), variants=VARIANTS, cores=4, max_instances=4, headroom=False)
    w4 = win(2.0, cpu_other_cores=3.0, cpu_machine_cores=4)  # one core left
    assert clamp(replace(two, instances=3), two, w4, four, CFG.guards).instances == 2


def test_neighbours_are_a_share_of_the_machine_not_of_the_cores_given_to_triton():
    from orchestrator.policy import usable_cores

    c = Context(objective=Objective(SLO), variants=VARIANTS, cores=4)  # --cores 4 on a 16-core machine
    assert usable_cores(c, win(2.0, cpu_other_cores=8.0, cpu_machine_cores=16)) == 4
    assert usable_cores(c, win(2.0, cpu_other_cores=14.0, cpu_machine_cores=16)) == 2


@pytest.mark.parametrize(("other", "usable"), [(None, 2), (0.0, 2), (0.4, 2), (0.7, 2), (0.8, 1), (1.1, 1), (3.0, 1)])
def test_a_shared_core_counts_while_over_a_quarter_of_it_is_free(other, usable):
    from orchestrator.policy import usable_cores

    assert usable_cores(ctx(), win(2.0, cpu_other_cores=other)) == usable


def test_busy_on_the_cores_a_neighbour_leaves_steps_to_a_cheaper_variant():
    """At the instance cap the neighbour sets (1 of 2 cores), an instance always busy with latency still in bounds
    leaves no headroom the client sharing the machine does not pay for: the most accurate cheaper variant comes
    next. Without a neighbour, busy at the cap still reloads nothing (see the busy-signal test above)."""
    batched = ServingConfig("fp32", 1, 1, True, 1000)
    busy = lambda t, **kw: win(t, latency_ms=3.0, util=1.0, rate=700, cpu_other_cores=1.0, **kw)  # noqa: E731
    sim = Sim(ctx(), batched)
    sim.run(8, busy)
    assert [(r, c.variant) for (_, _, r), c in zip(sim.log, sim.configs, strict=True)] == [("faster-variant", "int8")]
    assert "core(s) left to Triton" in sim.reasons[0]


def test_under_pressure_the_next_accuracy_level_comes_before_a_tie_mate_a_few_percent_cheaper():
    # the build's ladder: pruned and distilled tie (distilled 7% cheaper), small and tiny are levels below
    ladder = {
        "pruned": VariantInfo("pruned", "cnn_pruned", 0.983, 12.4),
        "distilled": VariantInfo("distilled", "cnn_distilled", 0.974, 11.6),
        "small": VariantInfo("small", "cnn_small", 0.923, 3.5),
        "tiny": VariantInfo("tiny", "cnn_tiny", 0.858, 0.3),
    }
    c = Context(objective=Objective(SLO, 0.85), variants=ladder, cores=2, headroom=False)
    maxed = ServingConfig("pruned", 2, 1, True, 12500)
    p = RulePolicy().propose(overloaded(10.0, instances=2), maxed, c)
    assert p.config.variant == "small"  # one reload to a level that holds, not two
    # with no lower level above the floor, the tie-mate is still the capacity left
    only_ties = Context(objective=Objective(SLO, 0.97), variants=ladder, cores=2, headroom=False)
    assert RulePolicy().propose(overloaded(10.0, instances=2), maxed, only_ties).config.variant == "distilled"


def batch8_through_the_door(t, instances=1, e2e_p99=35.0, **kw):
    """Batch-8 requests on a held load: service time dominates, so the mean (17 ms) sits near the p99 (35 ms)."""
    w = win(t, latency_ms=17.0, util=0.6, rate=50, instances=instances, p99=30.0, **kw)
    return replace(
        w, triton_p99_latency_ms=30.0, p99_latency_ms=e2e_p99, e2e_p99_latency_ms=e2e_p99, e2e_avg_latency_ms=19.0
    )


def test_beside_a_front_door_p99_the_mean_is_no_pressure_of_its_own():
    config = ServingConfig("pruned", 2, 64, True, 12_500, (4, 8, 16))
    held = batch8_through_the_door(10.0, instances=2)
    assert RulePolicy().propose(held, config, ctx()) is None
    sim = Sim(ctx(), config)
    sim.run(60, batch8_through_the_door)
    assert sim.log == []  # the SLO holds with room: nothing to give up
    # the same windows without the door: between Triton's lagging summaries the means are all there is, and their
    # parts (execution, a wait the batching timer bounds) put the p99 within the SLO too
    no_door = replace(held, p99_latency_ms=None, e2e_p99_latency_ms=None, e2e_avg_latency_ms=None)
    assert pressure(held, config, ctx(), Thresholds()) is None
    assert p99_from_means_ms(no_door, config, Thresholds()) < SLO
    assert pressure(no_door, config, ctx(), Thresholds()) is None
    # a wait beyond the timer (for a busy instance) has a long tail: the same mean, queued, is pressure
    queued = replace(no_door, avg_latency_ms=30.0, avg_queue_ms=29.0, avg_compute_ms=1.0)
    assert pressure(queued, config, ctx(), Thresholds()).kind == PressureKind.MEAN_LATENCY


def test_at_a_tight_slo_a_batch_s_execution_is_no_pressure():
    """A 10-ms SLO after an action (no p99 of its own): batches of 4 executing in 2.1 ms behind a 1-ms timer held
    the load (client p99 ~7 ms), though their mean (3 ms) is 30% of the SLO."""
    tight = Context(objective=Objective(10.0, 0.0), variants=ctx().variants, cores=2, headroom=False)
    config = ServingConfig("pruned", 2, 1, True, 1000)
    held = replace(
        win(60.0, latency_ms=3.0, util=0.65, rate=2556, instances=2, p99=None),
        p99_latency_ms=None,
        avg_queue_ms=0.9,
        avg_compute_ms=2.1,
        avg_batch=4.1,
    )
    assert p99_from_means_ms(held, config, Thresholds()) == pytest.approx(2 * 2.1 + 1.0)
    assert pressure(held, config, tight, Thresholds()) is None
    # the same mean spent waiting for an instance is a backlog forming
    waiting = replace(held, avg_latency_ms=5.0, avg_queue_ms=4.5, avg_compute_ms=0.5)
    assert pressure(waiting, config, tight, Thresholds()).kind == PressureKind.MEAN_LATENCY


def test_after_an_action_the_front_door_p99_still_counts_and_triton_s_is_set_aside():
    sim = Sim(ctx(), ServingConfig("fp32", 1, 64, True, 12_500, (4, 8, 16)))
    sim.state = replace(sim.state, guard=replace(sim.state.guard, last_action_s=0.0))
    over = lambda t, **kw: batch8_through_the_door(t, e2e_p99=80.0, **kw)  # noqa: E731
    decisions = sim.run(8, over)  # within SUMMARY_WINDOW_S of the action
    assert any("p99 80.0 ms > SLO 50 ms" in d.reason for d in decisions), [d.reason for d in decisions]


def test_a_model_without_a_manifest_keeps_its_variant_and_any_floor_and_still_scales():
    """A model tritune did not build: one unmeasured variant, no ladder; batching and instances still tuned."""
    from orchestrator.policy import unmeasured

    foreign = Context(objective=Objective(SLO, 0.99), variants=unmeasured("", "their_model"), cores=2, headroom=False)
    assert foreign.allows("") and foreign.most_accurate().name == ""
    sim = Sim(foreign, ServingConfig(""))
    sim.run(160, overloaded)
    rules = [r for _, a, r in sim.log if a == "apply"]
    assert rules[:2] == ["enable-dynamic-batching", "add-instance"]
    assert {c.variant for c in sim.configs} == {""}  # never switched, never "enforced" a floor it cannot judge


def test_a_model_without_a_batch_dimension_gets_instances_only():
    unbatched = Sim(ctx(max_batch_size=0))
    unbatched.run(160, overloaded)
    assert unbatched.configs, "an overload must still be acted on"
    assert not any(c.dynamic_batching or c.max_queue_delay_us or c.preferred_batch_sizes for c in unbatched.configs)
    assert max(c.instances for c in unbatched.configs) > 1


def test_a_backlog_is_judged_by_its_drain_time_against_the_slo():
    two = replace(DEFAULT, instances=2)
    t = Thresholds()
    # 13 pending on 2 instances is over 4 per instance either way; what it costs a new request differs 16×
    fast = win(10.0, latency_ms=4.0, util=0.6, rate=4800, instances=2, pending_requests=13)
    assert pressure(fast, two, ctx(), t) is None  # under 3 ms of work at 4,800 requests/s
    slow = win(10.0, latency_ms=4.0, util=0.6, rate=300, instances=2, pending_requests=13)
    p = pressure(slow, two, ctx(), t)
    assert p is not None and p.kind == PressureKind.BACKLOG and "43 ms of work" in p.reason
    stalled = win(10.0, latency_ms=4.0, util=0.0, rate=0.0, instances=2, pending_requests=13)
    assert pressure(stalled, two, ctx(), t).kind == PressureKind.BACKLOG  # nothing completed: it never drains


def test_pressure_with_no_rung_left_is_logged_at_the_limit_not_within_the_slo_band():
    # int8 is the fastest variant the floor admits, 2 instances on 2 cores, the delay at its cap (SLO / 4)
    top = ServingConfig("int8", instances=2, dynamic_batching=True, max_queue_delay_us=12_500)
    sim = Sim(ctx(floor=0.975), top)
    decisions = sim.run(8, lambda t, **kw: win(t, latency_ms=60.0, util=0.97, rate=600, pending_requests=40, **kw))
    assert sim.log == []
    assert {d.rule for d in decisions} == {"at-limit"}
    reason = decisions[-1].reason
    assert "nothing left to try" in reason and reason.startswith("p99 120.0 ms > SLO 50 ms")
    # the same config without pressure is steady
    calm = Sim(ctx(floor=0.975), top)
    assert {d.rule for d in calm.run(8, lambda t, **kw: win(t, latency_ms=5.0, util=0.6, rate=600, **kw))} == {"steady"}


def test_the_standby_is_the_first_rung_a_step_tries():
    from orchestrator.policy import standby_variant

    # from fp32 (28 ms): the most accurate variant at least 1.5× cheaper within the floor: int8 (15.5 ms)
    assert standby_variant("fp32", ctx(0.97)) == "int8"
    # from int8: pruned (7.2), more accurate than distilled (7.1)
    assert standby_variant("int8", ctx(0.97)) == "pruned"
    # nothing 1.5× cheaper than pruned, and the floor keeps distilled out of the others' reach
    assert standby_variant("pruned", ctx(0.96)) is None
    assert standby_variant("int8", ctx(0.975)) is None
