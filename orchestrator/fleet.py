"""The orchestrator's view of N replicas and of the front door before them.

- **Replicas** come from a fleet file, from ``--replica`` flags, or from a DNS name resolved every tick (the
  mechanism of Kubernetes' headless Services and compose's scaled services): :class:`StaticReplicas`,
  :class:`DnsReplicas`.
- **The fleet window** (:func:`fleet_window`): counters summed over the replicas that answered both scrapes;
  pending requests kept per replica, the worst one standing for the fleet (a backlog on any replica is a backlog,
  and every replica has the same config); busy time summed and shared over ``replicas × instances``. A replica
  that stops answering drops out of the window; one whose counters went backwards restarted, and it drops out too
  (it is not a restart of the fleet) until the config is back on it.
- **End-to-end latency** (:class:`FrontDoorLatency`): bucket deltas of the front door's request-duration histogram
  between two scrapes are this window's distribution; its p99 is interpolated as Prometheus'
  ``histogram_quantile`` does.
- **One fleet config, rolled out one replica at a time** (:class:`FleetApplier`): apply, wait for READY, judge
  that replica over ``judge_s``; a refusal or a regression stops the rollout and undoes it on every replica it
  reached.
"""

from __future__ import annotations

import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.metrics import Snapshot, Window, parse_metrics, window
from tritune import slo
from tritune.apply import Applier, ApplyResult, Standby
from tritune.client import InferenceClient
from tritune.errors import ConfigError, TrituneError
from tritune.fleet import ReplicaEndpoints
from tritune.frontdoor import LATENCY_LABELS, LATENCY_METRIC
from tritune.model_config import ModelConfig
from tritune.serving import ServingConfig

Log = Callable[..., Any]


class ReplicaSource(Protocol):
    def replicas(self) -> tuple[ReplicaEndpoints, ...]: ...


@dataclass(frozen=True)
class StaticReplicas:
    endpoints: tuple[ReplicaEndpoints, ...]

    def replicas(self) -> tuple[ReplicaEndpoints, ...]:
        return self.endpoints


@dataclass
class DnsReplicas:
    """Every address ``name`` resolves to, re-resolved on each call; a failed lookup keeps the last answer (a DNS
    hiccup is not a fleet that vanished)."""

    name: str
    grpc_port: int = 8001
    metrics_port: int = 8002
    resolve: Callable[[str], list[str]] | None = None
    _last: tuple[ReplicaEndpoints, ...] = ()
    error: str | None = None

    def _addresses(self) -> list[str]:
        if self.resolve is not None:
            return self.resolve(self.name)
        infos = socket.getaddrinfo(self.name, None, type=socket.SOCK_STREAM)
        return [info[4][0] for info in infos]

    def replicas(self) -> tuple[ReplicaEndpoints, ...]:
        try:
            addresses = sorted(set(self._addresses()))
        except OSError as exc:
            self.error = f"cannot resolve {self.name} ({exc})"
            return self._last
        self.error = None

        def host(a: str) -> str:
            return f"[{a}]" if ":" in a else a

        self._last = tuple(
            ReplicaEndpoints(
                name=a,
                grpc_url=f"{host(a)}:{self.grpc_port}",
                metrics_url=f"http://{host(a)}:{self.metrics_port}/metrics",
            )
            for a in addresses
        )
        return self._last


