"""Offline sweep in Model Analyzer's style, written as ask/tell.

:class:`SweepGenerator` yields points (a serving config × a client concurrency) and is told each measurement. The
default config, as the repository serves it, is measured first as the baseline, at every concurrency. Then every
server config of the space (instances × queue delays × preferred batch sizes × variants) is measured at rising
concurrency, stopping early for a config once its p99 passes the SLO or more concurrency stops paying (< 5% more
throughput): more load cannot make a config that already misses the SLO meet it, and a saturated config only queues.

The constraint is p99 ≤ SLO with no failed request. The output is the Pareto frontier (throughput up, p99 down) of
all measured points and the best feasible point (highest throughput, then lowest p99).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from loadtest.measure import Measurement, StabilityRule, measure
from tritune.apply import Applier
from tritune.errors import ConfigError, TrituneError
from tritune.serving import ServingConfig

MIN_GAIN = 0.05  # less than 5% more throughput from more concurrency: the config is saturated


@dataclass(frozen=True)
class SweepSpace:
    variants: tuple[str, ...]
    instances: tuple[int, ...] = (1, 2)
    # None: dynamic batching off. 0: batches of what is queued when an instance frees, no wait (Triton's advice to
    # start from; it won Model Analyzer's searches here, docs/benchmarks.md#peers).
    queue_delays_us: tuple[int | None, ...] = (None, 0, 1000, 4000)
    preferred_batch_sizes: tuple[tuple[int, ...], ...] = ((),)
    concurrency: tuple[int, ...] = (1, 4, 16)

    def __post_init__(self) -> None:
        if not self.variants or not self.instances or not self.queue_delays_us or not self.concurrency:
            raise ConfigError("the sweep space is empty; give at least one variant, instance count, delay, concurrency")
        if min(self.instances) < 1 or min(self.concurrency) < 1:
            raise ConfigError("instance counts and concurrency must be >= 1")
        if any(d is not None and d < 0 for d in self.queue_delays_us):
            raise ConfigError("queue delays must be >= 0 µs (or 'off')")

    def server_configs(self) -> Iterator[ServingConfig]:
        seen = set()
        for variant, n, delay, preferred in itertools.product(
            self.variants, self.instances, self.queue_delays_us, self.preferred_batch_sizes
        ):
            cfg = ServingConfig(
                variant=variant,
                instances=n,
                dynamic_batching=delay is not None,
                max_queue_delay_us=delay or 0,
                preferred_batch_sizes=tuple(preferred) if delay is not None else (),
            )
            if cfg not in seen:  # preferred sizes mean nothing without dynamic batching
                seen.add(cfg)
                yield cfg

    @property
    def size(self) -> int:
        return sum(1 for _ in self.server_configs()) * len(self.concurrency)


@dataclass
class SweepPoint:
    config: ServingConfig
    concurrency: int
    baseline: bool = False
    measurement: Measurement | None = None
    feasible: bool = False

    def to_json(self) -> dict:
        return {
            "config": self.config.describe(),
            "concurrency": self.concurrency,
            "baseline": self.baseline,
            "feasible": self.feasible,
            "measurement": self.measurement.to_json() if self.measurement else None,
        }


@dataclass
class SweepGenerator:
    """``ask()`` the next point (None when done), measure it, ``tell()`` the measurement."""

    space: SweepSpace
    baseline: ServingConfig
    slo_p99_ms: float
    points: list[SweepPoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.slo_p99_ms > 0:
            raise ConfigError(f"--slo-p99-ms must be > 0, got {self.slo_p99_ms}")
        baseline = replace(self.baseline, threads=0)
        self._queue: list[tuple[ServingConfig, bool]] = [(baseline, True)]
        self._queue += [(c, False) for c in self.space.server_configs() if c != baseline]
        self._concurrency = sorted(set(self.space.concurrency))
        self._level = 0
        self._pending: SweepPoint | None = None

    def ask(self) -> SweepPoint | None:
        if self._pending is not None:
            raise RuntimeError("tell() the measurement of the last point before asking for another")
        if not self._queue:
            return None
        config, is_baseline = self._queue[0]
        self._pending = SweepPoint(config, self._concurrency[self._level], baseline=is_baseline)
        return self._pending

    def tell(self, point: SweepPoint, m: Measurement) -> None:
        if point is not self._pending:
            raise RuntimeError("tell() must get the point ask() returned last")
        self._pending = None
        point.measurement = m
        point.feasible = m.failures == 0 and m.p99_ms <= self.slo_p99_ms
        self.points.append(point)
        same = [p for p in self.points if p.config == point.config and p is not point]
        gain_stalled = (
            not point.baseline
            and same
            and m.throughput_infer_per_s < (1 + MIN_GAIN) * max(p.measurement.throughput_infer_per_s for p in same)
        )
        done_here = self._level + 1 >= len(self._concurrency) or (not point.baseline and not point.feasible)
        if done_here or gain_stalled:
            self._queue.pop(0)
            self._level = 0
        else:
            self._level += 1

    def frontier(self) -> list[SweepPoint]:
        """Points no other point beats on both throughput (higher) and p99 (lower)."""
        pts = [p for p in self.points if p.measurement and p.measurement.failures == 0]

        def dominated(p: SweepPoint) -> bool:
            a = p.measurement
            return any(
                q is not p
                and q.measurement.throughput_infer_per_s >= a.throughput_infer_per_s
                and q.measurement.p99_ms <= a.p99_ms
                and (q.measurement.throughput_infer_per_s > a.throughput_infer_per_s or q.measurement.p99_ms < a.p99_ms)
                for q in pts
            )

        return sorted((p for p in pts if not dominated(p)), key=lambda p: p.measurement.p99_ms)

    def best(self) -> SweepPoint | None:
        ok = [p for p in self.points if p.feasible]
        return max(ok, key=lambda p: (p.measurement.throughput_infer_per_s, -p.measurement.p99_ms), default=None)

    def result(self) -> dict:
        best = self.best()
        base = [p for p in self.points if p.baseline]
        base_best = max(
            (p for p in base if p.feasible), key=lambda p: p.measurement.throughput_infer_per_s, default=None
        )
        return {
            "slo_p99_ms": self.slo_p99_ms,
            "space": {
                "variants": list(self.space.variants),
                "instances": list(self.space.instances),
                "queue_delays_us": ["off" if d is None else d for d in self.space.queue_delays_us],
                "preferred_batch_sizes": [list(p) for p in self.space.preferred_batch_sizes],
                "concurrency": list(self.space.concurrency),
            },
            "points": [p.to_json() for p in self.points],
            "frontier": [p.to_json() for p in self.frontier()],
            "best": best.to_json() if best else None,
            "baseline_best": base_best.to_json() if base_best else None,
            "best_vs_baseline_throughput": (
                round(best.measurement.throughput_infer_per_s / base_best.measurement.throughput_infer_per_s, 2)
                if best and base_best and base_best.measurement.throughput_infer_per_s
                else None
            ),
        }


def run_sweep(
    gen: SweepGenerator,
    applier: Applier,
    url: str,
    model: str,
    images,
    labels,
    batch: int = 1,
    rule: StabilityRule = StabilityRule(),
    progress: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    protocol: str = "grpc",
) -> dict:
    """Drive the generator against a live Triton; the config served before the sweep is restored at the end.
    ``url`` is where the measurements go, over ``protocol`` (HTTP: the cheaper client, docs/benchmarks.md#peers)."""
    original = applier.current()[1]
    current = original
    try:
        while (point := gen.ask()) is not None:
            if should_stop and should_stop():
                gen._pending = None
                break
            target = replace(point.config, threads=0)
            if target != replace(current, threads=0):
                res = applier.apply(target)
                if not res.ok:
                    raise TrituneError(f"the sweep could not apply {target.describe()}: {res.error}")
                current = target
            m = measure(url, model, images, labels, point.concurrency, batch, rule, protocol=protocol)
            gen.tell(point, m)
            if progress:
                c = point.config
                progress(
                    f"{len(gen.points):3d}  {c.variant:9s} inst={c.instances} "
                    f"delay={'off' if not c.dynamic_batching else c.max_queue_delay_us:<5} "
                    f"pref={','.join(map(str, c.preferred_batch_sizes)) or '-':6s} conc={point.concurrency:<3d} → "
                    f"{m.throughput_infer_per_s:7.1f} infer/s  p99 {m.p99_ms:7.2f} ms"
                    f"{'' if m.stable else '  (unstable)'}{'  [baseline]' if point.baseline else ''}"
                    f"{'' if point.feasible else '  ✗ SLO'}"
                )
    finally:
        if replace(current, threads=0) != replace(original, threads=0):
            applier.apply(original)
    return gen.result()


def write_sweep(result: dict, path: Path) -> Path:
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
