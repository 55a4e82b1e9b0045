"""Guard rails around any policy: hardware bounds (instances × threads ≤ cores on the CPU, free GPU memory), step
limits, separate up and down delays (a proposal must persist: an up proposal over a span its quiet windows do not
outnumber, or at once where a backlog stands in two pressed windows in a row and grows or keeps the mean far over
the SLO), a cool-down after each action,
and the accuracy floor as a hard limit.

:class:`GuardConfig`'s defaults are the only ones: the orchestrate command's options and the benchmarks read them
from here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from orchestrator.metrics import Window
from orchestrator.policy.signals import backlog_pressure, has_backlog, instance_cap, usable_cores
from orchestrator.policy.types import Action, Context, Decision, Direction, Proposal, Rule
from tritune.serving import ServingConfig

# A backlog at least this much larger than the last pressed window's, or a mean latency this many times the SLO
# on a standing backlog: the load outruns the config, act now.
GROWING_BACKLOG = 1.5
FAR_OVER_SLO = 2.0


@dataclass(frozen=True)
class GuardConfig:
    upscale_delay_s: float = 4.0  # pressure must persist this long before capacity is added
    downscale_delay_s: float = 20.0  # light load must persist this long before capacity is removed
    cooldown_s: float = 6.0  # after any action, before the next one (Triton reload + fresh metrics)
    max_instance_step: int = 1
    max_delay_factor: float = 2.0

    def delay_s(self, direction: Direction) -> float:
        return {Direction.UP: self.upscale_delay_s, Direction.DOWN: self.downscale_delay_s}.get(direction, 0.0)


@dataclass(frozen=True)
class GuardState:
    direction: Direction | None = None
    since_s: float | None = None
    last_action_s: float | None = None
    # Evidence over the span of an up proposal: windows that proposed it and windows that proposed nothing. Under
    # an overload, windows alternate between "pressure" and "within the SLO band" (a drained queue, a lagging
    # summary); resetting on each quiet window restarted the delay again and again while clients saw p99s in the
    # hundreds of ms. The span ends only when its quiet windows outnumber its pressed ones.
    pressed: int = 0
    quiet: int = 0
    # Pending requests in the span's last pressed window: a backlog that grows from one pressed window to the next
    # is an overload, not a stall of the machine (a stall's queue drains), and skips the rest of the delay.
    last_pending: float | None = None


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
        steady = Decision(Action.HOLD, Rule.STEADY, "within the SLO band")
        if state.direction == Direction.UP and state.quiet + 1 <= state.pressed:
            return steady, replace(state, quiet=state.quiet + 1)  # one quiet window does not end an overload's span
        return steady, replace(state, direction=None, since_s=None, pressed=0, quiet=0, last_pending=None)
    same = state.direction == proposal.direction and state.since_s is not None
    since = state.since_s if same else now_s
    # Two pressed windows in a row, each with a backlog, the second's larger by half or its mean far over the SLO:
    # the load outruns the config. A stall of the machine drains its queue in the next window. (The client may
    # cap what is in flight, so a standing backlog need not grow: then the mean says it.)
    growing = (
        proposal.direction == Direction.UP
        and same
        and state.last_pending is not None
        and has_backlog(state.last_pending, current.instances)
        and backlog_pressure(w, current.instances, ctx.objective.p99_latency_ms)
        and (
            w.pending_requests > state.last_pending * GROWING_BACKLOG
            or w.avg_latency_ms > FAR_OVER_SLO * ctx.objective.p99_latency_ms
        )
    )
    state = replace(
        state,
        direction=proposal.direction,
        since_s=since,
        pressed=(state.pressed if same else 0) + 1,
        quiet=state.quiet if same else 0,
        last_pending=w.pending_requests,
    )
    delay = g.delay_s(proposal.direction)
    if now_s - since < delay and not growing:
        return Decision(
            Action.HOLD,
            f"waiting-{proposal.direction}-delay",
            f"{proposal.rule} proposed for {now_s - since:.1f}/{delay:g} s"
            + (f" ({state.pressed} of {state.pressed + state.quiet} windows)" if state.quiet else ""),
        ), state
    if state.last_action_s is not None and now_s - state.last_action_s < g.cooldown_s:
        return Decision(
            Action.HOLD, Rule.COOLDOWN, f"{now_s - state.last_action_s:.1f}/{g.cooldown_s:g} s since last action"
        ), state
    target = clamp(proposal.config, current, w, ctx, g)
    if target == current:
        return Decision(Action.HOLD, Rule.AT_LIMIT, f"{proposal.rule} blocked by bounds: {proposal.reason}"), state
    return Decision(Action.APPLY, proposal.rule, proposal.reason, target, direction=proposal.direction), state


def clamp(target: ServingConfig, current: ServingConfig, w: Window, ctx: Context, g: GuardConfig) -> ServingConfig:
    step = max(-g.max_instance_step, min(g.max_instance_step, target.instances - current.instances))
    # A neighbour's cap bounds what is added, it never takes away an instance a proposal keeps: that would be a
    # silent step down inside an up action (a down rule removes instances, verified as such).
    cap = max(instance_cap(ctx, w), min(current.instances, instance_cap(ctx)))
    instances = max(ctx.min_instances, min(cap, current.instances + step))
    if ctx.kind == "gpu" and instances > current.instances and ctx.gpu_memory_per_instance_bytes:
        free = w.gpu_memory_free_bytes if w.gpu_memory_free_bytes is not None else 0.0
        affordable = int(free // ctx.gpu_memory_per_instance_bytes)
        instances = min(instances, current.instances + max(affordable, 0))
    threads = max(1, usable_cores(ctx, w) // instances) if ctx.kind == "cpu" else target.threads
    delay = max(0, min(target.max_queue_delay_us, ctx.delay_cap_us))
    if current.max_queue_delay_us and delay > current.max_queue_delay_us * g.max_delay_factor:
        delay = int(current.max_queue_delay_us * g.max_delay_factor)
    variant = target.variant if ctx.allows(target.variant) else current.variant  # the floor is a hard limit
    sizes = tuple(b for b in target.preferred_batch_sizes if b <= ctx.max_batch_size)
    # A model without a batch dimension (max_batch_size 0) cannot batch: Triton refuses dynamic batching for it.
    batching = target.dynamic_batching and ctx.max_batch_size > 0
    return replace(
        target,
        instances=instances,
        threads=threads,
        max_queue_delay_us=delay if batching else 0,
        variant=variant,
        preferred_batch_sizes=sizes if batching else (),
        dynamic_batching=batching,
    )
