"""Closed-loop measurement at a fixed concurrency, until stable (perf_analyzer's rule).

``concurrency`` requests in flight on one asyncio loop (:meth:`loadtest.openloop.OpenLoopLoad.run_closed`).
Measurement runs in windows of ``window_s``; it is *stable* when the last ``stable_windows`` windows' throughput
and mean latency are each within ``tolerance`` of their mean. The reported figures cover those windows only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from loadtest.openloop import OpenLoopLoad
from tritune import slo
from tritune.client import InferenceClient
from tritune.signature import Signature


@dataclass(frozen=True)
class Measurement:
    throughput_infer_per_s: float  # images per second (requests × batch)
    p50_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    requests: int
    failures: int
    wrong_answers: int
    stable: bool
    windows: int  # windows measured, warm-up excluded

    def to_json(self) -> dict:
        # No answered request leaves latencies infinite; JSON has no infinity, so they become null.
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class StabilityRule:
    window_s: float = 2.0
    stable_windows: int = 3
    tolerance: float = 0.10
    max_windows: int = 10
    warmup_s: float = 1.0


def _stable(ws: list[tuple[float, float]], rule: StabilityRule) -> bool:
    if len(ws) < rule.stable_windows:
        return False
    last = np.array(ws[-rule.stable_windows :])
    if (last[:, 0] <= 0).any():
        return False
    mean = last.mean(axis=0)
    return bool((np.abs(last - mean) <= rule.tolerance * mean).all())


def measure(
    url: str,
    model: str,
    samples: np.ndarray | dict[str, np.ndarray],
    labels: np.ndarray | None,
    concurrency: int,
    batch: int = 1,
    rule: StabilityRule = StabilityRule(),
    timeout_s: float = 30.0,
    signature: Signature | None = None,
    protocol: str = "grpc",
) -> Measurement:
    """Closed loop: ``concurrency`` requests of ``batch`` samples (one array per model input, or one array for a
    one-input model) in flight over gRPC, each answer sending the next, until the throughput is stable.

    The loop is :meth:`loadtest.openloop.OpenLoopLoad.run_closed` (one asyncio loop, requests serialized before
    the clock starts): measured beside perf_analyzer on 2 cores it agrees with it, where a thread per request with
    tritonclient cost twice its CPU and reported a quarter less throughput (docs/benchmarks.md#peers)."""
    if signature is None:
        with InferenceClient(url, protocol, timeout_s=30) as client:
            signature = Signature.from_config(client.model_config(model))
    load = OpenLoopLoad(url, model, samples, labels, batch=batch, timeout_s=timeout_s, protocol=protocol,
                        signature=signature)  # fmt: skip
    batch = load.batch
    edges: list[float] = [rule.warmup_s]
    ws: list[tuple[float, float]] = []

    def answered_in(result, lo: float, hi: float) -> list:
        # by completion time, as a window of a running measurement sees them
        return [r for r in result.records if lo <= r.scheduled_s + r.latency_ms / 1000 < hi]

    def until(result, now_s: float) -> bool:
        if now_s < edges[-1] + rule.window_s:
            return False
        edges.append(edges[-1] + rule.window_s)
        lat = [r.latency_ms for r in answered_in(result, edges[-2], edges[-1]) if r.ok]
        ws.append((len(lat) * batch / rule.window_s, float(np.mean(lat)) if lat else 0.0))
        return _stable(ws, rule) or len(ws) >= rule.max_windows

    result = load.run_closed(rule.warmup_s + rule.window_s * rule.max_windows + 1.0, concurrency, until)
    stable = _stable(ws, rule)
    since = edges[-min(rule.stable_windows, len(ws)) - 1]
    win = answered_in(result, since, edges[-1])
    lat = np.array([r.latency_ms for r in win if r.ok])
    span = edges[-1] - since
    # no successful request: an infinite percentile, which no SLO accepts
    pct = (lambda q: slo.percentile_ms(lat, q)) if len(lat) else (lambda q: float("inf"))
    return Measurement(
        throughput_infer_per_s=round(len(lat) * batch / span, 1) if span > 0 else 0.0,
        p50_ms=pct(50),
        p95_ms=pct(95),
        p99_ms=pct(99),
        avg_ms=round(float(lat.mean()), 2) if len(lat) else float("inf"),
        requests=len(win),
        failures=sum(1 for r in win if not r.ok),
        wrong_answers=sum(r.images - r.correct for r in win if r.ok and r.correct is not None),
        stable=stable,
        windows=len(ws),
    )
