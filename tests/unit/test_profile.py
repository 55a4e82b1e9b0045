"""The learned service rates (orchestrator/policy/profile.py) and the switches they predict, tick by tick: a step
down the ladder under a step of load and the way back, where the build's cost ratio alone says "does not fit"."""

from __future__ import annotations

from dataclasses import replace

from orchestrator.policy import Context, Objective, RulePolicy, ServingConfig, VariantInfo
from orchestrator.policy.profile import LEARNED_WINDOWS, STRAIN_MEMORY_S, RateSource, ServiceProfile, service_rate
from tests.unit.test_policy import SLO, Sim, win

# The build's costs (in-process ORT at batch 32): small 3.5× cheaper than pruned ...
LADDER = {
    "pruned": VariantInfo("pruned", "cnn_pruned", 0.983, 12.4),
    "distilled": VariantInfo("distilled", "cnn_distilled", 0.974, 11.6),
    "small": VariantInfo("small", "cnn_small", 0.923, 3.5),
    "tiny": VariantInfo("tiny", "cnn_tiny", 0.858, 0.3),
}
# ... and what each holds served, with every instance busy: small only 2× pruned (Triton's per-request work and the
# client's share of the cores weigh more on a cheap variant).
SERVED_RATE = {"pruned": 1500.0, "distilled": 1600.0, "small": 3000.0, "tiny": 4500.0}
HELD = ServingConfig("pruned", 2, 1, True, 1000)  # headroom's config: batching, one instance per core


def served(rate_of, rates=SERVED_RATE):
    """A fake Triton at the offered rate ``rate_of(t)``: busy share and latency from the served variant's rate."""

    def window(t, instances=2, config=HELD, **kw):
        offered, capacity = rate_of(t), rates[config.variant]
        util = min(offered / capacity, 1.0)
        if util < 0.9:
            return win(t, latency_ms=2.0 + 10 * util, util=util, rate=offered, instances=instances, **kw)
        return win(t, latency_ms=90.0, util=1.0, rate=capacity, instances=instances, pending_requests=200, **kw)

    window.needs_config = True
    return window


def ladder_ctx(**kw) -> Context:
    return Context(objective=Objective(SLO, 0.85), variants=LADDER, cores=2, headroom=True, **kw)


def test_a_step_goes_down_one_level_and_the_fall_brings_back_the_top_level_on_its_learned_rate():
    step_load = served(lambda t: 1820.0 if 60 <= t < 100 else 780.0)
    sim = Sim(ladder_ctx(), HELD)
    sim.run(60, step_load)
    assert sim.log == []  # pruned holds the base (52% busy): nothing to do, and its rate is learned meanwhile
    assert sim.state.profile.rate("pruned", 2) == SERVED_RATE["pruned"]
    sim.run(40, step_load)
    assert [(r, c.variant) for (_, _, r), c in zip(sim.log, sim.configs, strict=True)] == [("faster-variant", "small")]
    sim.run(120, step_load)
    assert sim.log[-1][2] == "restore-variant" and sim.config.variant == "pruned"
    assert "(learned)" in sim.reasons[-1]
    assert len(sim.log) == 2 and sim.state.rollbacks == 0  # down one level, back up, nothing else


def test_without_a_learned_rate_the_build_ratio_keeps_the_cheaper_variant_at_the_same_load():
    # Started on small: pruned never served, so its fit is the build's 3.5× ratio of small's busy share (26% → 93%).
    sim = Sim(ladder_ctx(), replace(HELD, variant="small"))
    sim.run(120, served(lambda t: 780.0))
    assert sim.log == [] and sim.config.variant == "small"
    # at a load where even the build's ratio fits, it restores the top level in one reload, not through distilled
    sim = Sim(ladder_ctx(), replace(HELD, variant="small"))
    sim.run(120, served(lambda t: 300.0))
    assert [c.variant for c in sim.configs] == ["pruned"] and "(build)" in sim.reasons[0]


def test_the_way_back_takes_the_most_accurate_level_that_fits_and_only_that_level():
    """At a load the build's ratio says pruned would not hold but distilled would, the way back from small goes to
    distilled; pruned follows only once distilled's own served rate says it fits (learned evidence, not a rung)."""
    sim = Sim(ladder_ctx(), replace(HELD, variant="small"))
    sim.run(120, served(lambda t: 525.0))  # small 17.5% busy: pruned 3.54× → 62%, distilled 3.31× → 58%
    assert [c.variant for c in sim.configs] == ["distilled", "pruned"]
    assert "(build)" in sim.reasons[0] and "(converted)" in sim.reasons[1]