# -- the fleet window ---------------------------------------------------------------------------------------------
def fleet_window(windows: dict[str, Window], start_s: float, end_s: float) -> Window:
    """One window for the fleet from the replicas' own windows over the same scrape interval.

    Counters add up; means are weighted by requests; Triton's summary quantiles cannot be merged across replicas,
    so the fleet's Triton p99 is the worst replica's (a cross-check only where a front door gives the real one)."""
    live = {n: w for n, w in windows.items() if not (w.restarted or w.model_missing)}
    if not live:
        return Window(start_s=start_s, end_s=end_s, model_missing=True, replicas=0)
    ws = list(live.values())
    requests = sum(w.requests for w in ws)

    def weighted(attr: str) -> float:
        return sum(getattr(w, attr) * w.requests for w in ws) / requests if requests else 0.0

    def worst(attr: str) -> float | None:
        vals = [getattr(w, attr) for w in ws if getattr(w, attr) is not None]
        return max(vals) if vals else None

    inferences = sum(w.throughput_infer_per_s * w.interval_s for w in ws)
    executions = sum(w.throughput_infer_per_s * w.interval_s / w.avg_batch for w in ws if w.avg_batch)
    dt = max(end_s - start_s, 1e-9)
    free = [w.gpu_memory_free_bytes for w in ws if w.gpu_memory_free_bytes is not None]
    return Window(
        start_s=start_s,
        end_s=end_s,
        requests=requests,
        failures=sum(w.failures for w in ws),
        throughput_infer_per_s=inferences / dt,
        request_rate_per_s=requests / dt,
        avg_batch=inferences / executions if executions else 0.0,
        avg_latency_ms=weighted("avg_latency_ms"),
        avg_queue_ms=weighted("avg_queue_ms"),
        avg_compute_ms=weighted("avg_compute_ms"),
        busy_s=sum(w.busy_s for w in ws),
        p50_latency_ms=worst("p50_latency_ms"),
        p99_latency_ms=worst("p99_latency_ms"),
        p99_queue_ms=worst("p99_queue_ms"),
        pending_requests=max(w.pending_requests for w in ws),
        cpu_utilization=worst("cpu_utilization"),
        gpu_utilization=worst("gpu_utilization"),
        gpu_memory_free_bytes=min(free) if free else None,
        versions=max(w.versions for w in ws),
        replicas=len(ws),
        replica_pending=tuple(sorted((n, w.pending_requests) for n, w in live.items())),
    )


# -- the front door's end-to-end latency --------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyWindow:
    """The end-to-end distribution of one window, from the front door's histogram."""

    requests: float
    p99_ms: float | None
    mean_ms: float | None
    within_slo: float | None  # share of requests at or below the SLO


def parse_histogram(text: str, metric: str, labels: dict[str, str]) -> tuple[dict[float, float], float, float]:
    """Cumulative bucket counts by upper bound, count and sum (seconds) of ``metric``, summed over every series
    whose labels include ``labels``."""
    buckets: dict[float, float] = {}
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != metric:
            continue
        for s in family.samples:
            if any(s.labels.get(k) != v for k, v in labels.items()):
                continue
            if s.name == metric + "_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == metric + "_count":
                count += s.value
            elif s.name == metric + "_sum":
                total += s.value
    return buckets, count, total


@dataclass
class FrontDoorLatency:
    """Reads the front door's request-duration histogram and turns two scrapes into a :class:`LatencyWindow`.

    The metric and the label matcher are settings: Caddy's ``caddy_http_request_duration_seconds`` with
    ``handler="reverse_proxy"`` (proxied requests, not the refusals) by default; Traefik's
    ``traefik_service_request_duration_seconds``, Envoy's or ingress-nginx's request-duration histogram plug in the
    same way (seconds as the unit). Resolution: the p99 is known only to lie in its bucket (Caddy 2.6's bounds are
    5, 10, 25, 50, 100, 250 ms, …); inside it the value is interpolated linearly, as Prometheus does."""

    metrics_url: str
    metric: str = LATENCY_METRIC
    labels: dict[str, str] = field(default_factory=lambda: dict(LATENCY_LABELS))
    scale_to_ms: float = 1000.0  # the histogram's unit is seconds
    _prev: tuple[dict[float, float], float, float] | None = None

    def sample(self, scrape: Callable[[str], str], slo_ms: float) -> LatencyWindow | None:
        """Scrape once; the window since the previous scrape, or None for the first (or after a reset)."""
        cur = parse_histogram(scrape(self.metrics_url), self.metric, self.labels)
        prev, self._prev = self._prev, cur
        if prev is None:
            return None
        deltas = {le: c - prev[0].get(le, 0.0) for le, c in cur[0].items()}
        if any(v < 0 for v in deltas.values()) or cur[1] < prev[1]:
            return None  # the front door restarted: its counters began again
        buckets = sorted(deltas.items())
        count, total_s = cur[1] - prev[1], cur[2] - prev[2]
        if not count:
            return LatencyWindow(0.0, None, None, None)
        p99 = slo.histogram_quantile(0.99, buckets)
        within = slo.histogram_share_within(slo_ms / self.scale_to_ms, buckets)
        return LatencyWindow(
            requests=count,
            p99_ms=p99 * self.scale_to_ms if p99 is not None else None,
            mean_ms=total_s / count * self.scale_to_ms,
            within_slo=within,
        )

    def bucket_around(self, slo_ms: float) -> tuple[float, float] | None:
        """The bounds (ms) of the bucket the SLO falls strictly inside, from the last scrape; None when the SLO is
        a bucket bound (or nothing was scraped yet)."""
        if self._prev is None:
            return None
        bounds = sorted(b * self.scale_to_ms for b in self._prev[0] if b != float("inf"))
        if any(abs(b - slo_ms) < 1e-9 for b in bounds):
            return None
        lower = max((b for b in bounds if b < slo_ms), default=0.0)
        upper = min((b for b in bounds if b > slo_ms), default=float("inf"))
        return lower, upper


