"""What a metrics window says: pressure (and of which kind), light load, how busy the instances are, a backlog,
and whether the SLO held."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.metrics import Window
from orchestrator.policy.types import Context, Objective, PressureKind
from tritune import slo
from tritune.serving import ServingConfig

# Pending requests per instance beyond which requests wait for an instance rather than for the batching timer: a
# backlog. Pressure, the verification of an action and the drain estimate all use this one threshold.
BACKLOG_PER_INSTANCE = 4.0
# ... and whose drain at the window's completion rate takes more than this share of the SLO: a request that arrives
# behind the backlog waits that long before its own turn. Counted alone, 4 pending per instance is under 3 ms of
# work at 4,800 requests/s (no reason to step down a variant) and 40 ms at 300 requests/s.
BACKLOG_DRAIN_SLO_SHARE = 0.25
SERVICE_TAIL = 2.0  # a window's p99 service time, as a multiple of its mean (the batch size varies, not the work)
SHARED_CORE_FREE_SHARE = 0.25  # a core another process shares counts for Triton while this much of it is free


@dataclass(frozen=True)
class Thresholds:
    # Beside a p99 over the SLO, a mean above half this share of it makes the miss pressure (not one stray request);
    # without a p99, a queue's mean wait times 1/this stands in for its tail (p99_from_means_ms).
    avg_fraction_over: float = 0.3
    p99_fraction_light: float = 0.5  # below this share of the SLO (and low utilization) the load is light
    utilization_over: float = 0.9
    utilization_light: float = 0.5
    # A more accurate variant must be predicted to run below this busy share: with margin where the prediction
    # rests on the build's cost ratio (which misjudges served capacity by up to ~2×) ...
    restore_target_utilization: float = 0.6
    # ... and with a smaller one where the variant's own service rate was measured while it served (at a base load
    # it held within the SLO, it was ~70% busy on two cores shared with the client).
    restore_learned_utilization: float = 0.8
    backlog_per_instance: float = BACKLOG_PER_INSTANCE
    backlog_drain_slo_share: float = BACKLOG_DRAIN_SLO_SHARE


@dataclass(frozen=True)
class Pressure:
    kind: PressureKind
    reason: str  # for the decision log: the figure that crossed its threshold


def has_backlog(pending_requests: float, instances: int, per_instance: float = BACKLOG_PER_INSTANCE) -> bool:
    return pending_requests > per_instance * max(instances, 1)


def backlog_drain_ms(w: Window) -> float:
    """How long the window's pending requests take to drain at the rate it completed requests (inf: none did). In a
    fleet ``pending_requests`` is the worst replica's, drained at its share of the fleet's rate."""
    if w.pending_requests <= 0:
        return 0.0
    rate = (w.request_rate_per_s or w.throughput_infer_per_s / max(w.avg_batch, 1.0)) / max(w.replicas, 1)
    return 1000.0 * w.pending_requests / rate if rate > 0 else float("inf")


def backlog_pressure(
    w: Window,
    instances: int,
    slo_ms: float,
    per_instance: float = BACKLOG_PER_INSTANCE,
    drain_slo_share: float = BACKLOG_DRAIN_SLO_SHARE,
) -> bool:
    """Requests wait for an instance (more pending than the instances take) and the wait is long against the SLO."""
    return has_backlog(w.pending_requests, instances, per_instance) and backlog_drain_ms(w) > drain_slo_share * slo_ms


def usable_cores(ctx: Context, w: Window | None = None) -> int:
    """The cores Triton really has: ``ctx.cores`` less what the machine's other processes took in the window.

    A core another process keeps busy is no core of Triton's: giving each instance "its own" core there puts two
    instances (or two ORT threads) on one core, where they contend for it instead of adding capacity. A core counts
    while over a quarter of it is free (``SHARED_CORE_FREE_SHARE``): a load generator on the same machine that takes
    half a core leaves Triton both, a busy loop that takes a whole one does not. Unmeasured (a Triton on another
    host, a GPU): every configured core.
    """
    if ctx.kind != "cpu" or w is None or w.cpu_other_cores is None:
        return ctx.cores
    machine = w.cpu_machine_cores or ctx.cores  # the neighbours' share is of the machine's cores, not of --cores
    free = min(ctx.cores, machine - w.cpu_other_cores)
    return max(1, min(ctx.cores, int(free + 1 - SHARED_CORE_FREE_SHARE)))


def instance_cap(ctx: Context, w: Window | None = None) -> int:
    """On the CPU each instance needs at least one usable core of its own; more only oversubscribes."""
    return min(ctx.max_instances, usable_cores(ctx, w)) if ctx.kind == "cpu" else ctx.max_instances


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
    return w.busy_s / max(w.interval_s * config.instances * max(w.replicas, 1), 1e-9)


def slo_met(w: Window, objective: Objective) -> bool:
    """Triton's side of :func:`tritune.slo.slo_met`: its p99 where the summaries give one, else the mean."""
    p99 = w.p99_latency_ms if w.p99_latency_ms is not None else w.avg_latency_ms
    return slo.slo_met(p99, w.failures, objective.p99_latency_ms)