def test_the_profile_learns_only_from_windows_busy_enough_to_extrapolate_and_keeps_the_median():
    p = ServiceProfile()
    idle = win(2.0, util=0.05, rate=50.0, instances=2)
    assert service_rate(idle, HELD) is None and p.observe(idle, HELD).rates == p.rates
    for i, util in enumerate([0.5, 0.52, 0.9, 0.48]):
        p = p.observe(win(2.0 * i + 2, util=util, rate=780.0, instances=2), HELD)
    assert p.rate("pruned", 2) == (780.0 / 0.5 + 780.0 / 0.52) / 2  # the median of four rates
    assert p.rate("pruned", 1) is None and p.rate("small", 2) is None  # per variant and instance count
    few = ServiceProfile().observe(win(2.0, util=0.5, rate=780.0, instances=2), HELD)
    assert LEARNED_WINDOWS > 1 and few.rate("pruned", 2) is None


def test_a_prediction_says_where_its_rate_came_from():
    ctx = ladder_ctx()
    w = win(2.0, util=0.26, rate=780.0, instances=2)
    small = replace(HELD, variant="small")
    nothing = ServiceProfile()
    build = nothing.predict(w, small, "pruned", ctx, busy=0.26)
    assert build.source == RateSource.BUILD and round(build.utilization, 2) == round(0.26 * 12.4 / 3.5, 2)
    learned_small = nothing
    for i in range(LEARNED_WINDOWS):
        learned_small = learned_small.observe(win(2.0 * i + 2, util=0.26, rate=780.0, instances=2), small)
    converted = learned_small.predict(w, small, "pruned", ctx, busy=0.26)
    assert converted.source == RateSource.CONVERTED
    both = learned_small
    for i in range(LEARNED_WINDOWS):
        both = both.observe(win(2.0 * i + 2, util=0.52, rate=780.0, instances=2), HELD)
    learned = both.predict(w, small, "pruned", ctx, busy=0.26)
    assert learned.source == RateSource.LEARNED and round(learned.utilization, 2) == 0.52


def test_a_variant_measured_holding_the_base_at_70_percent_busy_is_restored_there_but_not_on_a_converted_guess():
    # Two cores shared with the client: pruned held the base 71% busy within the SLO. Its own measured rate is
    # trusted up to 80% busy; the same figure from the build's ratio is not (60%).
    rates = {**SERVED_RATE, "pruned": 930.0, "distilled": 990.0, "small": 2200.0}
    sim = Sim(ladder_ctx(), HELD)
    sim.run(220, served(lambda t: 1540.0 if 60 <= t < 100 else 660.0, rates))
    assert [c.variant for c in sim.configs] == ["small", "pruned"] and "(learned)" in sim.reasons[-1]
    assert 0.6 < float(sim.reasons[-1].split("predicted ")[1].split("%")[0]) / 100 < 0.8
    ctx = ladder_ctx()
    w = win(2.0, util=0.3, rate=660.0, instances=2)
    guess = ServiceProfile().predict(w, replace(HELD, variant="small"), "pruned", ctx, busy=0.2)
    assert guess.source == RateSource.BUILD and guess.utilization > 0.6
    light_small = win(2.0, latency_ms=2.0, util=0.2, rate=660.0, instances=2)
    p = RulePolicy().propose(light_small, replace(HELD, variant="small"), ctx)
    assert p is None  # 0.2 × 3.5 = 71% for pruned, 66% for distilled: neither restored on a guess


def test_a_variant_under_pressure_at_the_base_is_not_restored_there_so_the_ladder_does_not_flap():
    # Batch-8 clients on cores shared with the client: pruned misses the SLO at the base (mean 20 ms, mostly queued;
    # p99 60 ms) while its instances are only ~25% busy. Busy share alone predicts it fits; it was seen under
    # pressure there.
    base, step_load = 400.0, 2080.0

    def window(t, instances=2, config=HELD, **kw):
        offered = step_load if 60 <= t < 100 else base
        util = min(offered / SERVED_RATE[config.variant], 1.0)
        top = config.variant in ("pruned", "distilled")  # the top level's two members
        if util >= 0.9:
            return win(t, latency_ms=90.0, util=1.0, rate=SERVED_RATE[config.variant], instances=instances, **kw)
        latency, p99 = (20.0, 60.0) if top else (4.0, None)
        return win(t, latency_ms=latency, util=util, rate=offered, instances=instances, p99=p99, **kw)

    window.needs_config = True
    sim = Sim(ladder_ctx(), HELD)
    sim.run(260, window)
    variants = [c.variant for c in sim.configs]
    # down to small at the base (pressure); distilled, never seen at that load, is tried once; neither is restored
    # again at it: without the strain memory each would be, on its low busy share, and put under pressure again
    assert variants[-1] == "small" and "pruned" not in variants and variants.count("distilled") <= 1, sim.reasons
    assert sim.state.profile.strained("pruned", 2, base, now_s=260.0)
    w = win(2.0, latency_ms=4.0, util=0.13, rate=base, instances=2)
    p = sim.state.profile.predict(w, replace(HELD, variant="small"), "pruned", ladder_ctx(), busy=0.13)
    assert p.source == RateSource.STRAINED and "strained" in p.describe()