def with_end_to_end(w: Window, e2e: LatencyWindow | None) -> Window:
    """The window with the front door's latency as its SLO signal: the p99 the policy reads becomes the end-to-end
    one, Triton's own moves to ``triton_p99_latency_ms`` (a cross-check), and windows without front-door traffic
    keep Triton's."""
    if e2e is None or not e2e.requests:
        return w
    return replace(
        w,
        triton_p99_latency_ms=w.p99_latency_ms,
        p99_latency_ms=e2e.p99_ms,
        e2e_requests=e2e.requests,
        e2e_p99_latency_ms=e2e.p99_ms,
        e2e_avg_latency_ms=e2e.mean_ms,
        e2e_within_slo=e2e.within_slo,
    )


# -- the replicas, scraped and applied to ------------------------------------------------------------------------
@dataclass
class ReplicaState:
    endpoints: ReplicaEndpoints
    applier: Applier
    prev: Snapshot | None = None
    # Needs the fleet config put on it: new, returned after failing to answer, or restarted.
    needs_config: bool = True
    reachable: bool = True
    # A refused reconcile is retried with a doubling wait (a replica that refuses keeps refusing, and each try is
    # a reload), and logged when its error changes.
    failed_applies: int = 0
    retry_at_s: float = 0.0
    last_error: str | None = None