def pressure(w: Window, config: ServingConfig, ctx: Context, t: Thresholds) -> Pressure | None:
    """Why this window is under pressure, or None."""
    slo_ms = ctx.objective.p99_latency_ms
    if w.requests == 0 and w.pending_requests == 0:
        return None
    # A p99 over the SLO counts while the mean is not tiny (one stray request must not trigger a reload); the mean
    # is the end-to-end one where the p99 is, so that what clients wait outside Triton counts too.
    mean_ms = w.e2e_avg_latency_ms if w.e2e_avg_latency_ms is not None else w.avg_latency_ms
    if w.p99_latency_ms is not None and w.p99_latency_ms > slo_ms and mean_ms > t.avg_fraction_over * slo_ms / 2:
        return Pressure(PressureKind.P99, f"p99 {w.p99_latency_ms:.1f} ms > SLO {slo_ms:g} ms")
    # The mean stands in for a p99 only where the window has none of its own: Triton's summaries lag by up to a
    # minute (and are set aside after a reload), while the front door's histogram measures this window's requests.
    # Beside a measured p99 the mean says nothing more, and it would misjudge requests whose service time dominates
    # their latency (batch-8 requests: mean near p99, both well inside the SLO).
    if w.e2e_p99_latency_ms is None and (estimate := p99_from_means_ms(w, config, t)) > slo_ms:
        return Pressure(
            PressureKind.MEAN_LATENCY,
            f"mean latency {w.avg_latency_ms:.1f} ms ({w.avg_queue_ms:.1f} queued): p99 estimated "
            f"{estimate:.1f} ms > SLO {slo_ms:g} ms",
        )
    if backlog_pressure(w, config.instances, slo_ms, t.backlog_per_instance, t.backlog_drain_slo_share):
        return Pressure(
            PressureKind.BACKLOG,
            f"{w.pending_requests:.0f} requests pending ({backlog_drain_ms(w):.0f} ms of work at "
            f"{w.request_rate_per_s:.0f} requests/s)",
        )
    # Instances busy all the time leave no headroom: the queue grows with the next rise in load, and the client
    # (sharing the cores on CPU) sees it before Triton's own means do. Execution time only, not the machine's CPU
    # use: a saturated CPU alone is no reason for a reload.
    busy = busy_share(w, config)
    if w.requests and busy >= t.utilization_over:
        return Pressure(PressureKind.BUSY, f"instances {min(busy, 1.0):.0%} busy")
    return None


def p99_from_means_ms(w: Window, config: ServingConfig, t: Thresholds) -> float:
    """A p99 from the window's mean queueing and service times, for windows without a p99 of their own.

    Each part has a tail of its own. Service (execution and the backend's handling) varies with the batch size
    only: ``SERVICE_TAIL`` × its mean. The batching timer bounds the wait it causes: at most the delay. A wait
    beyond the timer is for a busy instance, and queues like that have long tails: 1/``avg_fraction_over`` × its
    mean (the multiple the whole mean was once held to). At a tight SLO, where a batch's execution is a large share
    of the budget, holding the whole mean to a share of the SLO reads a config that holds the load as pressure.
    """
    delay_ms = config.max_queue_delay_us / 1000 if config.dynamic_batching else 0.0
    timer_ms = min(w.avg_queue_ms, delay_ms)
    waiting_ms = w.avg_queue_ms - timer_ms
    service_ms = max(0.0, w.avg_latency_ms - w.avg_queue_ms)
    return SERVICE_TAIL * service_ms + min(2 * timer_ms, delay_ms) + waiting_ms / t.avg_fraction_over


def light(w: Window, config: ServingConfig, ctx: Context, t: Thresholds) -> bool:
    """Plenty of slack. Judged on service time (latency less queueing): under light load a request waits out the
    batching delay, which the policy itself chose and can shorten."""
    slo_ms = ctx.objective.p99_latency_ms
    p99 = w.p99_latency_ms if w.p99_latency_ms is not None else w.avg_latency_ms
    service_ms = w.avg_latency_ms - min(w.avg_queue_ms, config.max_queue_delay_us / 1000)
    return (
        w.failures == 0
        and service_ms < t.p99_fraction_light * slo_ms / 2
        and p99 < t.p99_fraction_light * slo_ms
        and utilization(w, config) < t.utilization_light
    )
