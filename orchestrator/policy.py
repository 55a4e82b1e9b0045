"""Decide: pure functions from (window, current config, state, context, now) to (decision, new state).

No I/O happens here, so every rule can be tested tick by tick with a fake clock. Three layers:

* :class:`RulePolicy` proposes the next config: at any load, first a variant that dominates the current one (as
  accurate, much cheaper); under pressure it climbs a ladder (turn on dynamic batching, with an
  instance more in the same reload when latency is far over the SLO →
  add an instance → lengthen the queue delay → a faster variant at or above the accuracy floor); when load is
  light it walks back (a more accurate variant if the capacity model says it fits → fewer instances → shorter
  delay).
* :class:`GuardRails` wrap any policy: hardware bounds (instances × threads ≤ cores on CPU, free GPU memory),
  step limits, separate up and down delays (a proposal must persist), a cool-down after each action, and the
  accuracy floor as a hard limit.
* :func:`step` runs the controller: re-apply the last good config after a Triton restart, verify each action over
  the next windows and roll back a regression (the rejected config stays tabu for a while), never two actions
  at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

from orchestrator.metrics import Window
from tritune.errors import ConfigError


@dataclass(frozen=True)
class ServingConfig:
    """The knobs the orchestrator turns on the public model."""

    variant: str
    instances: int = 1
    threads: int = 0  # ORT intra-op threads per instance; 0 = auto (cores ÷ instances)
    dynamic_batching: bool = False
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()

    def describe(self) -> dict:
        return {
            "variant": self.variant,
            "instances": self.instances,
            "threads": self.threads,
            "dynamic_batching": self.dynamic_batching,
            "max_queue_delay_us": self.max_queue_delay_us,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
        }


@dataclass(frozen=True)
class VariantInfo:
    name: str
    model_name: str
    top1: float
    latency_ms_b32: float  # in-process ORT latency at batch 32: the relative cost of the variant


@dataclass(frozen=True)
class Objective:
    p99_latency_ms: float
    accuracy_floor: float = 0.0  # absolute top-1, 0..1

    def __post_init__(self) -> None:
        if not self.p99_latency_ms > 0:
            raise ConfigError(f"--slo-p99-ms must be > 0, got {self.p99_latency_ms}")
        if not 0 <= self.accuracy_floor <= 1:
            raise ConfigError(f"--accuracy-floor is a top-1 fraction in [0, 1], got {self.accuracy_floor}")


@dataclass(frozen=True)
class Context:
    """What the policy may know besides the window: the objective, the variants, the hardware."""

    objective: Objective
    variants: dict[str, VariantInfo]
    cores: int = 2
    kind: str = "cpu"  # or "gpu"
    max_instances: int = 4
    min_instances: int = 1
    max_batch_size: int = 64
    max_queue_delay_us: int = 0  # 0: a quarter of the SLO
    gpu_memory_per_instance_bytes: float = 0.0
    # CPU: hold batching and one instance per core at any load (instances share the same cores, so an idle one
    # costs memory only): the capacity is then in place before load rises, with no reload under load.
    headroom: bool = False

    def __post_init__(self) -> None:
        allowed = [v for v in self.variants.values() if v.top1 >= self.objective.accuracy_floor]
        if not allowed:
            best = max((v.top1 for v in self.variants.values()), default=0.0)
            raise ConfigError(
                f"no variant reaches the accuracy floor {self.objective.accuracy_floor:.4f} "
                f"(best top-1 is {best:.4f}); lower --accuracy-floor"
            )

    @property
    def keeps_headroom(self) -> bool:
        """Headroom applies on the CPU only: on a GPU an idle instance holds memory another model could use."""
        return self.headroom and self.kind == "cpu"

    @property
    def delay_cap_us(self) -> int:
        return self.max_queue_delay_us or int(self.objective.p99_latency_ms * 1000 / 4)

    def allowed_variants(self) -> list[VariantInfo]:
        """Variants at or above the floor, fastest first."""
        ok = [v for v in self.variants.values() if v.top1 >= self.objective.accuracy_floor]
        return sorted(ok, key=lambda v: (v.latency_ms_b32, -v.top1))

    def most_accurate(self) -> VariantInfo:
        return max(self.allowed_variants(), key=lambda v: (v.top1, -v.latency_ms_b32))


@dataclass(frozen=True)
class Proposal:
    config: ServingConfig
    direction: str  # "up" (more capacity), "down" (less capacity / more accuracy), "free" (better on both)
    rule: str
    reason: str


@dataclass(frozen=True)
class Decision:
    action: str  # "hold", "apply", "rollback", "reapply"
    rule: str
    reason: str
    config: ServingConfig | None = None
    verified: dict | None = None  # outcome of the previous action, when this tick judged it

    @property
    def changes(self) -> bool:
        return self.action != "hold" and self.config is not None


# -- signals ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Thresholds:
    avg_fraction_over: float = 0.3  # mean latency above this share of the SLO is pressure (p99 ≈ 3 × mean or more)
    p99_fraction_light: float = 0.5  # below this share of the SLO (and low utilization) the load is light
    utilization_over: float = 0.9
    utilization_light: float = 0.5
    restore_target_utilization: float = 0.6  # a more accurate variant must fit below this utilization
    backlog_per_instance: float = 4.0  # pending requests per instance that count as pressure


def utilization(w: Window, config: ServingConfig) -> float:
    """Busy share of the instances in the window, 0..1.

    Under a deep backlog the Python backend's compute counters also count time a request waits for the stub, so
    the estimate can exceed 1; it is capped, and the machine's CPU use (which Triton reports) raises it when the
    cores are saturated anyway.
    """
    busy = min(1.0, busy_share(w, config))
    if w.cpu_utilization is not None and w.cpu_utilization > 0.95 and w.requests:
        busy = max(busy, w.cpu_utilization)
    return busy


def busy_share(w: Window, config: ServingConfig) -> float:
    """Execution time of the instances over the window's span, uncapped (a backlog can push it past 1)."""
    return w.busy_s / max(w.interval_s * config.instances, 1e-9)


