"""The rule ladder: :class:`RulePolicy` proposes the next config from one window.

At any load it first proposes a variant that dominates the current one (as accurate, much cheaper). Under pressure
it climbs: dynamic batching (with an instance more in the same reload when latency is far over the SLO) → another
instance → a longer queue delay → a faster variant at or above the accuracy floor. When the load is light it walks
back: the most accurate variant the capacity model says fits, in one reload → a shorter delay → fewer instances.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

from orchestrator.metrics import Window
from orchestrator.policy.profile import RateSource, offered_per_replica
from orchestrator.policy.signals import (
    Pressure,
    Thresholds,
    busy_share,
    instance_cap,
    light,
    pressure,
    usable_cores,
    utilization,
)
from orchestrator.policy.types import Context, Direction, PressureKind, Proposal, Rule
from tritune.compare import AccuracyVerdict
from tritune.serving import ServingConfig

FAR_OVER_SLO = 2.0  # mean latency above this multiple of the SLO: two rungs in one reload
FREE_VARIANT_SPEEDUP = 1.5  # a no-accuracy-cost variant must be at least this much cheaper to be worth a reload
FASTER_VARIANT_COST_RATIO = 0.95  # a variant counts as faster when it costs at most this share of the current


def standby_variant(variant: str, ctx: Context) -> str | None:
    """The variant to keep loaded and warm beside ``variant`` (``tritune/apply.py``'s standby): the first rung
    :meth:`RulePolicy._faster` tries under a step, the most accurate variant at or above the floor that buys real
    capacity (at least ``FREE_VARIANT_SPEEDUP`` cheaper); None where there is none. A step down to it is then an
    unload of the served version, with no reload under the load that forced it."""
    cost = ctx.cost(variant)
    cheaper = [
        v for v in ctx.allowed_variants() if v.name != variant and v.latency_ms_b32 <= cost / FREE_VARIANT_SPEEDUP
    ]
    if not cheaper:
        return None
    return max(cheaper, key=lambda v: (v.top1, -v.latency_ms_b32)).name


class Policy(Protocol):
    def propose(
        self, w: Window, current: ServingConfig, ctx: Context, allowed: Callable[[ServingConfig], bool] = ...
    ) -> Proposal | None: ...


@dataclass(frozen=True)
class RulePolicy:
    thresholds: Thresholds = field(default_factory=Thresholds)
    # The first batching rung's delay, on the CPU and on GPUs alike: 1 ms, the CPU oracle sweep's best delay (4 ms
    # lost 20 % of the throughput), 2 % of a 50-ms SLO.
    initial_delay_us: int = 1000
    # GPU only: TensorRT engines are tuned for these shapes. On the CPU ONNX Runtime costs about the same per sample
    # at any batch size, and until the oldest request has waited out the delay Triton cuts the queue to the largest
    # preferred size (a queue of 12 runs as 8, then 4 after another delay); without them it runs as one batch of 12.
    # (Past the delay Triton takes up to max_batch_size either way.)
    preferred_batch_sizes: tuple[int, ...] = (4, 8, 16)

    def propose(
        self,
        w: Window,
        current: ServingConfig,
        ctx: Context,
        allowed: Callable[[ServingConfig], bool] = lambda _c: True,
    ) -> Proposal | None:
        """The first rung of the ladder that ``allowed`` accepts (the controller refuses tabu configs)."""
        t = self.thresholds
        why = pressure(w, current, ctx, t)
        free = self._free(current, ctx, why)
        if free is not None and why is not None:
            # Under pressure the switch alone rarely holds the load, and each reload under load costs a drain (two
            # copies on the same cores): the first variant-independent rung comes in the same reload.
            for p in self._up(w, current, ctx, why):
                if p.config.variant != current.variant:
                    continue
                combined = replace(p.config, variant=free.config.variant)
                if allowed(combined):
                    return replace(free, config=combined, reason=f"{free.reason}; with {p.rule} in the same reload")
        headroom = self._headroom(current, ctx, w) if why is None else None
        if free is not None and headroom is not None:
            combined = replace(headroom, variant=free.config.variant)
            if allowed(combined):
                return replace(
                    free, config=combined, reason=f"{free.reason}; with {Rule.PROVISION_HEADROOM} in the same reload"
                )
        if free is not None and allowed(free.config):
            return free
        if headroom is not None and allowed(headroom):
            return Proposal(
                headroom,
                Direction.FREE,
                Rule.PROVISION_HEADROOM,
                "no pressure: batching and one instance per core now, so that a rise in load needs no reload "
                "(on the CPU idle instances cost memory only)",
            )
        if why is not None:
            candidates = self._up(w, current, ctx, why)
        elif light(w, current, ctx, t):
            candidates = self._down(w, current, ctx)
        else:
            return None
        return next((p for p in candidates if allowed(p.config)), None)

    def _headroom(self, c: ServingConfig, ctx: Context, w: Window) -> ServingConfig | None:
        if not ctx.keeps_headroom:
            return None
        target = c if c.dynamic_batching else self._batched(c, ctx)
        target = replace(target, instances=max(c.instances, instance_cap(ctx, w)))
        return target if target != c else None

    def _batched(self, c: ServingConfig, ctx: Context) -> ServingConfig:
        """``c`` with dynamic batching at the first rung's settings."""
        sizes = () if ctx.kind == "cpu" else tuple(b for b in self.preferred_batch_sizes if b <= ctx.max_batch_size)
        delay = min(self.initial_delay_us, ctx.delay_cap_us)
        return replace(c, dynamic_batching=True, max_queue_delay_us=delay, preferred_batch_sizes=sizes)

    def _free(self, c: ServingConfig, ctx: Context, why: Pressure | None) -> Proposal | None:
        """A much cheaper variant that is at least as accurate dominates the current one at any load: it comes
        before every other rung (each reload of the same variant costs a stall for a smaller gain) and, as it does
        not depend on the load, needs no persistence delay; switching before a rise in load means the old
        variant never has a backlog to drain."""
        current = ctx.variants.get(c.variant)
        if current is None:
            return None
        # "At no accuracy cost": not significantly worse on the same held-out images (McNemar, tritune/compare.py);
        # among variants the test cannot tell apart the cheaper wins.
        free = [
            v
            for v in ctx.allowed_variants()
            if v.latency_ms_b32 < ctx.cost(c.variant) / FREE_VARIANT_SPEEDUP and v.not_worse_than(current)
        ]
        if not free:
            return None
        target = min(free, key=lambda v: (v.latency_ms_b32, -v.top1))
        test = target.comparison(current)
        evidence = (
            f"McNemar p={test.p_value:.2f} over {test.only_first}/{test.only_second} images only one got right"
            if test.paired
            else "no per-image results: point estimates"
        )
        return Proposal(
            replace(c, variant=target.name),
            Direction.FREE,
            Rule.FREE_FASTER_VARIANT,
            f"{why.reason if why else 'at any load'}; {c.variant} → {target.name}: "
            f"{ctx.cost(c.variant) / target.latency_ms_b32:.1f}× cheaper, not significantly less accurate "
            f"(top-1 {target.top1:.4f} vs {current.top1:.4f}; {evidence})",
        )

    def _up(self, w: Window, c: ServingConfig, ctx: Context, why: Pressure) -> Iterator[Proposal]:
        util = utilization(w, c)
        cap = instance_cap(ctx, w)
        if why.kind == PressureKind.BUSY:
            # Busy instances with latency still in bounds call for another instance and nothing else: a longer
            # delay under that signal costs a reload under load, and the drain of the copy it replaces, for no gain
            # while requests do not wait.
            if c.instances < cap:
                yield Proposal(replace(c, instances=c.instances + 1), Direction.UP, Rule.ADD_INSTANCE, why.reason)
            elif instance_cap(ctx, w) < instance_cap(ctx):
                # Other processes hold the cores another instance would need, and they (a client on this machine
                # among them) queue for the CPU behind Triton's busy instances, which Triton's own latency does not
                # show: a cheaper variant is the capacity left. Unless this config held this load in most of its
                # recent windows: busy shares judged on short windows beside a neighbour flicker, and one busy
                # window is no reason to give up accuracy while latency is in bounds (a miss is pressure of
                # another kind, which this does not hold back).
                if ctx.profile.held(c.variant, c.instances, offered_per_replica(w), w.end_s):
                    return
                yield from self._faster(w, c, ctx, f"{why.reason} on the {usable_cores(ctx, w)} core(s) left to Triton")
            return
        if not c.dynamic_batching:
            batched = self._batched(c, ctx)
            if c.instances < cap and w.avg_latency_ms > FAR_OVER_SLO * ctx.objective.p99_latency_ms:
                # Far over the SLO one rung will not do, and every reload under load costs a stall (and, on Triton
                # 2.51's Python backend at high rates, risks the server): both rungs in one reload.
                yield Proposal(
                    replace(batched, instances=c.instances + 1),
                    Direction.UP,
                    Rule.BATCH_AND_ADD_INSTANCE,
                    f"{why.reason}; mean latency {w.avg_latency_ms:.0f} ms, over {FAR_OVER_SLO:g}× the SLO: "
                    "batching and an instance in one reload",
                )
            yield Proposal(
                batched,
                Direction.UP,
                Rule.ENABLE_DYNAMIC_BATCHING,
                f"{why.reason}; requests run one by one (batch {w.avg_batch:.1f})",
            )
        if c.instances < cap and util >= self.thresholds.utilization_over * 0.8:
            yield Proposal(
                replace(c, instances=c.instances + 1),
                Direction.UP,
                Rule.ADD_INSTANCE,
                f"{why.reason}; instances {util:.0%} busy",
            )
        # A longer delay only helps while executed batches stay small and the timer, not a backlog, bounds the wait:
        # once requests queue for longer than the delay, a free instance takes what is queued at once and a longer
        # timer only delays the moments the backlog clears.
        target_batch = max(c.preferred_batch_sizes or (ctx.max_batch_size,))
        timer_bound = w.avg_queue_ms <= 2 * c.max_queue_delay_us / 1000
        if (
            c.dynamic_batching
            and c.max_queue_delay_us < ctx.delay_cap_us
            and timer_bound
            and w.avg_batch < 0.75 * target_batch
        ):
            delay = min(max(c.max_queue_delay_us * 2, self.initial_delay_us), ctx.delay_cap_us)
            yield Proposal(
                replace(c, max_queue_delay_us=delay),
                Direction.UP,
                Rule.LENGTHEN_QUEUE_DELAY,
                f"{why.reason}; batch {w.avg_batch:.1f}, larger batches amortize",
            )
        yield from self._faster(w, c, ctx, why.reason)

    def _faster(self, w: Window, c: ServingConfig, ctx: Context, why: str) -> Iterator[Proposal]:
        """Cheaper variants at or above the floor: first those that buy real capacity (at least
        ``FREE_VARIANT_SPEEDUP`` cheaper) and are predicted to hold this window's load, the most accurate first;
        then the other real-capacity ones, cheapest first (the one that comes nearest to holding); then the merely
        cheaper. A tie-mate a few percent cheaper (the next member of the same accuracy level) costs a reload and a
        drain for little; under a step it would be one more action before the next level, which does hold."""
        cost = ctx.cost(c.variant)
        busy = min(1.0, busy_share(w, c))
        faster = [v for v in ctx.allowed_variants() if v.latency_ms_b32 < cost * FASTER_VARIANT_COST_RATIO]
        predicted = {v.name: ctx.profile.predict(w, c, v.name, ctx, busy) for v in faster}

        def order(v):
            real = v.latency_ms_b32 <= cost / FREE_VARIANT_SPEEDUP
            holds = predicted[v.name].utilization < self.thresholds.utilization_over
            if real and holds:
                return (0, -v.top1, v.latency_ms_b32)
            return (1, 0.0, v.latency_ms_b32) if real else (2, -v.top1, v.latency_ms_b32)

        for target in sorted(faster, key=order):
            yield Proposal(
                replace(c, variant=target.name),
                Direction.UP,
                Rule.FASTER_VARIANT,
                f"{why}; {c.variant} → {target.name}, {predicted[target.name].describe()} (top-1 "
                f"{target.top1:.4f} ≥ floor {ctx.objective.accuracy_floor:.4f})",
            )

    def _down(self, w: Window, c: ServingConfig, ctx: Context) -> Iterator[Proposal]:
        util = utilization(w, c)
        if c.variant in ctx.variants:
            # "More accurate": significantly better in the paired test (tritune/compare.py), so that a tie, which
            # the cheaper variant wins, is never "restored" at the cost of a reload.
            current = ctx.variants[c.variant]
            more = sorted(
                (v for v in ctx.allowed_variants() if v.comparison(current).verdict == AccuracyVerdict.BETTER),
                key=lambda v: v.latency_ms_b32,
            )
            fitting = []
            for v in more:
                predicted = ctx.profile.predict(w, c, v.name, ctx, util)
                target = (
                    self.thresholds.restore_learned_utilization
                    if predicted.source == RateSource.LEARNED
                    else self.thresholds.restore_target_utilization
                )
                if predicted.utilization < target:
                    fitting.append((v, predicted))
            # Back up in one reload: the most accurate level predicted to hold (its cheapest member among those the
            # paired test cannot tell from it), not the next rung and then another; each reload costs a drain and
            # the first requests on cold sessions. The other fitting variants follow, most accurate first, for when
            # the first is tabu.
            if fitting:
                best = max(fitting, key=lambda vp: vp[0].top1)[0]
                level = [vp for vp in fitting if vp[0].not_worse_than(best)]
                first = min(level, key=lambda vp: vp[0].latency_ms_b32)
                rest = sorted((vp for vp in fitting if vp is not first), key=lambda vp: -vp[0].top1)
                for v, predicted in (first, *rest):
                    yield Proposal(
                        replace(c, variant=v.name),
                        Direction.DOWN,
                        Rule.RESTORE_VARIANT,
                        f"light load ({util:.0%} busy); {v.name} {predicted.describe()}",
                    )
        if c.dynamic_batching and c.max_queue_delay_us > self.initial_delay_us:
            yield Proposal(
                replace(c, max_queue_delay_us=max(c.max_queue_delay_us // 2, self.initial_delay_us)),
                Direction.DOWN,
                Rule.SHORTEN_QUEUE_DELAY,
                f"light load ({util:.0%} busy): less waiting per request",
            )
        if (
            not ctx.keeps_headroom
            and c.instances > ctx.min_instances
            and util * c.instances / (c.instances - 1) < self.thresholds.utilization_light
        ):
            yield Proposal(
                replace(c, instances=c.instances - 1),
                Direction.DOWN,
                Rule.REMOVE_INSTANCE,
                f"light load ({util:.0%} busy)",
            )