class Fleet:
    """The live replicas: scraped every tick, each with its own direct client and :class:`Applier`."""

    def __init__(
        self,
        source: ReplicaSource,
        model: str,
        admin_key: str | None,
        scrape: Callable[[str], str],
        log: Log,
        judge_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        applier_factory: Callable[[ReplicaEndpoints], Applier] | None = None,
    ):
        self.source, self.model, self.admin_key = source, model, admin_key
        self.scrape_text, self.log, self.judge_s, self.sleep, self.clock = scrape, log, judge_s, sleep, clock
        self.applier_factory = applier_factory or (
            lambda r: Applier(InferenceClient(r.grpc_url, "grpc", timeout_s=120, admin_key=self.admin_key), model)
        )
        self._standby: Standby | None = None
        self.replicas: dict[str, ReplicaState] = {}
        self.config: ServingConfig | None = None  # the fleet config every replica should serve
        self._dns_error: str | None = None

    @property
    def standby(self) -> Standby | None:
        """The variant each replica keeps loaded beside the served one (:class:`tritune.apply.Applier`)."""
        return self._standby

    @standby.setter
    def standby(self, standby: Standby | None) -> None:
        self._standby = standby
        for r in self.replicas.values():
            r.applier.standby = standby

    def prepare_standby(self) -> ApplyResult | None:
        """Load the standby on every ready replica that lacks it; the first failure, else the last load, else None
        (nothing to load)."""
        start, last = self.clock(), None
        for r in sorted(self.replicas.values(), key=lambda r: r.endpoints.name):
            if not r.reachable or r.needs_config:
                continue
            result = r.applier.prepare_standby()
            if result is not None and not result.ok:
                return replace(result, error=f"replica {r.endpoints.name}: {result.error}")
            last = result or last
        return None if last is None else replace(last, seconds=self.clock() - start)

    # -- membership ------------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        found = {r.name: r for r in self.source.replicas()}
        error = getattr(self.source, "error", None)
        if error != self._dns_error:
            self._dns_error = error
            if error:
                self.log("replicas-unresolved", error=error)
        for name in list(self.replicas):
            if name not in found:
                self.replicas.pop(name).applier.client.close()
                self.log("replica-left", replica=name)
        for name, r in found.items():
            if name not in self.replicas:
                self.replicas[name] = ReplicaState(r, self.applier_factory(r))
                self.replicas[name].applier.standby = self._standby
                self.log("replica-joined", replica=name, grpc_url=r.grpc_url, metrics_url=r.metrics_url)

    def ready(self) -> list[ReplicaState]:
        return [r for r in self.replicas.values() if r.reachable and not r.needs_config]

    # -- one scrape of every replica ---------------------------------------------------------------------------------
    def scrape(self, now: float) -> Window | None:
        """Scrape every replica, put the fleet config on those that need it, and return the fleet window since the
        last scrape (None when no replica has one yet). A replica that does not answer, restarted, or was just
        given the config is left out of this window."""
        self.refresh()
        snaps: dict[str, Snapshot] = {}
        for name, r in self.replicas.items():
            try:
                snaps[name] = parse_metrics(self.scrape_text(r.endpoints.metrics_url), now)
            except (TrituneError, ValueError) as exc:
                if r.reachable:
                    self.log("replica-unreachable", replica=name, error=str(exc))
                r.reachable, r.needs_config, r.prev = False, True, None
                continue
            if not r.reachable:
                self.log("replica-reachable-again", replica=name)
                r.reachable = True
        windows: dict[str, Window] = {}
        for name, snap in snaps.items():
            r = self.replicas[name]
            if r.prev is not None:
                w = window(r.prev, snap, self.model)
                if w.restarted:
                    self.log("replica-restarted", replica=name)
                    r.needs_config = True
                else:
                    windows[name] = w
        reconciled = self.reconcile(snaps)
        start_s = None
        included: dict[str, Window] = {}
        for name, snap in snaps.items():
            r = self.replicas[name]
            if name in windows and name not in reconciled and not r.needs_config:
                included[name] = windows[name]
                start_s = r.prev.time_s if start_s is None else min(start_s, r.prev.time_s)
            r.prev = snap
        if start_s is None:
            return None
        return fleet_window(included, start_s, now)

    # -- configs -----------------------------------------------------------------------------------------------------
    def current(self) -> tuple[ModelConfig, ServingConfig]:
        """What the fleet serves: the fleet config once known, else the first replica's that answers (at start)."""
        if not self.replicas:  # before the first scrape, which refreshes the membership every tick
            self.refresh()
        last: TrituneError | None = None
        for r in sorted(self.replicas.values(), key=lambda r: (r.needs_config, r.endpoints.name)):
            try:
                cfg, serving = r.applier.current()
            except TrituneError as exc:
                last = exc
                continue
            if self.config is None:
                self.config = serving  # the others are checked against it by the next reconcile
                r.needs_config = False
            return cfg, serving
        raise last or ConfigError("no replica answers; check the fleet file, --replica or the DNS name")

    def reconcile(self, answered: dict[str, Snapshot] | None = None) -> set[str]:
        """Put the fleet config on every replica that needs it (joined, returned, restarted) and answered this
        scrape; the names of those it changed."""
        changed: set[str] = set()
        if self.config is None:
            return changed
        for name, r in self.replicas.items():
            if not r.needs_config or (answered is not None and name not in answered):
                continue
            if self.clock() < r.retry_at_s:
                continue
            try:
                live = r.applier.current()[1]
            except TrituneError:
                continue  # not ready yet: the next tick tries again
            if live == self.config:
                r.needs_config = False
                self.log("replica-in-sync", replica=name, config=live.describe())
                continue
            result = r.applier.apply(self.config)
            changed.add(name)
            if result.ok or result.error != r.last_error:
                self.log(
                    "replica-apply",
                    replica=name,
                    reason="joined, returned or restarted with another config",
                    before=live.describe(),
                    after=self.config.describe(),
                    ok=result.ok,
                    error=result.error,
                    apply_s=round(result.seconds, 3),
                    retry_in_s=None if result.ok else self._retry_s(r.failed_applies),
                )
            if result.ok:
                r.needs_config, r.failed_applies, r.retry_at_s, r.last_error = False, 0, 0.0, None
            else:
                r.retry_at_s = self.clock() + self._retry_s(r.failed_applies)
                r.failed_applies += 1
                r.last_error = result.error
        return changed

    @staticmethod
    def _retry_s(failures: int) -> float:
        return min(30.0, 1.0 * 2**failures)

    def apply(self, target: ServingConfig) -> ApplyResult:
        """Roll ``target`` over the ready replicas one at a time; on a refusal or a regression, undo it on every
        replica it reached and return the failure."""
        start = self.clock()
        before = self.config
        done: list[ReplicaState] = []
        order = sorted(self.replicas.values(), key=lambda r: r.endpoints.name)
        targets = [r for r in order if r.reachable and not r.needs_config]
        if not targets:
            return ApplyResult(False, 0.0, error="no ready replica to apply to")
        last: ApplyResult | None = None
        for r in targets:
            result = r.applier.apply(target)
            why = result.error
            if result.ok:
                why = self._judge(r)
            self.log(
                "replica-apply",
                replica=r.endpoints.name,
                after=target.describe(),
                ok=why is None,
                error=why,
                apply_s=round(result.seconds, 3),
            )
            if why is not None:
                self._undo([*done, r], before)
                return ApplyResult(
                    False,
                    self.clock() - start,
                    error=f"replica {r.endpoints.name}: {why}; undone on "
                    + (", ".join(d.endpoints.name for d in [*done, r])),
                )
            done.append(r)
            last = result
        self.config = target
        return ApplyResult(True, self.clock() - start, config=last.config if last else None)

    def _judge(self, r: ReplicaState) -> str | None:
        """The replica just changed: over ``judge_s`` it must stay READY, not restart, and fail no request. Latency
        is the controller's to judge, over the whole fleet once every replica serves the change."""
        try:
            before = parse_metrics(self.scrape_text(r.endpoints.metrics_url), self.clock())
        except (TrituneError, ValueError) as exc:
            return f"metrics unreadable after the change ({exc})"
        self.sleep(self.judge_s)
        try:
            after = parse_metrics(self.scrape_text(r.endpoints.metrics_url), self.clock())
        except (TrituneError, ValueError) as exc:
            return f"metrics unreadable {self.judge_s:g} s after the change ({exc})"
        w = window(before, after, self.model)
        r.prev = after
        if w.restarted or w.model_missing:
            return "the model restarted or went missing after the change"
        if w.failures:
            return f"{w.failures:.0f} requests failed in the {self.judge_s:g} s after the change"
        if not r.applier.client.is_ready(self.model):
            return "the model is not READY after the change"
        return None

    def _undo(self, reached: list[ReplicaState], before: ServingConfig | None) -> None:
        if before is None:
            return
        for r in reached:
            result = r.applier.apply(before)
            self.log(
                "replica-undo",
                replica=r.endpoints.name,
                after=before.describe(),
                ok=result.ok,
                error=result.error,
                apply_s=round(result.seconds, 3),
            )
            if not result.ok:
                r.needs_config = True  # the next ticks put the fleet config back on it

    def close(self) -> None:
        for r in self.replicas.values():
            r.applier.client.close()


def same_host(url: str) -> bool:
    return urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")
