"""The controller: one tick of :func:`step` turns a window, the current config and the state into a decision.

It re-applies the last good config after a Triton restart, holds while a replaced copy drains, verifies each
action over the next windows and rolls back a regression (the rejected config stays tabu for a while), and never
takes two actions at once. The caller applies ``decision.config`` and reports back with :func:`applied` or
:func:`apply_failed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from orchestrator.metrics import Window
from orchestrator.policy.guards import GuardConfig, GuardState, clamp, guard
from orchestrator.policy.profile import ServiceProfile
from orchestrator.policy.rules import Policy
from orchestrator.policy.signals import Thresholds, has_backlog, pressure, slo_met
from orchestrator.policy.types import Action, Context, Decision, Direction, Rule, Verdict
from tritune.serving import ServingConfig

DRAIN_WAIT_S = 45.0  # hold at most this long after an action for an old version to finish draining
SUMMARY_WINDOW_S = 60.0  # Triton 2.51 keeps its latency summaries over about this long
MIN_MEASURED_CORES = 0.1  # below this Triton's CPU time is too small a count to divide by
CPU_BOUND_SHARE = 0.9  # the machine's cores this busy in all: no CPU left that Triton could have had


@dataclass(frozen=True)
class Pending:
    """An action being verified."""

    before: ServingConfig
    after: ServingConfig
    rule: str
    applied_s: float
    before_window: Window
    direction: Direction = Direction.UP
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
    profile: ServiceProfile = field(default_factory=ServiceProfile)  # service rates learned from steady windows


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
        # Triton's p99 still mixes in requests from before the last action: judge by the window's own means, or by
        # the front door's p99, which is this window's own (its histogram's bucket deltas).
        p99 = w.p99_latency_ms if w.e2e_p99_latency_ms is not None else None
        w = replace(w, p99_latency_ms=p99, p50_latency_ms=None, p99_queue_ms=None, triton_p99_latency_ms=None)
    if state.retry is not None:
        if last_action is not None and now_s - last_action < cfg.guards.cooldown_s:
            return Decision(
                Action.HOLD, Rule.RETRY_WAIT, f"{state.retry.rule} refused; retrying after the cool-down"
            ), state
        return replace(state.retry, reason=f"retry: {state.retry.reason}"), replace(state, retry=None)
    if not ctx.allows(current.variant):
        target = replace(current, variant=ctx.most_accurate().name)
        if state.last_good is None or not ctx.allows(state.last_good.variant):
            state = replace(state, last_good=target)
        why = f"{current.variant!r} is below the accuracy floor {ctx.objective.accuracy_floor:.4f} or unknown"
        return Decision(Action.APPLY, Rule.ENFORCE_ACCURACY_FLOOR, why, target), state
    if state.last_good is None:
        state = replace(state, last_good=current)
    if w.restarted or w.model_missing:
        target = state.last_good or current
        why = "counters went backwards: Triton restarted" if w.restarted else "the model is not loaded"
        return (
            Decision(Action.REAPPLY, Rule.TRITON_RESTARTED, f"{why}; re-applying the last good config", target),
            replace(state, pending=None, restarts=state.restarts + 1, guard=GuardState(last_action_s=now_s)),
        )
    if w.requests == 0 and w.pending_requests > 0:
        # Requests waiting and none finished in a whole window is no light load: Triton is stuck (2.51's Python
        # backend has gone on answering /metrics after aborting on heap corruption). A reload cannot fix that.
        return Decision(
            Action.HOLD,
            Rule.STALLED,
            f"{w.pending_requests:.0f} requests pending and none completed in {w.interval_s:.1f} s: Triton looks "
            "stuck; check its log and restart it (`tritune serve` restarts a server that exits)",
        ), state

    if w.versions <= 1 and (last_action is None or w.start_s >= last_action + cfg.guards.cooldown_s):
        # A steady window (no reload in it, no second version, past the cool-down's cold instances) measures the
        # served config's service rate.
        thresholds = getattr(policy, "thresholds", None) or Thresholds()
        strained = pressure(w, current, ctx, thresholds) is not None
        state = replace(state, profile=state.profile.observe(w, current, under_pressure=strained))
    if w.versions > 1 and last_action is not None and now_s - last_action < DRAIN_WAIT_S:
        # The old variant still drains its queue beside the new one (both on the same cores): its windows say
        # nothing about the new config, and a reload while two copies run risks Triton 2.51's abort (signal 11).
        return Decision(
            Action.HOLD, Rule.DRAINING, f"the previous variant still drains its queue ({w.versions} versions)"
        ), state
    if state.pending is not None and now_s - state.pending.applied_s < state.pending.drain_s:
        # A reload of the same version leaves no second series to watch: the replaced copy keeps the requests
        # queued before the switch and serves them at its old rate. Another reload before they are gone stacks
        # three copies on the same cores, which corrupts tritonserver 2.51's heap (malloc_consolidate, signal 6/11).
        p = state.pending
        return Decision(
            Action.HOLD,
            Rule.DRAINING,
            f"the replaced copy still serves the {p.before_window.pending_requests:.0f} requests queued before "
            f"{p.rule} (~{p.drain_s:.0f} s)",
        ), state
    if state.pending is not None:
        return _verify(w, current, state, ctx, policy, cfg, now_s)
    return _propose(w, current, state, ctx, policy, cfg, now_s)


def _verify(w, current, state, ctx, policy, cfg, now_s) -> tuple[Decision, ControllerState]:
    p = state.pending
    if now_s - p.applied_s < cfg.guards.cooldown_s or w.start_s < p.applied_s:
        return Decision(Action.HOLD, Rule.VERIFYING, f"{p.rule} applied {now_s - p.applied_s:.1f} s ago"), state
    verdict_now = judge(p.before_window, w, p, ctx, cfg)
    p = replace(
        p,
        windows=p.windows + 1,
        better=p.better + (verdict_now == Verdict.BETTER),
        worse=p.worse + (verdict_now == Verdict.WORSE),
        idle=p.idle + (verdict_now == Verdict.IDLE),
    )
    if p.windows < cfg.verify_windows and not (p.direction == Direction.DOWN and verdict_now == Verdict.WORSE):
        return Decision(
            Action.HOLD, Rule.VERIFYING, f"{p.rule}: window {p.windows}/{cfg.verify_windows} {verdict_now}"
        ), replace(state, pending=p)
    # A capacity-adding action must show an improvement; one that gives capacity back must not hurt.
    # (if the load went away meanwhile there is no evidence either way: keep it)
    # A dominating variant (as accurate, much cheaper) is kept unless the windows say otherwise.
    if p.direction == Direction.DOWN:
        kept = p.worse == 0
    elif p.direction == Direction.FREE:
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
                Action.ROLLBACK,
                Rule.ROLLBACK,
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


def _propose(w, current, state, ctx, policy, cfg, now_s) -> tuple[Decision, ControllerState]:
    tabu = {c for c, until in state.tabu if until > now_s}

    def allowed(target: ServingConfig) -> bool:
        clamped = clamp(target, current, w, ctx, cfg.guards)
        return clamped != current and clamped not in tabu

    proposal = policy.propose(w, current, replace(ctx, profile=state.profile), allowed)
    decision, gstate = guard(proposal, current, w, ctx, cfg.guards, state.guard, now_s)
    if proposal is None and decision.rule == Rule.STEADY:
        why = pressure(w, current, ctx, getattr(policy, "thresholds", Thresholds()))
        if why is not None:
            # Pressure and no rung left (the floor's fastest variant, instances at the cap, the delay at its cap, or
            # every candidate tabu): "within the SLO band" would read as a met SLO in the log and the metrics.
            decision = Decision(
                Action.HOLD,
                Rule.AT_LIMIT,
                f"{why.reason}, and nothing left to try within the accuracy floor, the cores and the delay cap",
            )
    return decision, replace(state, guard=gstate)


def judge(before: Window, after: Window, p: Pending, ctx: Context, cfg: ControllerConfig) -> Verdict:
    """One window after an action, against the window that triggered it.

    Under a backlog, latency measures the backlog, not the config: the service rate and whether the backlog
    drains are the evidence. Without one, latency is.
    """
    tol = cfg.regression_tolerance
    if after.requests == 0 and after.pending_requests == 0:
        return Verdict.IDLE
    if after.failure_rate > before.failure_rate + 0.01:
        return Verdict.WORSE
    if before.requests == 0 and before.pending_requests == 0:
        # Taken with no traffic (a dominating variant): the first loaded window is no evidence against it.
        return Verdict.SAME
    if p.rule == Rule.PROVISION_HEADROOM and not has_backlog(before.pending_requests, p.before.instances):
        # Capacity added ahead of load: a batching delay may cost a light load a fraction of a millisecond, which
        # is no regression; only missing the SLO is.
        return Verdict.SAME if slo_met(after, ctx.objective) else Verdict.WORSE
    if p.direction == Direction.DOWN:  # gave capacity back: the SLO must still hold with room to spare
        over = after.avg_latency_ms > ctx.objective.p99_latency_ms * 0.5
        backlog = has_backlog(after.pending_requests, p.after.instances)
        return Verdict.WORSE if over or backlog else Verdict.SAME
    # Throughput follows the offered load; it measures capacity only while requests wait (a backlog). On a shared
    # machine it also follows what the neighbours leave Triton: where Triton's own CPU time is known, a lower rate
    # counts against the action only if each core Triton had served less too, and more work per core counts for it
    # (batching and a cheaper variant do more with the same cores).
    saturated = has_backlog(before.pending_requests, p.before.instances) or before.avg_queue_ms > before.avg_compute_ms
    per_core_before, per_core_after = _per_core(before), _per_core(after)
    # only while the machine had no CPU to spare: an action that leaves idle CPU unused serves less by itself
    per_core_known = per_core_before is not None and per_core_after is not None and _cpu_bound(after)
    more = saturated and (
        after.throughput_infer_per_s > before.throughput_infer_per_s * (1 + tol / 2)
        or (per_core_known and per_core_after > per_core_before * (1 + tol))
    )
    less = (
        saturated
        and after.throughput_infer_per_s < before.throughput_infer_per_s * (1 - tol)
        and not (per_core_known and per_core_after >= per_core_before * (1 - tol))
    )
    draining = before.pending_requests > 0 and after.pending_requests < before.pending_requests * 0.8
    still_backlogged = has_backlog(after.pending_requests, p.after.instances)
    if saturated and still_backlogged and not draining:
        # Offered load above both configs' capacity: latency only says how long the backlog has grown, so the
        # service rate alone tells the configs apart.
        return Verdict.BETTER if more else Verdict.WORSE if less else Verdict.SAME
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
        return Verdict.BETTER
    if less or (slower and not more):
        return Verdict.WORSE
    return Verdict.SAME


def _cpu_bound(w: Window) -> bool:
    """Triton and the other processes together used (nearly) every core of the machine in the window."""
    if w.cpu_machine_cores is None or w.cpu_other_cores is None or w.cpu_triton_cores is None:
        return False
    return w.cpu_other_cores + w.cpu_triton_cores >= CPU_BOUND_SHARE * w.cpu_machine_cores


def _per_core(w: Window) -> float | None:
    """Inferences per second per core Triton used in the window; None when not measured or Triton barely ran."""
    if w.cpu_triton_cores is None or w.cpu_triton_cores < MIN_MEASURED_CORES:
        return None
    return w.throughput_infer_per_s / w.cpu_triton_cores


def applied(
    state: ControllerState, decision: Decision, before: ServingConfig, w: Window, now_s: float
) -> ControllerState:
    """Record a successful apply: start verifying it. A re-apply, a rollback and the accuracy floor's enforcement
    need no verification: the floor is a hard limit, and a rollback of its enforcement would serve below it."""
    guard_state = GuardState(last_action_s=now_s)
    if decision.action == Action.APPLY and decision.rule != Rule.ENFORCE_ACCURACY_FLOOR:
        drain_s = 0.0
        if has_backlog(w.pending_requests, before.instances):
            drain_s = min(DRAIN_WAIT_S, w.pending_requests / max(w.throughput_infer_per_s, 1.0))
        pending = Pending(
            before=before,
            after=decision.config,
            rule=decision.rule,
            applied_s=now_s,
            before_window=w,
            direction=decision.direction or Direction.UP,
            drain_s=drain_s,
        )
        return replace(state, pending=pending, actions=state.actions + 1, guard=guard_state)
    return replace(
        state,
        pending=None,
        actions=state.actions + 1,
        guard=guard_state,
        last_good=decision.config if decision.action in (Action.ROLLBACK, Action.REAPPLY) else state.last_good,
    )


def apply_failed(state: ControllerState, decision: Decision, now_s: float, cfg: ControllerConfig) -> ControllerState:
    """Triton refused the load and kept the old config: make a new target tabu and carry on. A failed re-apply or
    rollback targets a known good config: it is retried, not banned."""
    tabu = tuple((c, until) for c, until in state.tabu if until > now_s)
    if decision.action == Action.APPLY and decision.config is not None:
        tabu = (*tabu, (decision.config, now_s + cfg.tabu_s))
    retry = decision if decision.action in (Action.ROLLBACK, Action.REAPPLY) else None
    return replace(
        state,
        pending=None,
        tabu=tabu,
        retry=retry,
        rollbacks=state.rollbacks + 1,
        guard=GuardState(last_action_s=now_s),
    )