def slo_met(w: Window, objective: Objective) -> bool:
    p99 = w.p99_latency_ms if w.p99_latency_ms is not None else w.avg_latency_ms
    return w.failures == 0 and p99 <= objective.p99_latency_ms


def pressure(w: Window, config: ServingConfig, ctx: Context, t: Thresholds) -> str | None:
    """Why this window is under pressure, or None."""
    slo = ctx.objective.p99_latency_ms
    if w.requests == 0 and w.pending_requests == 0:
        return None
    if w.p99_latency_ms is not None and w.p99_latency_ms > slo and w.avg_latency_ms > t.avg_fraction_over * slo / 2:
        return f"p99 {w.p99_latency_ms:.1f} ms > SLO {slo:g} ms"
    if w.avg_latency_ms > t.avg_fraction_over * slo:
        return f"mean latency {w.avg_latency_ms:.1f} ms > {t.avg_fraction_over:.0%} of the SLO"
    if w.pending_requests > t.backlog_per_instance * config.instances:
        return f"{w.pending_requests:.0f} requests pending"
    # Instances busy all the time leave no headroom: the queue grows with the next rise in load, and the client
    # (sharing the cores on CPU) sees it before Triton's own means do. Execution time only, not the machine's CPU
    # use: a saturated CPU alone is no reason for a reload.
    busy = busy_share(w, config)
    if w.requests and busy >= t.utilization_over:
        return f"instances {min(busy, 1.0):.0%} busy"
    return None


def light(w: Window, config: ServingConfig, ctx: Context, t: Thresholds) -> bool:
    """Plenty of slack. Judged on service time (latency less queueing): under light load a request waits out the
    batching delay, which the policy itself chose and can shorten."""
    slo = ctx.objective.p99_latency_ms
    p99 = w.p99_latency_ms if w.p99_latency_ms is not None else w.avg_latency_ms
    service_ms = w.avg_latency_ms - min(w.avg_queue_ms, config.max_queue_delay_us / 1000)
    return (
        w.failures == 0
        and service_ms < t.p99_fraction_light * slo / 2
        and p99 < t.p99_fraction_light * slo
        and utilization(w, config) < t.utilization_light
    )


