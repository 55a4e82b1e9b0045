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
