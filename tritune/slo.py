"""One definition of percentiles and of "SLO met", for the load tests, the benchmarks and the orchestrator.

A window meets the SLO when it has at least one successful request, no failed one, and its p99 latency (over the
successful requests, linear interpolation between order statistics, numpy's default) is at most the SLO.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile_ms(latencies_ms: Sequence[float] | np.ndarray, q: float, digits: int | None = 2) -> float | None:
    """The ``q``-th percentile (0..100), rounded to ``digits`` for display (None: unrounded); None for no samples."""
    lat = np.asarray(latencies_ms, dtype=float)
    if not lat.size:
        return None
    value = float(np.percentile(lat, q))
    return round(value, digits) if digits is not None else value


def slo_met(p99_ms: float | None, failures: int, slo_ms: float) -> bool:
    """No failure and a p99 within the SLO; a window without a p99 (no success) does not meet it."""
    return failures == 0 and p99_ms is not None and p99_ms <= slo_ms


def window_stats(latencies_ms: Sequence[float] | np.ndarray, failures: int, slo_ms: float | None) -> dict:
    """p50/p95/p99 of a window's successful requests and whether it met the SLO (None without an SLO)."""
    p99 = percentile_ms(latencies_ms, 99, digits=None)  # judged unrounded, shown rounded
    return {
        "p50_ms": percentile_ms(latencies_ms, 50),
        "p95_ms": percentile_ms(latencies_ms, 95),
        "p99_ms": round(p99, 2) if p99 is not None else None,
        "failures": int(failures),
        "slo_met": slo_met(p99, failures, slo_ms) if slo_ms else None,
    }


def share_met(windows: Sequence[dict]) -> float | None:
    """Share of windows (dicts with ``slo_met``) that met the SLO; None for no windows."""
    return sum(1 for w in windows if w["slo_met"]) / len(windows) if windows else None


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q``-quantile (0..1) of a histogram given as ``(upper_bound, cumulative_count)`` pairs sorted by bound,
    the last bound ``inf``: linear interpolation inside the bucket that holds the rank, as Prometheus'
    ``histogram_quantile`` does (the first bucket's lower bound is 0; a rank in the ``+Inf`` bucket returns the
    highest finite bound). None for an empty histogram."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def histogram_share_within(bound: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Share of the histogram's observations at or below ``bound``, interpolated linearly inside the bucket that
    straddles it (exact when ``bound`` is a bucket bound). None for an empty histogram."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for upper, count in buckets:
        if bound <= upper:
            if upper == float("inf"):
                return lower_count / total
            inside = (bound - lower_bound) / (upper - lower_bound) if upper > lower_bound else 1.0
            return (lower_count + (count - lower_count) * inside) / total
        lower_bound, lower_count = upper, count
    return 1.0
