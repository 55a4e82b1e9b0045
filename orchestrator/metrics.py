"""Observe: Triton's Prometheus text → :class:`Snapshot` → per-window statistics (:class:`Window`).

Counters are cumulative since Triton started, so a window is the difference of two snapshots: exact throughput,
average executed batch, queue and compute time per request, failure rate. Quantiles come from Triton's summaries
(``--metrics-config summary_latencies=true``), which Triton keeps over its own sliding time window, so they lag a
change by that long; the policy reads the counter-derived averages for fast reactions and the p99 for the SLO.
A counter that goes backwards means Triton restarted: the window says so and carries no rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from prometheus_client.parser import text_string_to_metric_families

COUNTERS = {
    "nv_inference_request_success": "success",
    "nv_inference_count": "inferences",
    "nv_inference_exec_count": "executions",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_input_duration_us": "compute_input_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_compute_output_duration_us": "compute_output_us",
}


@dataclass
class ModelSample:
    """Cumulative counters and current gauges/quantiles of one model (summed over its versions)."""

    success: float = 0.0
    failure: float = 0.0
    inferences: float = 0.0
    executions: float = 0.0
    request_us: float = 0.0
    queue_us: float = 0.0
    compute_input_us: float = 0.0
    compute_infer_us: float = 0.0
    compute_output_us: float = 0.0
    pending: float = 0.0
    request_quantiles_us: dict[float, float] = field(default_factory=dict)
    queue_quantiles_us: dict[float, float] = field(default_factory=dict)


@dataclass
class Snapshot:
    time_s: float
    models: dict[str, ModelSample]  # summed over versions (for display)
    versions: dict[tuple[str, str], ModelSample] = field(default_factory=dict)  # (model, version) → sample
    cpu_utilization: float | None = None  # 0..1, whole machine, as Triton reports it
    cpu_memory_used_bytes: float | None = None
    gpu_utilization: dict[str, float] = field(default_factory=dict)  # by GPU uuid, 0..1
    gpu_memory_used_bytes: dict[str, float] = field(default_factory=dict)
    gpu_memory_total_bytes: dict[str, float] = field(default_factory=dict)


def parse_metrics(text: str, time_s: float) -> Snapshot:
    """Parse Triton's /metrics text with prometheus_client's parser."""
    models: dict[str, ModelSample] = {}
    versions: dict[tuple[str, str], ModelSample] = {}
    snap = Snapshot(time_s=time_s, models=models, versions=versions)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, s.value
            if math.isnan(value):
                continue
            model = labels.get("model")
            if model is not None:
                for m in (
                    models.setdefault(model, ModelSample()),
                    versions.setdefault((model, labels.get("version", "")), ModelSample()),
                ):
                    _add(m, name, labels, value)
            elif name == "nv_cpu_utilization":
                snap.cpu_utilization = value
            elif name == "nv_cpu_memory_used_bytes":
                snap.cpu_memory_used_bytes = value
            elif name == "nv_gpu_utilization":
                snap.gpu_utilization[labels.get("gpu_uuid", "gpu")] = value
            elif name == "nv_gpu_memory_used_bytes":
                snap.gpu_memory_used_bytes[labels.get("gpu_uuid", "gpu")] = value
            elif name == "nv_gpu_memory_total_bytes":
                snap.gpu_memory_total_bytes[labels.get("gpu_uuid", "gpu")] = value
    return snap


def _add(m: ModelSample, name: str, labels: dict[str, str], value: float) -> None:
    base = name.removesuffix("_total")
    if base in COUNTERS:
        setattr(m, COUNTERS[base], getattr(m, COUNTERS[base]) + value)
    elif base == "nv_inference_request_failure":
        m.failure += value
    elif base == "nv_inference_pending_request_count":
        m.pending += value
    elif name == "nv_inference_request_summary_us" and "quantile" in labels:
        q = float(labels["quantile"])
        m.request_quantiles_us[q] = max(m.request_quantiles_us.get(q, 0.0), value)
    elif name == "nv_inference_queue_summary_us" and "quantile" in labels:
        q = float(labels["quantile"])
        m.queue_quantiles_us[q] = max(m.queue_quantiles_us.get(q, 0.0), value)


@dataclass(frozen=True)
class Window:
    """What happened to one model between two snapshots. Rates are per second; times are per request."""

    start_s: float
    end_s: float
    requests: float = 0.0
    failures: float = 0.0
    throughput_infer_per_s: float = 0.0  # images (batch elements) per second
    request_rate_per_s: float = 0.0
    avg_batch: float = 0.0  # executed batch size (inferences / executions)
    avg_latency_ms: float = 0.0  # request duration inside Triton
    avg_queue_ms: float = 0.0
    avg_compute_ms: float = 0.0
    busy_s: float = 0.0  # summed execution time of all instances (a batch counted once)
    p50_latency_ms: float | None = None
    p99_latency_ms: float | None = None
    p99_queue_ms: float | None = None
    pending_requests: float = 0.0
    cpu_utilization: float | None = None
    # Cores the machine's other processes (anything but Triton's server and stubs) took, and cores Triton took, in
    # the window: what a neighbour leaves Triton, and the CPU its throughput cost. None when not measured (a
    # Triton on another host, or no /proc).
    cpu_other_cores: float | None = None
    cpu_triton_cores: float | None = None
    cpu_machine_cores: int | None = None  # the machine's cores, of which the two above are shares
    gpu_utilization: float | None = None
    gpu_memory_free_bytes: float | None = None
    restarted: bool = False
    model_missing: bool = False
    versions: int = 1  # versions of the model that served or held requests (2 while an old variant drains its queue)
    # A fleet (orchestrator/fleet.py): the replicas summed into this window, and each one's pending requests;
    # ``pending_requests`` is then the worst replica's, busy time is shared over replicas × instances.
    replicas: int = 1
    replica_pending: tuple[tuple[str, float], ...] = ()
    # The front door's end-to-end latency (its histogram's bucket deltas over this window). Where it has traffic
    # ``p99_latency_ms`` is the end-to-end p99, and Triton's own summary p99 moves here as a cross-check.
    triton_p99_latency_ms: float | None = None
    e2e_requests: float = 0.0
    e2e_p99_latency_ms: float | None = None
    e2e_avg_latency_ms: float | None = None
    e2e_within_slo: float | None = None  # share of front-door requests within the SLO

    @property
    def interval_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def failure_rate(self) -> float:
        total = self.requests + self.failures
        return self.failures / total if total else 0.0

    def summary(self) -> dict:
        out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}
        out["replica_pending"] = {name: round(v, 1) for name, v in self.replica_pending}
        out["interval_s"] = round(self.interval_s, 3)
        out["failure_rate"] = round(self.failure_rate, 5)
        return out

    @classmethod
    def from_summary(cls, summary: dict) -> Window:
        """The window a :meth:`summary` (a decision log's ``window`` record) was written from, to its rounding;
        the derived fields it adds are dropped."""
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in summary.items() if k in names}
        kept["replica_pending"] = tuple(summary.get("replica_pending", {}).items())
        return cls(**kept)


def window(prev: Snapshot, cur: Snapshot, model: str) -> Window:
    """The window between two snapshots for ``model``; flags a restart when any counter went backwards."""
    b = cur.models.get(model)
    gpu_free = None
    if cur.gpu_memory_total_bytes:
        gpu_free = min(
            cur.gpu_memory_total_bytes[g] - cur.gpu_memory_used_bytes.get(g, 0.0) for g in cur.gpu_memory_total_bytes
        )
    common = {
        "start_s": prev.time_s,
        "end_s": cur.time_s,
        "cpu_utilization": cur.cpu_utilization,
        "gpu_utilization": max(cur.gpu_utilization.values()) if cur.gpu_utilization else None,
        "gpu_memory_free_bytes": gpu_free,
    }
    if b is None:
        return Window(**common, model_missing=True)
    # Per version: a version that appeared (a variant switch loads one) counts from zero, one that was unloaded
    # drops out; only a version whose own counters went backwards means Triton restarted.
    fields = (
        "success",
        "failure",
        "inferences",
        "executions",
        "request_us",
        "queue_us",
        "compute_input_us",
        "compute_infer_us",
        "compute_output_us",
    )
    d = dict.fromkeys(fields, 0.0)
    deltas: dict[tuple[str, str], dict[str, float]] = {}
    back: set[tuple[str, str]] = set()
    zeroed: set[tuple[str, str]] = set()
    for key, vb in cur.versions.items():
        if key[0] != model:
            continue
        va = prev.versions.get(key, ModelSample())
        deltas[key] = {f: getattr(vb, f) - getattr(va, f) for f in fields}
        if any(v < 0 for v in deltas[key].values()):
            back.add(key)
            if all(getattr(vb, f) == 0 for f in fields):
                zeroed.add(key)
    # A version being unloaded (the old variant after a switch) reports all-zero counters for a scrape or two
    # before its series disappear: measured on Triton 2.51. That is the version leaving, not a restart, as long
    # as another version carried on; a restart sends every version back.
    leaving = zeroed if zeroed and len(back) < len(deltas) else set()
    went_back = bool(back - leaving)
    for key, delta in deltas.items():
        if key not in leaving:
            for f in fields:
                d[f] += delta[f]
    quantiles = {
        "p50_latency_ms": b.request_quantiles_us.get(0.5, math.nan) / 1000 if b.request_quantiles_us else None,
        "p99_latency_ms": b.request_quantiles_us.get(0.99, math.nan) / 1000 if b.request_quantiles_us else None,
        "p99_queue_ms": b.queue_quantiles_us.get(0.99, math.nan) / 1000 if b.queue_quantiles_us else None,
    }
    quantiles = {k: (None if v is None or math.isnan(v) else v) for k, v in quantiles.items()}
    if went_back:
        return Window(**common, restarted=True, pending_requests=b.pending, **quantiles)
    dt = max(cur.time_s - prev.time_s, 1e-9)
    n = d["success"]
    per_request = (lambda us: us / n / 1000) if n else (lambda us: 0.0)
    return Window(
        **common,
        requests=n,
        failures=d["failure"],
        throughput_infer_per_s=d["inferences"] / dt,
        request_rate_per_s=n / dt,
        avg_batch=d["inferences"] / d["executions"] if d["executions"] else 0.0,
        avg_latency_ms=per_request(d["request_us"]),
        avg_queue_ms=per_request(d["queue_us"]),
        avg_compute_ms=per_request(d["compute_input_us"] + d["compute_infer_us"] + d["compute_output_us"]),
        busy_s=_busy_s(d),
        pending_requests=b.pending,
        # Versions that completed requests in this window or hold some: a zeroed series (a version that left, or one
        # that has served nothing yet) and a standby loaded beside the served version (orchestrator/loop.py), whose
        # counters stand still, neither serve nor drain.
        versions=sum(
            1
            for key in deltas
            if key not in leaving and (any(deltas[key][f] for f in fields) or cur.versions[key].pending)
        ),
        **quantiles,
    )


def _busy_s(d: dict[str, float]) -> float:
    # Triton charges a batch's compute time to every request in it; divide by requests per execution.
    if not d["success"] or not d["executions"]:
        return 0.0
    compute_us = d["compute_input_us"] + d["compute_infer_us"] + d["compute_output_us"]
    return compute_us / (d["success"] / d["executions"]) / 1e6
