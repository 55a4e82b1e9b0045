"""The fleet's capacity signal for a replica autoscaler (Kubernetes' HPA, KEDA): how many replicas the offered load
needs at the **most accurate allowed variant**.

``tritune_fleet_capacity_ratio`` = offered load ÷ (ready replicas × what one replica holds within the SLO at the
most accurate allowed variant), and ``tritune_fleet_replicas_needed`` = offered load ÷ what one replica holds: the
same signal in replicas. The HPA scales on the second with an ``AverageValue`` target of 1, so it asks for
``ceil(replicas needed)``. With the ratio and a ``Value`` target it would ask for ``ceil(replicas × ratio)``, where
its ``replicas`` counts the pods it already asked for and the ratio counts only the ready ones: while new pods
start, every sync would multiply the shortfall again (tests/unit/test_capacity.py shows the overshoot).

Why not queue time (NVIDIA's chart): the orchestrator drives queue time down on purpose. Once it steps down to a
cheaper variant the queue empties, a queue-time HPA sees no demand, and the fleet stays on the cheaper variant for
good. This signal is keyed to the most accurate variant, whatever serves: stepping down the ladder bridges the
minutes new pods take while the signal keeps saying "short", and once the pods are ready the orchestrator takes the
accuracy back.

Per-replica capacity (images/s at the most accurate allowed variant, within the SLO) comes from two sources:

- **the sweep** (``--capacity-from-sweep FILE``): the highest throughput of a feasible point (p99 within the SLO,
  no failure) of that variant, measured offline on one replica;
- **learned online**: each window with enough busy time gives the served config's service rate (throughput ÷ busy
  share, per replica), kept per variant. The capacity at the most accurate variant is that variant's own learned
  rate, so a step down the ladder leaves it where it was: the cheaper variant's windows add to the cheaper
  variant's rates, not to the accurate one's. Until the accurate variant has been measured, another variant's rate
  is converted by the manifest's relative cost (``latency_ms_b32``).

``source`` says which one the estimate came from: ``learned``, ``learned-converted``, ``sweep``, or ``none`` (the
ratio is then not exported).
"""

from __future__ import annotations

import json
import statistics
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.metrics import Window
from orchestrator.policy.profile import service_rate
from orchestrator.policy.types import Context
from tritune.errors import ConfigError
from tritune.serving import ServingConfig

LEARNED_WINDOWS = 5  # windows the learned estimate needs (and takes the median of)
# A service rate is measured below saturation; at full utilization queueing stretches the window's busy time.
HEADROOM = 0.9  # the share of a replica's service rate that counts as "held within the SLO"


def most_accurate(ctx: Context) -> str | None:
    return ctx.most_accurate().name if ctx.allowed_variants() else None


def sweep_capacity(path: Path | str, variant: str) -> float | None:
    """The highest feasible throughput (images/s) of ``variant`` in a sweep result (``tritune sweep``'s JSON)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the sweep result {path} ({exc}); give the JSON `tritune sweep` writes") from exc
    points = data.get("points") if isinstance(data, dict) else None
    if not isinstance(points, list):
        raise ConfigError(f"{path} has no 'points'; give the JSON `tritune sweep` writes")
    feasible = [
        p["measurement"]["throughput_infer_per_s"]
        for p in points
        if isinstance(p, dict)
        and p.get("feasible")
        and (p.get("config") or {}).get("variant") == variant
        and isinstance((p.get("measurement") or {}).get("throughput_infer_per_s"), int | float)
    ]
    return max(feasible) if feasible else None


@dataclass(frozen=True)
class CapacityReading:
    ratio: float | None  # offered ÷ (ready replicas × per-replica capacity); None without an estimate
    replicas_needed: float | None  # offered ÷ per-replica capacity
    per_replica_infer_per_s: float | None  # at the most accurate allowed variant
    source: str  # "learned", "sweep" or "none"
    offered_infer_per_s: float
    replicas: int
    variant: str | None  # the most accurate allowed variant the capacity is quoted at


@dataclass
class CapacityEstimator:
    """Turns each fleet window into a :class:`CapacityReading`; holds the learned service rates, per variant."""

    sweep_infer_per_s: float | None = None
    _rates: dict[str, deque] = field(default_factory=dict)  # variant → recent per-replica service rates (images/s)
    _last_pending: float | None = None

    def observe(self, w: Window, config: ServingConfig, ctx: Context) -> CapacityReading:
        target = most_accurate(ctx)
        replicas = max(w.replicas, 0)
        # Offered load: what completed, plus the backlog's growth (a saturated fleet completes less than arrives).
        images_per_request = w.throughput_infer_per_s / w.request_rate_per_s if w.request_rate_per_s else 1.0
        offered = w.throughput_infer_per_s
        if self._last_pending is not None and w.interval_s > 0:
            offered += max(0.0, w.pending_requests - self._last_pending) * images_per_request / w.interval_s
        self._last_pending = w.pending_requests
        rate = self._service_rate(w, config, ctx)
        if rate is not None:
            self._rates.setdefault(config.variant, deque(maxlen=4 * LEARNED_WINDOWS)).append(rate)
        per_replica, source = self.estimate(target, ctx)
        ratio = offered / (replicas * per_replica) if per_replica and replicas else None
        needed = offered / per_replica if per_replica else None
        return CapacityReading(ratio, needed, per_replica, source, offered, replicas, target)

    def estimate(self, target: str | None, ctx: Context) -> tuple[float | None, str]:
        """One replica's capacity at ``target``: its own learned rate; else another variant's, converted by the
        manifest's relative cost; else the sweep's; else none."""
        if target is None:
            return None, "none"
        learned = {v: r for v, r in self._rates.items() if len(r) >= LEARNED_WINDOWS}
        if target in learned:
            return statistics.median(learned[target]) * HEADROOM, "learned"
        if learned:
            v, rates = max(learned.items(), key=lambda kv: len(kv[1]))
            return statistics.median(rates) * ctx.cost(v) / ctx.cost(target) * HEADROOM, "learned-converted"
        if self.sweep_infer_per_s:
            return self.sweep_infer_per_s, "sweep"
        return None, "none"

    @staticmethod
    def _service_rate(w: Window, config: ServingConfig, ctx: Context) -> float | None:
        """One replica's images/s at the served config if its instances were always busy, from this window."""
        return service_rate(w, config) if config.variant in ctx.variants else None
