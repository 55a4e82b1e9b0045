"""An open-loop load generator on tritonclient's gRPC ``async_infer``: requests leave on schedule whether or not
earlier ones have returned, and latency is measured from the scheduled send time, so a slow server cannot
slow the load down (no coordinated omission). Used by the orchestrator's tests and benchmarks; Locust users
live in ``loadtest/locustfile.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient

from tritune import slo
from tritune.model_io import INPUT_DATATYPE, INPUT_NAME, INPUT_SHAPE, OUTPUT_NAME

RateFn = Callable[[float], float]  # seconds since start → requests per second


@dataclass
class Record:
    scheduled_s: float  # since start
    latency_ms: float
    ok: bool
    error: str | None = None
    correct: bool | None = None


@dataclass
class LoadResult:
    records: list[Record] = field(default_factory=list)
    duration_s: float = 0.0
    sent: int = 0

    @property
    def failures(self) -> list[Record]:
        return [r for r in self.records if not r.ok]

    def windows(
        self, size_s: float = 5.0, slo_ms: float | None = None, start_s: float = 0.0, end_s: float | None = None
    ) -> list[dict]:
        """Per-window stats by scheduled time: offered and completed rate, p50/p99 (ms), failures, SLO met."""
        end_s = self.duration_s if end_s is None else end_s
        out = []
        t = start_s
        while t + size_s <= end_s + 1e-9:
            rs = [r for r in self.records if t <= r.scheduled_s < t + size_s]
            stats = slo.window_stats([r.latency_ms for r in rs if r.ok], sum(1 for r in rs if not r.ok), slo_ms)
            out.append(
                {
                    "start_s": round(t, 2),
                    "requests": len(rs),
                    "rate_per_s": round(len(rs) / size_s, 1),
                    **{k: stats[k] for k in ("p50_ms", "p99_ms", "failures", "slo_met")},
                }
            )
            t += size_s
        return out

    def summary(self, slo_ms: float | None = None, skip_s: float = 0.0) -> dict:
        rs = [r for r in self.records if r.scheduled_s >= skip_s]
        lat = np.array([r.latency_ms for r in rs if r.ok])
        good = sum(1 for r in rs if r.ok and (slo_ms is None or r.latency_ms <= slo_ms))
        span = max(self.duration_s - skip_s, 1e-9)
        return {
            "requests": len(rs),
            "failed": sum(1 for r in rs if not r.ok),
            "wrong_answers": sum(1 for r in rs if r.correct is False),
            "p50_ms": slo.percentile_ms(lat, 50),
            "p99_ms": slo.percentile_ms(lat, 99),
            "throughput_per_s": round(sum(1 for r in rs if r.ok) / span, 1),
            "goodput_per_s": round(good / span, 1),
        }


def constant(rate: float) -> RateFn:
    return lambda _t: rate


def steps(*segments: tuple[float, float]) -> RateFn:
    """``steps((10, 100), (20, 400))``: 100/s for 10 s, then 400/s for 20 s (the last rate holds after)."""

    def fn(t: float) -> float:
        edge = 0.0
        for duration, rate in segments:
            edge += duration
            if t < edge:
                return rate
        return segments[-1][1]

    return fn


class OpenLoopLoad:
    def __init__(
        self,
        url: str,
        model: str,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        batch: int = 1,
        timeout_s: float = 60.0,
    ):
        self.url, self.model, self.batch, self.timeout_s = url, model, batch, timeout_s
        self.images, self.labels = images.astype(np.float32), labels
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self, duration_s: float, rate: RateFn) -> LoadResult:
        load = LoadResult()
        lock = threading.Lock()
        outstanding = threading.Semaphore(0)
        client = grpcclient.InferenceServerClient(self.url)
        n_images = len(self.images)
        start = time.perf_counter()
        t = 0.0
        i = 0
        try:
            while t < duration_s and not self._stop.is_set():
                r = max(rate(t), 1e-3)
                now = time.perf_counter() - start
                if t > now:
                    time.sleep(t - now)
                idx = [(i * self.batch + k) % n_images for k in range(self.batch)]
                inp = grpcclient.InferInput(INPUT_NAME, [self.batch, *INPUT_SHAPE], INPUT_DATATYPE)
                inp.set_data_from_numpy(self.images[idx])
                expected = self.labels[idx] if self.labels is not None else None

                # tritonclient calls back with keywords: result=..., error=...
                def done(result=None, error=None, scheduled=t, expected=expected):
                    latency = (time.perf_counter() - start - scheduled) * 1000
                    correct = None
                    if error is None and expected is not None:
                        correct = bool((result.as_numpy(OUTPUT_NAME).argmax(1) == expected).all())
                    rec = Record(
                        scheduled, latency, error is None, None if error is None else str(error)[:200], correct
                    )
                    with lock:
                        load.records.append(rec)
                    outstanding.release()

                try:
                    client.async_infer(self.model, [inp], done, client_timeout=self.timeout_s)
                except Exception as exc:  # the channel itself failed: count it, keep the schedule
                    with lock:
                        load.records.append(Record(t, 0.0, False, str(exc)[:200]))
                    outstanding.release()
                load.sent += 1
                i += 1
                t += 1.0 / r
            load.duration_s = min(t, duration_s)
            for _ in range(load.sent):  # wait for every callback (bounded by the client timeout)
                if not outstanding.acquire(timeout=self.timeout_s + 5):
                    break
        finally:
            client.close()
        load.records.sort(key=lambda r: r.scheduled_s)
        return load