def test_a_stall_at_the_base_is_outvoted_by_the_windows_that_held_it_so_the_way_back_stays_open():
    # Two windows of a stall (pressure at the base load, the machine busy elsewhere) among the many in which pruned
    # held the base: after a step down the ladder, pruned is still restored at the base.
    def stall_then_step(t, instances=2, config=HELD, **kw):
        if config.variant == "pruned" and t in (20.0, 22.0):
            return win(t, latency_ms=90.0, util=0.6, rate=780.0, instances=instances, pending_requests=200, **kw)
        return served(lambda t: 1820.0 if 60 <= t < 100 else 780.0)(t, instances, config, **kw)

    stall_then_step.needs_config = True
    sim = Sim(ladder_ctx(), HELD)
    sim.run(220, stall_then_step)
    assert [c.variant for c in sim.configs] == ["small", "pruned"], sim.reasons
    p = sim.state.profile
    assert not p.strained("pruned", 2, 780.0, now_s=sim.t) and p.strained("pruned", 2, 1820.0, now_s=sim.t)


def test_what_a_config_was_seen_unable_to_hold_is_forgotten_after_the_strain_memory():
    p = ServiceProfile()
    for t in range(2, 22, 2):
        p = p.observe(win(float(t), latency_ms=20.0, util=0.25, rate=400.0, instances=2), HELD, under_pressure=True)
    assert p.strained("pruned", 2, 400.0, now_s=20.0)
    assert p.strained("pruned", 2, 340.0, now_s=20.0)  # a lower load within the margin: the same load
    assert not p.strained("pruned", 2, 300.0, now_s=20.0)  # well below what it was under pressure at
    assert not p.strained("pruned", 2, 400.0, now_s=20.0 + STRAIN_MEMORY_S + 1)
    assert not p.strained("small", 2, 400.0, now_s=20.0)  # per variant ...
    assert not p.strained("pruned", 1, 400.0, now_s=20.0)  # ... and instance count


def test_busy_beside_a_neighbour_does_not_step_down_a_config_that_held_this_load_until_the_evidence_turns():
    """A neighbour takes a core: pruned's two instances read >90% busy while latency stays in bounds. Judged on
    one window that stepped down the ladder (noisy_neighbour left pruned at the base load). The profile vetoes a
    busy-only step down while pruned held this load in most of its recent windows; once busy windows outnumber
    them, it steps down; a miss of the SLO is pressure of another kind and is not held back."""
    sim = Sim(ladder_ctx(), HELD)
    sim.run(60, served(lambda t: 780.0))  # pruned holds the base: 30 windows of evidence
    assert sim.log == [] and sim.state.profile.held("pruned", 2, 780.0, now_s=sim.t)

    def busy(t, instances=2, **kw):
        return win(t, latency_ms=8.0, util=0.93, rate=780.0, instances=instances, cpu_other_cores=1.1,
                   cpu_machine_cores=2, **kw)  # fmt: skip

    sim.run(40, busy)
    assert sim.log == []  # busy alone, on a config that held this load: no step down
    sim.run(50, busy)
    # once the busy windows outnumber those that held (the 31st, at t = 122 s), it steps down
    assert sim.log[0][1:] == ("apply", "faster-variant") and 120.0 <= sim.log[0][0] <= 126.0

    missed = Sim(ladder_ctx(), HELD)
    missed.run(60, served(lambda t: 780.0))
    missed.run(8, lambda t, **kw: busy(t, p99=120.0, **{k: v for k, v in kw.items() if k != "p99"}))
    assert missed.log[0][1:] == ("apply", "faster-variant")  # an SLO miss is not vetoed
