"""The highest constant open-loop rate a served config holds within the p99 SLO.

A probe sends a constant rate for a few seconds (after a warm-up it does not count) and passes when nothing failed,
the p99 stayed within the SLO and the generator really offered the rate. :func:`rate_search` doubles from a start
rate until a probe fails, then bisects; :func:`retry_blips` tries a failure once more when it looks like a stall of
the machine rather than of the config. The demo sizes its step load from capacities Locust measures
(:class:`LocustProbe`); the benchmarks (``bench/``) search with the same functions and probes of their own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from loadtest.run import LoadTestOptions, read_requests, run_locust
from tritune import slo

Probe = Callable[[float], tuple[bool, dict]]


def retry_blips(probe, slo_ms: float, retries: int = 1, blip_limit: float = 10.0):
    """``probe`` with a failure retried up to ``retries`` times when it looks like a stall of the machine, not of the
    config: nothing failed and the p99 stayed under ``blip_limit`` × the SLO. A rate passes if any try passes.

    On two shared cores the load generator, Triton and the OS now and then stall together for ~100–300 ms; one such
    stall puts a 20-s probe's p99 over a 50-ms SLO whatever the config, so a rate between two passing ones can fail
    once. An overload builds a backlog instead: p99 in seconds, not retried. Every arm
    goes through the same rule. Each try is kept in ``info["tries"]``.
    """

    def retried(rate: float):
        tries = []
        for _ in range(retries + 1):
            ok, info = probe(rate)
            tries.append({"ok": ok, **info})
            p99 = info.get("p99_ms", info.get("p99_ms_last"))
            if ok or info.get("failed") or p99 is None or p99 > blip_limit * slo_ms:
                break
        return ok, {**info, "tries": tries} if len(tries) > 1 else info

    return retried


def recorded(probe, trail: list[dict] | None = None, **tags):
    """``check(rate) -> ok`` over ``probe(rate) -> (ok, info)``, appending each try (with ``tags``) to ``trail``."""
    trail = [] if trail is None else trail

    def check(rate: float) -> bool:
        ok, info = probe(rate)
        trail.append({**tags, "rate_per_s": round(rate, 1), "ok": ok, **info})
        return ok

    return check, trail


def rate_search(probe, start: float, max_rate: float = 4000.0, bisect_steps: int = 3) -> tuple[float, list[dict]]:
    """Highest rate at which ``probe(rate) -> (ok, info)`` holds: double from ``start`` until it fails, then bisect.

    Returns 0 if even ``start`` fails (after halving twice).
    """
    check, trail = recorded(probe)

    lo, hi = 0.0, None
    rate = start
    for _ in range(3):  # find a passing rate
        if check(rate):
            lo = rate
            break
        hi = rate
        rate /= 2
    if lo == 0.0:
        return 0.0, trail
    if hi is None:
        rate = lo * 2
        while rate <= max_rate:
            if check(rate):
                lo, rate = rate, rate * 2
            else:
                hi = rate
                break
        if hi is None:
            return lo, trail
    for _ in range(bisect_steps):
        mid = (lo + hi) / 2
        if check(mid):
            lo = mid
        else:
            hi = mid
    return lo, trail


@dataclass(frozen=True)
class Capacity:
    """Measured open-loop capacity (requests/s meeting the SLO) of each level's cheapest variant, top level first."""

    per_level: tuple[float, ...]

    def level(self, i: int) -> float:
        return self.per_level[min(i, len(self.per_level) - 1)]

    def fastest_below_top(self) -> float:
        """The highest capacity among the lower levels: a lower level need not be faster than the one above it
        when served (with batch-8 requests or on some builds a less accurate variant holds no more)."""
        return max(self.per_level[1:], default=self.level(0))

    def beyond_top(self, factor: float = 1.4, below: float = 0.8) -> float:
        """A rate the top level cannot hold and a lower level can: ``factor`` × the top level's capacity, capped
        at ``below`` × the fastest lower level's (a step nothing can hold would measure nothing)."""
        return min(factor * self.level(0), below * self.fastest_below_top())


@dataclass
class LocustProbe:
    """``probe(rate) -> (ok, info)``: ``seconds`` of constant open-loop load from Locust itself, as a load test
    sends it (``options``: the URLs, the front door or not, batch size, protocol, data), after ``warmup_s`` not
    counted. Measured this way a capacity includes what the load generator and the front door take from the same
    cores: on two of them Locust's own CPU, not Triton, limits a batch-8 load first. A rate passes when nothing
    failed, the p99 stayed within ``slo_ms``, Locust stayed under its 90% CPU warning and it completed at least
    ``MIN_DELIVERED`` of the rate."""

    options: LoadTestOptions
    run_dir: Path
    slo_ms: float
    seconds: float = 5.0
    warmup_s: float = 1.0
    tag: str = ""
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)
    probes: int = 0

    MIN_DELIVERED = 0.9

    def __call__(self, rate: float) -> tuple[bool, dict]:
        self.probes += 1
        opts = replace(
            self.options,
            open_loop=True,
            shape=f"constant:value={rate:.1f},duration_s={self.warmup_s + self.seconds:g}",
        )
        result = run_locust(opts, run_dir=self.run_dir / f"probe-{self.probes:02d}")
        rows = read_requests(result.run_dir)
        first = min((r["end_epoch_s"] - r["latency_ms"] / 1000 for r in rows), default=0.0)
        judged = [r for r in rows if r["end_epoch_s"] - r["latency_ms"] / 1000 >= first + self.warmup_s]
        ok_ms = np.array([r["latency_ms"] for r in judged if r["ok"]])
        failed = sum(1 for r in judged if not r["ok"])
        p99 = slo.percentile_ms(ok_ms, 99)
        delivered = len(ok_ms) / (rate * self.seconds) if rate > 0 else 0.0
        ok = result.valid and not failed and p99 is not None and p99 <= self.slo_ms and delivered >= self.MIN_DELIVERED
        why = (
            result.invalid_reason
            or (f"{failed} failed" if failed else "")
            or (f"{delivered:.0%} of the rate completed" if delivered < self.MIN_DELIVERED else "p99 over the SLO")
        )
        self.log(f"{self.tag}{rate:7.1f} req/s → p99 {p99} ms: {'ok' if ok else 'no: ' + why}")
        return ok, {"p99_ms": p99, "failed": failed, "delivered": round(delivered, 3), "valid": result.valid}


def capacity(probe: Probe, slo_ms: float, start: float, max_rate: float, retries: int = 1) -> tuple[float, list]:
    """The highest rate ``probe`` holds (:func:`rate_search` over :func:`retry_blips`), and the probes tried."""
    return rate_search(retry_blips(probe, slo_ms, retries), start, max_rate)