# -- the policy -------------------------------------------------------------------------------------------------
class Policy(Protocol):
    def propose(
        self, w: Window, current: ServingConfig, ctx: Context, allowed: Callable[[ServingConfig], bool] = ...
    ) -> Proposal | None: ...


@dataclass(frozen=True)
class RulePolicy:
    thresholds: Thresholds = field(default_factory=Thresholds)
    # 1 ms: the oracle sweep's best delay on the CPU (4 ms lost 20 % of the throughput), 2 % of a 50-ms SLO.
    initial_delay_us: int = 1000
    # GPU only: TensorRT engines are tuned for these shapes. On the CPU ONNX Runtime costs about the same per sample
    # at any batch size, and until the oldest request has waited out the delay Triton cuts the queue to the largest
    # preferred size (a queue of 12 runs as 8, then 4 after another delay); without them it runs as one batch of 12,
    # as in the oracle's config. (Past the delay Triton takes up to max_batch_size either way.)
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
        headroom = self._headroom(current, ctx) if why is None else None
        if free is not None and headroom is not None:
            combined = replace(headroom, variant=free.config.variant)
            if allowed(combined):
                return replace(
                    free, config=combined, reason=f"{free.reason}; with provision-headroom in the same reload"
                )
        if free is not None and allowed(free.config):
            return free
        if headroom is not None and allowed(headroom):
            return Proposal(
                headroom,
                "free",
                "provision-headroom",
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

    def _headroom(self, c: ServingConfig, ctx: Context) -> ServingConfig | None:
        if not ctx.keeps_headroom:
            return None
        target = c if c.dynamic_batching else self._batched(c, ctx)
        target = replace(target, instances=max(c.instances, max_instances(ctx)))
        return target if target != c else None

    def _batched(self, c: ServingConfig, ctx: Context) -> ServingConfig:
        """``c`` with dynamic batching at the first rung's settings."""
        sizes = () if ctx.kind == "cpu" else tuple(b for b in self.preferred_batch_sizes if b <= ctx.max_batch_size)
        delay = min(self.initial_delay_us, ctx.delay_cap_us)
        return replace(c, dynamic_batching=True, max_queue_delay_us=delay, preferred_batch_sizes=sizes)

    def _free(self, c: ServingConfig, ctx: Context, why: str | None) -> Proposal | None:
        """A much cheaper variant that is at least as accurate dominates the current one at any load: it comes
        before every other rung (each reload of the same variant costs a stall for a smaller gain) and, as it does
        not depend on the load, needs no persistence delay; switching before a rise in load means the old
        variant never has a backlog to drain."""
        current_top1 = ctx.variants[c.variant].top1 if c.variant in ctx.variants else 1.0
        free = [
            v
            for v in ctx.allowed_variants()
            if v.top1 >= current_top1 and v.latency_ms_b32 < _cost(ctx, c.variant) / FREE_VARIANT_SPEEDUP
        ]
        if not free:
            return None
        target = min(free, key=lambda v: (v.latency_ms_b32, -v.top1))
        return Proposal(
            replace(c, variant=target.name),
            "free",
            "free-faster-variant",
            f"{why or 'at any load'}; {c.variant} → {target.name}: "
            f"{_cost(ctx, c.variant) / target.latency_ms_b32:.1f}× cheaper at no accuracy cost "
            f"(top-1 {target.top1:.4f} ≥ {current_top1:.4f})",
        )

    def _up(self, w: Window, c: ServingConfig, ctx: Context, why: str) -> Iterator[Proposal]:
        util = utilization(w, c)
        if why.startswith("instances"):
            # Busy instances with latency still in bounds call for another instance and nothing else: longer
            # delays under that signal cost reloads under load and slowed a drain in our integration runs.
            if c.instances < max_instances(ctx):
                yield Proposal(replace(c, instances=c.instances + 1), "up", "add-instance", why)
            return
        if not c.dynamic_batching:
            batched = self._batched(c, ctx)
            if c.instances < max_instances(ctx) and w.avg_latency_ms > FAR_OVER_SLO * ctx.objective.p99_latency_ms:
                # Far over the SLO one rung will not do, and every reload under load costs a stall (and, on Triton
                # 2.51's Python backend at high rates, risks the server): both rungs in one reload.
                yield Proposal(
                    replace(batched, instances=c.instances + 1),
                    "up",
                    "batch-and-add-instance",
                    f"{why}; mean latency {w.avg_latency_ms:.0f} ms, over {FAR_OVER_SLO:g}× the SLO: batching and "
                    "an instance in one reload",
                )
            yield Proposal(
                batched,
                "up",
                "enable-dynamic-batching",
                f"{why}; requests run one by one (batch {w.avg_batch:.1f})",
            )
        if c.instances < max_instances(ctx) and util >= self.thresholds.utilization_over * 0.8:
            yield Proposal(
                replace(c, instances=c.instances + 1), "up", "add-instance", f"{why}; instances {util:.0%} busy"
            )
        # A longer delay only helps while executed batches stay small and the timer, not a backlog, bounds the wait:
        # once requests queue for longer than the delay, a free instance takes what is queued at once and a longer
        # timer only delays the moments the backlog clears (a lengthen under a backlog at the edge of the capacity
        # cost a rollback, or the SLO, in both runs of the goodput benchmark).
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
                "up",
                "lengthen-queue-delay",
                f"{why}; batch {w.avg_batch:.1f}, larger batches amortize",
            )
        faster = [v for v in ctx.allowed_variants() if v.latency_ms_b32 < _cost(ctx, c.variant) * 0.95]
        for target in sorted(faster, key=lambda v: (-v.top1, v.latency_ms_b32)):  # most accurate first
            yield Proposal(
                replace(c, variant=target.name),
                "up",
                "faster-variant",
                f"{why}; {c.variant} → {target.name} (top-1 {target.top1:.4f} ≥ floor "
                f"{ctx.objective.accuracy_floor:.4f})",
            )

    def _down(self, w: Window, c: ServingConfig, ctx: Context) -> Iterator[Proposal]:
        util = utilization(w, c)
        if c.variant in ctx.variants:
            more = sorted(
                (v for v in ctx.allowed_variants() if v.top1 > ctx.variants[c.variant].top1),
                key=lambda v: v.latency_ms_b32,
            )
            for v in more:  # the cheapest more accurate variant predicted to fit comes first
                predicted = util * v.latency_ms_b32 / _cost(ctx, c.variant)
                if predicted < self.thresholds.restore_target_utilization:
                    yield Proposal(
                        replace(c, variant=v.name),
                        "down",
                        "restore-variant",
                        f"light load ({util:.0%} busy); {v.name} predicted {predicted:.0%} busy",
                    )
        if c.dynamic_batching and c.max_queue_delay_us > self.initial_delay_us:
            yield Proposal(
                replace(c, max_queue_delay_us=max(c.max_queue_delay_us // 2, self.initial_delay_us)),
                "down",
                "shorten-queue-delay",
                f"light load ({util:.0%} busy): less waiting per request",
            )
        if (
            not ctx.keeps_headroom
            and c.instances > ctx.min_instances
            and util * c.instances / (c.instances - 1) < self.thresholds.utilization_light
        ):
            yield Proposal(
                replace(c, instances=c.instances - 1), "down", "remove-instance", f"light load ({util:.0%} busy)"
            )


FAR_OVER_SLO = 2.0  # mean latency above this multiple of the SLO: two rungs in one reload
FREE_VARIANT_SPEEDUP = 1.5  # a no-accuracy-cost variant must be at least this much cheaper to be worth a reload


def _allowed_variant(variant: str, ctx: Context) -> bool:
    info = ctx.variants.get(variant)
    return info is not None and info.top1 >= ctx.objective.accuracy_floor


def _cost(ctx: Context, variant: str) -> float:
    info = ctx.variants.get(variant)
    return info.latency_ms_b32 if info else float("inf")


def max_instances(ctx: Context) -> int:
    # On the CPU each instance needs at least one core of its own; more only oversubscribes.
    return min(ctx.max_instances, ctx.cores) if ctx.kind == "cpu" else ctx.max_instances


# -- guard rails ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuardConfig:
    upscale_delay_s: float = 4.0  # pressure must persist this long before capacity is added
    downscale_delay_s: float = 20.0  # light load must persist this long before capacity is removed
    cooldown_s: float = 6.0  # after any action, before the next one (Triton reload + fresh metrics)
    max_instance_step: int = 1
    max_delay_factor: float = 2.0


@dataclass(frozen=True)
class GuardState:
    direction: str | None = None
    since_s: float | None = None
    last_action_s: float | None = None


def guard(
    proposal: Proposal | None,
    current: ServingConfig,
    w: Window,
    ctx: Context,
    g: GuardConfig,
    state: GuardState,
    now_s: float,
) -> tuple[Decision, GuardState]:
    """Clamp a proposal to the hardware and step limits and hold it until its direction has persisted."""
    if proposal is None:
        return Decision("hold", "steady", "within the SLO band"), replace(state, direction=None, since_s=None)
    since = state.since_s if state.direction == proposal.direction and state.since_s is not None else now_s
    state = replace(state, direction=proposal.direction, since_s=since)
    delay = {"up": g.upscale_delay_s, "down": g.downscale_delay_s}.get(proposal.direction, 0.0)
    if now_s - since < delay:
        return Decision(
            "hold",
            f"waiting-{proposal.direction}-delay",
            f"{proposal.rule} proposed for {now_s - since:.1f}/{delay:g} s",
        ), state
    if state.last_action_s is not None and now_s - state.last_action_s < g.cooldown_s:
        return Decision(
            "hold", "cooldown", f"{now_s - state.last_action_s:.1f}/{g.cooldown_s:g} s since last action"
        ), state
    target = clamp(proposal.config, current, w, ctx, g)
    if target == current:
        return Decision("hold", "at-limit", f"{proposal.rule} blocked by bounds: {proposal.reason}"), state
    return Decision("apply", proposal.rule, proposal.reason, target), state


def clamp(target: ServingConfig, current: ServingConfig, w: Window, ctx: Context, g: GuardConfig) -> ServingConfig:
    hi = max_instances(ctx)
    step = max(-g.max_instance_step, min(g.max_instance_step, target.instances - current.instances))
    instances = max(ctx.min_instances, min(hi, current.instances + step))
    if ctx.kind == "gpu" and instances > current.instances and ctx.gpu_memory_per_instance_bytes:
        free = w.gpu_memory_free_bytes if w.gpu_memory_free_bytes is not None else 0.0
        affordable = int(free // ctx.gpu_memory_per_instance_bytes)
        instances = min(instances, current.instances + max(affordable, 0))
    threads = max(1, ctx.cores // instances) if ctx.kind == "cpu" else target.threads
    delay = max(0, min(target.max_queue_delay_us, ctx.delay_cap_us))
    if current.max_queue_delay_us and delay > current.max_queue_delay_us * g.max_delay_factor:
        delay = int(current.max_queue_delay_us * g.max_delay_factor)
    variant = target.variant
    info = ctx.variants.get(variant)
    if info is None or info.top1 < ctx.objective.accuracy_floor:
        variant = current.variant  # the floor is a hard limit, whatever a policy says
    sizes = tuple(b for b in target.preferred_batch_sizes if b <= ctx.max_batch_size)
    return replace(
        target,
        instances=instances,
        threads=threads,
        max_queue_delay_us=delay,
        variant=variant,
        preferred_batch_sizes=sizes,
    )


# -- the controller ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pending:
    before: ServingConfig
    after: ServingConfig
    rule: str
    applied_s: float
    before_window: Window
    windows: int = 0
    better: int = 0
    worse: int = 0
    idle: int = 0
    drain_s: float = 0.0  # how long the replaced copy needs for the backlog it keeps (its own queue)


@dataclass(frozen=True)
class ControllerConfig:
    guards: GuardConfig = field(default_factory=GuardConfig)
    verify_windows: int = 3  # windows after the cool-down over which an action is judged
    tabu_s: float = 120.0  # a rolled-back config is not proposed again for this long
    regression_tolerance: float = 0.10


@dataclass(frozen=True)
class ControllerState:
    guard: GuardState = field(default_factory=GuardState)
    pending: Pending | None = None
    last_good: ServingConfig | None = None
    tabu: tuple[tuple[ServingConfig, float], ...] = ()
    retry: Decision | None = None  # a rollback or re-apply Triton refused: reissued after the cool-down
    actions: int = 0
    rollbacks: int = 0
    restarts: int = 0


def step(
    w: Window,
    current: ServingConfig,
    state: ControllerState,
    ctx: Context,
    policy: Policy,
    cfg: ControllerConfig,
    now_s: float,
) -> tuple[Decision, ControllerState]:
    """One controller tick. The caller applies ``decision.config`` when ``decision.changes`` and then reports the
    outcome with :func:`applied` or :func:`apply_failed`."""
    last_action = state.guard.last_action_s
    if last_action is not None and now_s - last_action < SUMMARY_WINDOW_S:
        # Triton's p99 still mixes in requests from before the last action: judge by the window's own means.
        w = replace(w, p99_latency_ms=None, p50_latency_ms=None, p99_queue_ms=None)
    if state.retry is not None:
        if last_action is not None and now_s - last_action < cfg.guards.cooldown_s:
            return Decision("hold", "retry-wait", f"{state.retry.rule} refused; retrying after the cool-down"), state
        return replace(state.retry, reason=f"retry: {state.retry.reason}"), replace(state, retry=None)
    if not _allowed_variant(current.variant, ctx):
        target = replace(current, variant=ctx.most_accurate().name)
        if state.last_good is None or not _allowed_variant(state.last_good.variant, ctx):
            state = replace(state, last_good=target)
        why = f"{current.variant!r} is below the accuracy floor {ctx.objective.accuracy_floor:.4f} or unknown"
        return Decision("apply", "enforce-accuracy-floor", why, target), state
    if state.last_good is None:
        state = replace(state, last_good=current)
    if w.restarted or w.model_missing:
        target = state.last_good or current
        why = "counters went backwards: Triton restarted" if w.restarted else "the model is not loaded"
        return (
            Decision("reapply", "triton-restarted", f"{why}; re-applying the last good config", target),
            replace(state, pending=None, restarts=state.restarts + 1, guard=GuardState(last_action_s=now_s)),
        )
    if w.requests == 0 and w.pending_requests > 0:
        # Requests waiting and none finished in a whole window is no light load: Triton is stuck (2.51's Python
        # backend has gone on answering /metrics after aborting on heap corruption). A reload cannot fix that.
        return Decision(
            "hold",
            "stalled",
            f"{w.pending_requests:.0f} requests pending and none completed in {w.interval_s:.1f} s: Triton looks "
            "stuck; check its log and restart it (`tritune serve` restarts a server that exits)",
        ), state

    if w.versions > 1 and last_action is not None and now_s - last_action < DRAIN_WAIT_S:
        # The old variant still drains its queue beside the new one (both on the same cores): its windows say
        # nothing about the new config, and a reload now has crashed Triton 2.51 (signal 11) in our runs.
        return Decision(
            "hold", "draining", f"the previous variant still drains its queue ({w.versions} versions)"
        ), state
    if state.pending is not None and now_s - state.pending.applied_s < state.pending.drain_s:
        # A reload of the same version leaves no second series to watch: the replaced copy keeps the requests
        # queued before the switch and serves them at its old rate. Another reload before they are gone stacked
        # three copies on the same cores and corrupted tritonserver's heap (2.51: malloc_consolidate, signal 6/11).
        p = state.pending
        return Decision(
            "hold",
            "draining",
            f"the replaced copy still serves the {p.before_window.pending_requests:.0f} requests queued before "
            f"{p.rule} (~{p.drain_s:.0f} s)",
        ), state
    if state.pending is not None:
        p = state.pending
        if now_s - p.applied_s < cfg.guards.cooldown_s or w.start_s < p.applied_s:
            return Decision("hold", "verifying", f"{p.rule} applied {now_s - p.applied_s:.1f} s ago"), state
        verdict_now = judge(p.before_window, w, p, ctx, cfg)
        p = replace(
            p,
            windows=p.windows + 1,
            better=p.better + (verdict_now == "better"),
            worse=p.worse + (verdict_now == "worse"),
            idle=p.idle + (verdict_now == "idle"),
        )
        if p.windows < cfg.verify_windows and not (p.rule in DOWN_RULES and verdict_now == "worse"):
            return Decision(
                "hold", "verifying", f"{p.rule}: window {p.windows}/{cfg.verify_windows} {verdict_now}"
            ), replace(state, pending=p)
        # A capacity-adding action must show an improvement; one that gives capacity back must not hurt.
        # (if the load went away meanwhile there is no evidence either way: keep it)
        # A dominating variant (as accurate, much cheaper) is kept unless the windows say otherwise.
        if p.rule in DOWN_RULES:
            kept = p.worse == 0
        elif p.rule in FREE_RULES:
            kept = p.better >= p.worse
        else:
            kept = p.better > p.worse or p.idle == p.windows
        summary = {
            "rule": p.rule,
            "windows": p.windows,
            "better": p.better,
            "worse": p.worse,
            "before": p.before_window.summary(),
            "after": w.summary(),
        }
        if not kept:
            tabu = (*[(c, until) for c, until in state.tabu if until > now_s], (p.after, now_s + cfg.tabu_s))
            return (
                Decision(
                    "rollback",
                    "rollback",
                    f"{p.rule} did not improve the objective "
                    f"({p.better} better, {p.worse} worse of {p.windows} windows); back to the last good config",
                    p.before,
                    {**summary, "outcome": "rolled-back"},
                ),
                replace(
                    state, pending=None, tabu=tabu, rollbacks=state.rollbacks + 1, guard=GuardState(last_action_s=now_s)
                ),
            )
        state = replace(state, pending=None, last_good=current)
        decision, state = _propose(w, current, state, ctx, policy, cfg, now_s)
        return replace(decision, verified={**summary, "outcome": "kept"}), state

    return _propose(w, current, state, ctx, policy, cfg, now_s)


def _propose(w, current, state, ctx, policy, cfg, now_s):
    tabu = {c for c, until in state.tabu if until > now_s}

    def allowed(target: ServingConfig) -> bool:
        clamped = clamp(target, current, w, ctx, cfg.guards)
        return clamped != current and clamped not in tabu

    proposal = policy.propose(w, current, ctx, allowed)
    decision, gstate = guard(proposal, current, w, ctx, cfg.guards, state.guard, now_s)
    return decision, replace(state, guard=gstate)


DRAIN_WAIT_S = 45.0  # hold at most this long after an action for an old version to finish draining
DOWN_RULES = ("restore-variant", "remove-instance", "shorten-queue-delay")
FREE_RULES = ("free-faster-variant", "provision-headroom")  # kept unless the windows say worse
SUMMARY_WINDOW_S = 60.0  # Triton 2.51 keeps its latency summaries over about this long


def judge(before: Window, after: Window, p: Pending, ctx: Context, cfg: ControllerConfig) -> str:
    """'better', 'worse' or 'same' for one window after an action, against the window that triggered it.

    Under a backlog, latency measures the backlog, not the config: the service rate and whether the backlog
    drains are the evidence. Without one, latency is.
    """
    tol = cfg.regression_tolerance
    if after.requests == 0 and after.pending_requests == 0:
        return "idle"
    if after.failure_rate > before.failure_rate + 0.01:
        return "worse"
    if before.requests == 0 and before.pending_requests == 0:
        # Taken with no traffic (a dominating variant): the first loaded window is no evidence against it.
        return "same"
    if p.rule == "provision-headroom" and before.pending_requests <= 4 * max(p.before.instances, 1):
        # Capacity added ahead of load: a batching delay may cost a light load a fraction of a millisecond, which
        # is no regression; only missing the SLO is.
        return "same" if slo_met(after, ctx.objective) else "worse"
    if p.rule in DOWN_RULES:  # gave capacity back: the SLO must still hold with room to spare
        over = after.avg_latency_ms > ctx.objective.p99_latency_ms * 0.5
        backlog = after.pending_requests > 4 * max(p.after.instances, 1)
        return "worse" if over or backlog else "same"
    # Throughput follows the offered load; it measures capacity only while requests wait (a backlog).
    saturated = before.pending_requests > 4 * max(p.before.instances, 1) or before.avg_queue_ms > before.avg_compute_ms
    more = saturated and after.throughput_infer_per_s > before.throughput_infer_per_s * (1 + tol / 2)
    less = saturated and after.throughput_infer_per_s < before.throughput_infer_per_s * (1 - tol)
    draining = before.pending_requests > 0 and after.pending_requests < before.pending_requests * 0.8
    still_backlogged = after.pending_requests > 4 * max(p.after.instances, 1)
    if saturated and still_backlogged and not draining:
        # Offered load above both configs' capacity: latency only says how long the backlog has grown, so the
        # service rate alone tells the configs apart.
        return "better" if more else "worse" if less else "same"
    faster = after.avg_latency_ms < before.avg_latency_ms * (1 - tol)
    # a longer batching delay the action chose may cost each request up to that delay: that alone is no regression
    added_delay_ms = max(0, p.after.max_queue_delay_us - p.before.max_queue_delay_us) / 1000
    slower = after.avg_latency_ms > before.avg_latency_ms * (1 + tol) + added_delay_ms
    if (
        more
        or draining
        or (faster and not less)
        or (slo_met(after, ctx.objective) and not slo_met(before, ctx.objective))
    ):
        return "better"
    if less or (slower and not more):
        return "worse"
    return "same"


def applied(
    state: ControllerState, decision: Decision, before: ServingConfig, w: Window, now_s: float
) -> ControllerState:
    """Record a successful apply: start verifying it (reapply/rollback need no verification)."""
    guard_state = GuardState(last_action_s=now_s)
    if decision.action == "apply":
        backlog = w.pending_requests > 4 * max(before.instances, 1)
        drain_s = min(DRAIN_WAIT_S, w.pending_requests / max(w.throughput_infer_per_s, 1.0)) if backlog else 0.0
        pending = Pending(
            before=before, after=decision.config, rule=decision.rule, applied_s=now_s, before_window=w, drain_s=drain_s
        )
        return replace(state, pending=pending, actions=state.actions + 1, guard=guard_state)
    return replace(
        state,
        pending=None,
        actions=state.actions + 1,
        guard=guard_state,
        last_good=decision.config if decision.action in ("rollback", "reapply") else state.last_good,
    )


def apply_failed(state: ControllerState, decision: Decision, now_s: float, cfg: ControllerConfig) -> ControllerState:
    """Triton refused the load and kept the old config: make a new target tabu and carry on. A failed re-apply or
    rollback targets a known good config: it is retried, not banned."""
    tabu = tuple((c, until) for c, until in state.tabu if until > now_s)
    if decision.action == "apply" and decision.config is not None:
        tabu = (*tabu, (decision.config, now_s + cfg.tabu_s))
    retry = decision if decision.action in ("rollback", "reapply") else None
    return replace(
        state,
        pending=None,
        tabu=tabu,
        retry=retry,
        rollbacks=state.rollbacks + 1,
        guard=GuardState(last_action_s=now_s),
    )
