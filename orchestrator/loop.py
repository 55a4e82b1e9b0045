"""The live loop: scrape → window → controller step → apply → decision log and own metrics.

All decisions are made by :func:`orchestrator.policy.step` (pure); this module only does I/O. Triton unreachable:
back off and keep state. Triton restarted: the window says so and the controller re-applies the last good config.
A rejected load: recorded, the target made tabu, the old config keeps serving.
"""

from __future__ import annotations

import functools
import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from orchestrator.capacity import CapacityEstimator, CapacityReading
from orchestrator.cpu import CpuSampler, CpuShare
from orchestrator.fleet import Fleet, FrontDoorLatency, LatencyWindow, with_end_to_end
from orchestrator.metrics import Snapshot, Window, parse_metrics, window
from orchestrator.nvml import NvmlReader, describe_notes, guard_inputs
from orchestrator.policy import (
    Action,
    Context,
    ControllerConfig,
    ControllerState,
    Decision,
    Policy,
    Rule,
    RulePolicy,
    Thresholds,
    applied,
    apply_failed,
    light,
    slo_met,
    standby_variant,
    step,
    usable_cores,
)
from tritune.apply import Applier
from tritune.errors import ServerUnavailableError, TrituneError
from tritune.serving import ServingConfig


def scrape(url: str, timeout_s: float = 5.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - our own Triton
            return resp.read().decode()
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise ServerUnavailableError(f"cannot scrape {url} ({exc}); is Triton running?") from exc


class OrchestratorMetrics:
    """The orchestrator's own Prometheus metrics."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.instances = Gauge("tritune_config_instances", "Instances of the public model", registry=r)
        self.threads = Gauge(
            "tritune_config_threads_per_instance", "ORT intra-op threads per instance (0=auto)", registry=r
        )
        self.batching = Gauge("tritune_config_dynamic_batching", "1 when dynamic batching is on", registry=r)
        self.delay = Gauge("tritune_config_max_queue_delay_us", "Dynamic batching max queue delay", registry=r)
        self.variant = Gauge("tritune_config_variant", "1 for the variant that serves", ["variant"], registry=r)
        self.accuracy = Gauge("tritune_served_top1", "Held-out top-1 of the variant that serves", registry=r)
        self.actions = Counter("tritune_actions", "Configs applied", ["rule"], registry=r)
        self.rollbacks = Counter("tritune_rollbacks", "Actions rolled back or refused", registry=r)
        self.apply_failures = Counter("tritune_apply_failures", "Loads Triton refused", registry=r)
        self.restarts = Counter("tritune_triton_restarts", "Triton restarts detected", registry=r)
        self.scrape_failures = Counter("tritune_scrape_failures", "Failed scrapes of Triton's metrics", registry=r)
        self.windows = Counter("tritune_windows", "Windows observed with traffic", registry=r)
        self.windows_ok = Counter("tritune_windows_slo_met", "Windows with traffic that met the SLO", registry=r)
        self.slo = Gauge("tritune_slo_p99_latency_ms", "The p99 latency SLO", registry=r)
        self.p99 = Gauge(
            "tritune_window_p99_latency_ms",
            "The p99 the policy judged: end to end through the front door where there is one, else Triton's summary",
            registry=r,
        )
        self.e2e_p99 = Gauge(
            "tritune_window_e2e_p99_latency_ms", "End-to-end p99 from the front door's histogram", registry=r
        )
        self.replicas = Gauge("tritune_fleet_replicas", "Replicas in the last window", registry=r)
        self.capacity_ratio = Gauge(
            "tritune_fleet_capacity_ratio",
            "Offered load over what the ready replicas hold within the SLO at the most accurate allowed variant "
            "(a replica autoscaler's target is 1)",
            registry=r,
        )
        self.replica_capacity = Gauge(
            "tritune_replica_capacity_infer_per_s",
            "Images/s one replica holds within the SLO at the most accurate allowed variant, by source",
            ["source", "variant"],
            registry=r,
        )
        self.replicas_needed = Gauge(
            "tritune_fleet_replicas_needed",
            "Replicas the offered load needs at the most accurate allowed variant (the HPA's AverageValue metric)",
            registry=r,
        )
        self.offered = Gauge("tritune_fleet_offered_infer_per_s", "Offered load, images/s", registry=r)
        self.mean = Gauge("tritune_window_avg_latency_ms", "Mean request latency in the last window", registry=r)
        self.throughput = Gauge("tritune_window_throughput_infer_per_s", "Images per second", registry=r)
        self.attainment = Gauge(
            "tritune_slo_attainment_ratio", "Share of windows with traffic meeting the SLO", registry=r
        )
        self.usable_cores = Gauge(
            "tritune_usable_cores",
            "CPU cores the policy gives Triton: --cores less what other processes take",
            registry=r,
        )

    def show_config(self, c: ServingConfig, ctx: Context) -> None:
        self.instances.set(c.instances)
        self.threads.set(c.threads)
        self.batching.set(1 if c.dynamic_batching else 0)
        self.delay.set(c.max_queue_delay_us)
        for name in ctx.variants:
            self.variant.labels(variant=name).set(1 if name == c.variant else 0)
        if c.variant in ctx.variants and ctx.variants[c.variant].measured:
            self.accuracy.set(ctx.variants[c.variant].top1)


def print_status(line: str) -> None:
    print(line, flush=True)


@dataclass
class LoopOptions:
    model: str = "cnn"
    metrics_url: str = "http://127.0.0.1:8002/metrics"
    interval_s: float = 0.5  # sub-second windows see a step within a tick or two; see docs/orchestrator.md
    max_backoff_s: float = 30.0
    decision_log: Path | None = None
    metrics_port: int = 0  # 0: do not serve the orchestrator's own metrics
    metrics_host: str = "127.0.0.1"
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    server_pids: tuple[int, ...] | None = None  # gpu: the tritonserver process(es), for NVML's per-process memory
    # A hold is logged with its window when its rule changes and otherwise at most this often: a run in which the
    # controller did nothing can be explained afterwards, at a few records a minute.
    hold_log_interval_s: float = 10.0
    status_interval_s: float = 0.0  # print a status line this often; 0: never
    # Keep the served variant's first rung down (orchestrator.policy.standby_variant) loaded and warm beside it at a
    # lower version, so that a step down is an unload and no reload; it costs that variant's instances in memory.
    standby: bool = True
    # a module-level function, not a lambda: the options travel to an orchestrator in another process by pickle
    status: Callable[[str], None] = field(default=print_status, repr=False)


class Orchestrator:
    def __init__(
        self,
        applier: Applier,
        ctx: Context,
        options: LoopOptions,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: OrchestratorMetrics | None = None,
        fleet: Fleet | None = None,
        front_door: FrontDoorLatency | None = None,
        capacity: CapacityEstimator | None = None,
    ):
        """``fleet``: tune N replicas (it is then also the applier); ``front_door``: read the SLO end to end."""
        self.applier, self.ctx, self.options = (fleet if fleet is not None else applier), ctx, options
        self.fleet, self.front_door = fleet, front_door
        self.capacity = capacity or CapacityEstimator()
        self.last_capacity: CapacityReading | None = None
        self._front_door_failed = False
        self._buckets_checked = False
        self._last_status_s = float("-inf")
        self._last_decision: str | None = None
        self.policy = policy or RulePolicy()
        self.clock = clock
        self.metrics = metrics or OrchestratorMetrics()
        self.metrics.slo.set(ctx.objective.p99_latency_ms)
        self.state = ControllerState()
        self.current: ServingConfig | None = None
        self.prev: Snapshot | None = None
        self.backoff_s = 0.0
        self.history: list[dict[str, Any]] = []  # every logged record, also kept in memory for callers
        self._seq = 0
        self._suspect_restart = False
        self._windows = self._windows_ok = 0  # windows with traffic, and those that met the SLO
        self._stop = threading.Event()
        if options.metrics_port:
            start_http_server(options.metrics_port, addr=options.metrics_host, registry=self.metrics.registry)
        self._last_rule: str | None = None
        self._last_hold_log_s = float("-inf")
        # A standby needs a ladder; it is loaded at the first steady window past the cool-down after each change.
        self._standby_due = options.standby and len(ctx.variants) > 1
        if self._standby_due:
            standby = functools.partial(standby_variant, ctx=ctx)
            if fleet is not None:
                fleet.standby = standby
            else:
                applier.standby = standby
        self._cpu: CpuSampler | None = None
        self._cpu_failed = False
        metrics_at = urllib.parse.urlsplit(options.metrics_url)
        if fleet is None and ctx.kind == "cpu" and metrics_at.hostname in ("127.0.0.1", "localhost", "::1"):
            # A Triton on this host: measure what the other processes leave it (orchestrator/cpu.py).
            pid = options.server_pids[0] if options.server_pids else None
            self._cpu = CpuSampler(metrics_port=metrics_at.port, pid=pid)
        self._nvml: NvmlReader | None = None
        self._nvml_notes = "ok"
        if ctx.kind == "gpu":
            self._nvml, reason = NvmlReader.open()
            if self._nvml is None:
                self.log("nvml-unavailable", reason=reason)

    # -- logging ---------------------------------------------------------------------------------------------------
    def log(self, event: str, **fields: Any) -> dict[str, Any]:
        self._seq += 1
        record = {
            "seq": self._seq,
            "time_utc": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "t_s": round(self.clock(), 3),
            "event": event,
            **fields,
        }
        self.history.append(record)
        if self.options.decision_log:
            path = Path(self.options.decision_log)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                fh.write(json.dumps(record, default=str) + "\n")
        return record

    # -- one tick --------------------------------------------------------------------------------------------------
    def tick(self) -> Decision | None:
        """Scrape once and act on the window since the previous scrape; None when there is no window yet."""
        now = self.clock()
        w = self._fleet_window(now) if self.fleet is not None else self._single_window(now)
        e2e = self._end_to_end()  # with every tick, so that each window has its own bucket deltas
        if w is None:
            return None
        w = with_end_to_end(w, e2e)
        self._observe(w)
        decision, self.state = step(w, self.current, self.state, self.ctx, self.policy, self.options.controller, now)
        if decision.rule == "stalled" and self._last_rule != "stalled":  # once per stall, not every tick
            self.log("triton-stalled", reason=decision.reason, window=w.summary())
        if decision.action == Action.HOLD and (
            decision.rule != self._last_rule or now - self._last_hold_log_s >= self.options.hold_log_interval_s
        ):
            self._last_hold_log_s = now
            self.log(
                "hold", rule=decision.rule, reason=decision.reason, config=self.current.describe(), window=w.summary()
            )
        self._last_rule = decision.rule
        if decision.verified:
            self.log("verified", **decision.verified)
        if decision.changes:
            self._act(decision, w, now)
            self._last_decision = f"{decision.action} {decision.rule}"
        elif decision.rule == Rule.STEADY:
            self._prepare_standby(now, w)
        self._status(w, now)
        return decision

    def _prepare_standby(self, now: float, w: Window | None = None) -> None:
        """Load the standby of the served variant at a light window past the cool-down. The load runs beside the
        served version, which stays as it is, but it takes a core for a second or two (sessions, warm-up): at a
        load that keeps the instances over half busy it would cost the served requests that core, so it waits for
        light load (``signals.light``). Under a standing peak the served variant then has no standby: its next
        step down is a reload, as without one."""
        last = self.state.guard.last_action_s
        if not self._standby_due or self.state.pending is not None or self.current is None:
            return
        thresholds = getattr(self.policy, "thresholds", None) or Thresholds()
        if w is not None and w.requests and not light(w, self.current, self.ctx, thresholds):
            return
        if last is not None and now - last < self.options.controller.guards.cooldown_s:
            return
        self._standby_due = False  # once per change: a failed load is logged and not retried until the next
        result = self.applier.prepare_standby()
        if result is None:
            return
        standby = standby_variant(self.current.variant, self.ctx) if self.current else None
        if result.ok:
            self.log("standby", variant=standby, served=self.current.describe(), apply_s=round(result.seconds, 3))
        else:
            self.log("standby-failed", variant=standby, error=result.error, apply_s=round(result.seconds, 3))
            # As after a failed change: Triton keeps the served copy after a failed load, and serving anything else
            # (or not answering) means it restarted while the standby loaded, which no scrape saw, since the tick
            # was waiting on the load. The next tick's restart check then re-applies the last good config.
            try:
                live = self.applier.current()[1]
            except TrituneError:
                live = None
            if live != self.current:
                self._suspect_restart = True

    def _status(self, w: Window, now: float) -> None:
        """One line every ``status_interval_s``: load, p99 end to end and on Triton, config, last decision."""
        every = self.options.status_interval_s
        if not every or now - self._last_status_s < every:
            return
        self._last_status_s = now
        triton_p99 = w.triton_p99_latency_ms if w.e2e_p99_latency_ms is not None else w.p99_latency_ms

        def ms(v: float | None) -> str:
            return f"{v:.1f} ms" if v is not None else "-"

        line = (
            f"[{datetime.now(UTC):%H:%M:%S}] {w.request_rate_per_s:.0f} req/s {w.throughput_infer_per_s:.0f} img/s"
            f" | p99 e2e {ms(w.e2e_p99_latency_ms)} triton {ms(triton_p99)} (SLO {self.ctx.objective.p99_latency_ms:g})"
            f" | {self.current.describe() if self.current else '?'}"
            + (f" × {w.replicas} replicas" if self.fleet is not None else "")
            + f" | last: {self._last_decision or 'none'}"
        )
        self.options.status(line)

    def _single_window(self, now: float) -> Window | None:
        try:
            text = scrape(self.options.metrics_url)
            try:
                snap = parse_metrics(text, now)
            except ValueError as exc:
                raise ServerUnavailableError(f"malformed metrics from {self.options.metrics_url} ({exc})") from exc
            self._start()
        except TrituneError as exc:
            self._unreachable(exc)
            return None
        if self._reachable_again():
            self._suspect_restart = True
        prev, self.prev = self.prev, snap
        cpu = self._cpu_sample()  # with every scrape, so that each window has its own
        if prev is None:
            return None
        w = window(prev, snap, self.options.model)
        if cpu is not None:
            w = replace(
                w,
                cpu_other_cores=cpu.other_cores,
                cpu_triton_cores=cpu.triton_cores,
                cpu_machine_cores=cpu.machine_cores,
            )
        w = self._with_nvml(w, now)
        if w.model_missing or w.restarted:
            self._suspect_restart = True
        elif self._suspect_restart:
            # Counters need not go backwards across a restart (a scrape during shutdown may miss the model):
            # what Triton serves now is the proof.
            try:
                live = self.applier.current()[1]
            except TrituneError:
                w = replace(w, model_missing=True)
            else:
                if live != self.current:
                    w = replace(w, restarted=True)
                else:
                    self._suspect_restart = False
        return w

    def _fleet_window(self, now: float) -> Window | None:
        """The fleet's window (orchestrator/fleet.py): a replica that restarts or stops answering drops out and gets
        the fleet config back when it answers, so the fleet window itself never says "restarted"."""
        try:
            self._start()
        except TrituneError as exc:
            self._unreachable(exc)
            return None
        self._reachable_again()
        return self.fleet.scrape(now)

    def _reachable_again(self) -> bool:
        """After a backoff: say so and end it; True when there was one."""
        if not self.backoff_s:
            return False
        self.log("triton-reachable-again")
        self.backoff_s = 0.0
        return True

    def _start(self) -> None:
        """Read what Triton serves at the first successful contact, and log the start."""
        if self.current is not None:
            return
        self.current = self.applier.current()[1]
        self.metrics.show_config(self.current, self.ctx)
        self.log(
            "start",
            config=self.current.describe(),
            slo_p99_ms=self.ctx.objective.p99_latency_ms,
            accuracy_floor=self.ctx.objective.accuracy_floor,
            replicas=sorted(self.fleet.replicas) if self.fleet is not None else None,
            front_door=self.front_door.metrics_url if self.front_door is not None else None,
        )

    def _unreachable(self, exc: TrituneError) -> None:
        self.metrics.scrape_failures.inc()
        self.backoff_s = min(max(self.backoff_s * 2, self.options.interval_s), self.options.max_backoff_s)
        self.log("triton-unreachable", error=str(exc), retry_in_s=self.backoff_s)

    def _end_to_end(self) -> LatencyWindow | None:
        """This window's end-to-end latency from the front door, or None (none configured, first scrape, or it did
        not answer: the policy then reads Triton's own p99, said once per outage)."""
        if self.front_door is None:
            return None
        try:
            e2e = self.front_door.sample(scrape, self.ctx.objective.p99_latency_ms)
        except (TrituneError, ValueError) as exc:
            if not self._front_door_failed:
                self._front_door_failed = True
                self.log("front-door-unreachable", error=str(exc), fallback="Triton's own p99")
            return None
        if self._front_door_failed:
            self._front_door_failed = False
            self.log("front-door-reachable-again")
        if not self._buckets_checked:
            self._buckets_checked = True
            between = self.front_door.bucket_around(self.ctx.objective.p99_latency_ms)
            if between is not None:
                self.log(
                    "slo-between-buckets",
                    slo_p99_ms=self.ctx.objective.p99_latency_ms,
                    bucket_ms=list(between),
                    note="the end-to-end p99 inside this bucket is interpolated linearly; an SLO on a bucket bound "
                    "is judged exactly",
                )
        return e2e

    def _cpu_sample(self) -> CpuShare | None:
        """The CPU shares, or None: a failed read of /proc must not stop the loop (the policy then assumes every
        configured core is Triton's); said once."""
        if self._cpu is None:
            return None
        try:
            return self._cpu.sample()
        except Exception as exc:  # /proc is read while processes come and go
            if not self._cpu_failed:
                self._cpu_failed = True
                self.log("cpu-read-failed", error=f"{type(exc).__name__}: {exc}")
            return None

    def _with_nvml(self, w: Window, now: float) -> Window:
        """GPU: the tighter of Triton's and NVML's free memory; the per-instance estimate refreshed while settled."""
        if self._nvml is None or self.current is None:
            return w
        try:
            readings = self._nvml.read(self.options.server_pids)
            est = guard_inputs(readings, self.current.instances)
        except (self._nvml._nvml.NVMLError, ValueError) as exc:
            self.log("nvml-read-failed", error=str(exc))
            return w
        notes = describe_notes(readings)
        if notes != "ok" and notes != self._nvml_notes:  # what NVML cannot give here, said when it changes
            self._nvml_notes = notes
            self.log("nvml-partial", missing=notes)
        free = [x for x in (w.gpu_memory_free_bytes, est.gpu_memory_free_bytes) if x is not None]
        w = replace(w, gpu_memory_free_bytes=min(free) if free else None)
        last = self.state.guard.last_action_s
        settled = self.state.pending is None and (
            last is None or now - last >= self.options.controller.guards.cooldown_s
        )
        # During a reload Triton holds both copies: memory ÷ instances would read high, so only settled readings count.
        if est.gpu_memory_per_instance_bytes is not None and settled:
            self.ctx = replace(self.ctx, gpu_memory_per_instance_bytes=est.gpu_memory_per_instance_bytes)
        return w

    def _observe(self, w: Window) -> None:
        if w.requests:
            self._windows += 1
            self.metrics.windows.inc()
            if slo_met(w, self.ctx.objective):
                self._windows_ok += 1
                self.metrics.windows_ok.inc()
            self.metrics.attainment.set(self._windows_ok / self._windows)
        if w.p99_latency_ms is not None:
            self.metrics.p99.set(w.p99_latency_ms)
        if w.e2e_p99_latency_ms is not None:
            self.metrics.e2e_p99.set(w.e2e_p99_latency_ms)
        self.metrics.replicas.set(w.replicas)
        if self.current is not None:
            reading = self.capacity.observe(w, self.current, self.ctx)
            self.metrics.offered.set(reading.offered_infer_per_s)
            if reading.ratio is not None:
                self.metrics.capacity_ratio.set(reading.ratio)
                self.metrics.replicas_needed.set(reading.replicas_needed)
                self.metrics.replica_capacity.clear()
                self.metrics.replica_capacity.labels(source=reading.source, variant=reading.variant).set(
                    reading.per_replica_infer_per_s
                )
            self.last_capacity = reading
        self.metrics.mean.set(w.avg_latency_ms)
        self.metrics.throughput.set(w.throughput_infer_per_s)
        if self.ctx.kind == "cpu":
            self.metrics.usable_cores.set(usable_cores(self.ctx, w))
        if w.restarted:
            self.metrics.restarts.inc()

    def _act(self, decision: Decision, w: Window, now: float) -> None:
        before = self.current
        result = self.applier.apply(decision.config)
        record = {
            "action": decision.action,
            "rule": decision.rule,
            "reason": decision.reason,
            "before": before.describe(),
            "after": decision.config.describe(),
            "window": w.summary(),
            "apply_s": round(result.seconds, 3),
        }
        if result.config is not None and result.config.cuda_graphs:  # TensorRT plans: which batches run on graphs
            record["cuda_graph_batch_sizes"] = list(result.config.cuda_graph_batch_sizes)
        if result.ok:
            self.current = decision.config
            self._standby_due = self.options.standby and len(self.ctx.variants) > 1
            if decision.action == "reapply":
                self._suspect_restart = False
            self.state = applied(self.state, decision, before, w, self.clock())
            self.metrics.actions.labels(rule=decision.rule).inc()
            if decision.action == "rollback":
                self.metrics.rollbacks.inc()
            self.metrics.show_config(self.current, self.ctx)
            self.log("action", **record)
        else:
            self.state = apply_failed(self.state, decision, self.clock(), self.options.controller)
            self.metrics.apply_failures.inc()
            self.metrics.rollbacks.inc()
            self.log("apply-failed", error=result.error, **record)
            # Triton keeps serving the old copy after a failed load; re-read what it serves to stay in sync. Serving
            # neither the old config nor the new one means Triton restarted (to the repository's config) or was
            # changed behind our back while the load was in flight: the next tick's restart check re-applies the last
            # good config instead of climbing the ladder again from Triton's default.
            try:
                live = self.applier.current()[1]
            except TrituneError:
                live = None
            if live in (before, decision.config):
                self.current = live
            else:
                self._suspect_restart = True

    # -- run ---------------------------------------------------------------------------------------------------------
    def run(self, duration_s: float | None = None) -> None:
        end = None if not duration_s else self.clock() + duration_s
        while not self._stop.is_set() and (end is None or self.clock() < end):
            started = self.clock()
            try:
                self.tick()
            except Exception as exc:  # the loop must outlive any one bad tick; say so and back off
                self.backoff_s = min(max(self.backoff_s * 2, self.options.interval_s), self.options.max_backoff_s)
                self.log("tick-error", error=f"{type(exc).__name__}: {exc}", retry_in_s=self.backoff_s)
            wait = self.backoff_s or self.options.interval_s
            self._stop.wait(max(0.0, wait - (self.clock() - started)))
        self.close()
        self.log(
            "stop",
            actions=self.state.actions,
            rollbacks=self.state.rollbacks,
            restarts=self.state.restarts,
            config=self.current.describe() if self.current else None,
        )

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self.fleet is not None:
            self.fleet.close()
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None
