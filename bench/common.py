"""Shared parts of the orchestrator benchmarks (goodput, adaptation, reconfig): a fresh Triton, static configs under
open-loop load, the orchestrator under open-loop load, rate search, medians. Everything prints JSON in the callers.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builders.data import load_dataset
from loadtest.capacity import rate_search, recorded, retry_blips  # noqa: F401 - the benchmarks' search helpers
from loadtest.openloop import LoadResult, OpenLoopLoad, RateFn, constant
from orchestrator.loop import LoopOptions, Orchestrator
from orchestrator.policy import Context, ControllerConfig, GuardConfig, Objective, variants_from_manifest
from tritune.apply import Applier
from tritune.client import InferenceClient
from tritune.manifest import Manifest
from tritune.server import ServerOptions, TritonServer
from tritune.serving import ServingConfig

KEY = "bench-key"
WINDOW_S = 5.0
# The controller as the benchmarks run it (docs/benchmarks.md): a 1-s tick, quick up, slow down.
BENCH_CONTROLLER = ControllerConfig(guards=GuardConfig(upscale_delay_s=2, downscale_delay_s=30, cooldown_s=5))


@dataclass
class Bench:
    repository: Path
    runs_dir: Path
    slo_ms: float
    floor: float
    interval_s: float = 0.5  # the orchestrator's tick: its window
    standby: bool = LoopOptions.standby  # the orchestrator keeps the first rung down loaded and warm
    headroom: bool = Context.headroom  # the policy's default, as the orchestrate command runs it
    batch: int = 1  # images per request the load sends

    def __post_init__(self) -> None:
        self.manifest = Manifest.read(self.repository)
        data = load_dataset(self.manifest.dataset["name"], self.manifest.data_dir)
        self.images, self.labels = data.x_test, data.y_test
        self.ctx = Context(
            objective=Objective(self.slo_ms, self.floor),
            variants=variants_from_manifest(self.manifest),
            cores=os.cpu_count() or 1,
            headroom=self.headroom,
        )
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._n = 0
        # A killed benchmark stops its Triton too: SIGTERM unwinds like Ctrl-C, through the servers' context managers.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def server(self, tag: str) -> TritonServer:
        self._n += 1
        return TritonServer(
            ServerOptions(
                repository=self.repository,
                models=("cnn",),
                admin_key=KEY,
                log_path=self.runs_dir / f"triton-{self._n:03d}-{tag}.log",
                cache_dir=self.runs_dir / "cache",
            )
        )

    def applier(self, server: TritonServer) -> Applier:
        return Applier(InferenceClient(server.grpc_url, "grpc", admin_key=KEY, timeout_s=120), "cnn")

    def load(self, server: TritonServer, seconds: float, rate: RateFn) -> LoadResult:
        # HTTP: the cheaper transport for the client (loadtest/openloop.py), so the server sets the figures.
        return OpenLoopLoad(server.http_url, "cnn", self.images, self.labels, batch=self.batch, protocol="http").run(
            seconds, rate
        )

    def settle(self, server: TritonServer, seconds: float = 3.0) -> None:
        """A trickle of requests until any backlog is gone, so the next phase starts from an empty queue."""
        OpenLoopLoad(server.http_url, "cnn", self.images, protocol="http").run(seconds, constant(2))

    def set_config(self, server: TritonServer, config: ServingConfig) -> float:
        applier = self.applier(server)
        if applier.current()[1] == config:
            return 0.0
        result = applier.apply(config)
        if not result.ok:
            raise RuntimeError(f"could not apply {config.describe()}: {result.error}")
        return result.seconds

    def orchestrated(
        self, server: TritonServer, seconds: float, rate: RateFn, log: Path | None = None, lead_in_s: float = 0.0
    ) -> tuple[LoadResult, OrchestratorRun]:
        """``seconds`` of load at ``rate`` with the orchestrator on; ``lead_in_s``: the orchestrator is attached
        this long before the load starts (it runs all along in a deployment, traffic arrives later).

        The orchestrator runs in a process of its own, as ``tritune orchestrate`` does: in a thread of this one it
        would take the GIL from the open-loop generator (each scrape parses Triton's metrics text), delay sends and
        so add latency that only the orchestrator's arm pays.
        """
        mp = multiprocessing.get_context("spawn")
        ready, stop, results = mp.Event(), mp.Event(), mp.Queue()
        options = LoopOptions(
            model="cnn", metrics_url=server.metrics_url, interval_s=self.interval_s, decision_log=log,
            controller=BENCH_CONTROLLER, standby=self.standby,
        )  # fmt: skip
        max_s = lead_in_s + seconds + 10
        child = mp.Process(
            target=_orchestrate, args=(server.grpc_url, self.ctx, options, max_s, ready, stop, results), daemon=True
        )
        child.start()
        try:
            deadline = time.monotonic() + 60
            while not ready.wait(0.2):
                if not child.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the orchestrator process did not start (exit code {child.exitcode}); see above"
                    )
            time.sleep(lead_in_s)
            load_started_s = time.monotonic()  # the orchestrator's records use the same clock (CLOCK_MONOTONIC)
            result = self.load(server, seconds, rate)
        finally:
            stop.set()
        run = results.get(timeout=90)
        child.join(timeout=30)
        run.load_started_s = load_started_s
        return result, run


@dataclass
class OrchestratorRun:
    """What the benchmarks read of an orchestrator that ran in its own process."""

    history: list[dict]
    rollbacks: int
    current: ServingConfig | None
    load_started_s: float = 0.0  # time.monotonic() when the load began


def _orchestrate(grpc_url: str, ctx: Context, options: LoopOptions, max_s: float, ready, stop, results) -> None:
    orch = Orchestrator(Applier(InferenceClient(grpc_url, "grpc", admin_key=KEY, timeout_s=120), "cnn"), ctx, options)
    loop = threading.Thread(target=orch.run, args=(max_s,), daemon=True)
    loop.start()
    ready.set()
    try:
        stop.wait(max_s)
    finally:
        orch.stop()
        loop.join(timeout=60)
        results.put(OrchestratorRun(list(orch.history), orch.state.rollbacks, orch.current))


def default_floor(repository: Path, floor: float) -> float:
    """``floor`` as given, or (when negative) one top-1 point below the fp32 variant."""
    return floor if floor >= 0 else max(0.0, Manifest.read(repository).variants["fp32"].top1 - 0.01)


def meets_slo(result: LoadResult, slo_ms: float, skip_s: float) -> tuple[bool, dict]:
    s = result.summary(slo_ms, skip_s=skip_s)
    ok = s["failed"] == 0 and s["p99_ms"] is not None and s["p99_ms"] <= slo_ms
    return ok, s


def search_below(probe, low: float, high: float, bisect_steps: int = 3) -> tuple[float, list[dict]]:
    """Highest rate up to ``high`` at which ``probe(rate) -> (ok, info)`` holds: ``high`` first, then bisection
    between ``low`` (a rate expected to hold, not assumed to) and ``high``, to a resolution of
    (high − low) / 2^bisect_steps. Checks ``low`` itself only when nothing above it held; 0 if that fails too."""
    check, trail = recorded(probe)

    if check(high):
        return high, trail
    lo, hi = 0.0, high
    rate = (low + high) / 2
    for _ in range(bisect_steps):
        if check(rate):
            lo = rate
        else:
            hi = rate
        rate = (max(lo, low) + hi) / 2
    if lo == 0.0 and check(low):
        lo = low
    return lo, trail


def paired_descent(
    probe_ref, probe_arm, top: float, low: float, step_frac: float = 0.05, max_levels: int = 6
) -> tuple[float | None, float, list[dict]]:
    """Two arms on one descending grid, ``top`` × (1 − ``step_frac`` k), each level probing the reference arm and
    then the arm under test back to back, until each has passed a level (its rate: the first level it passed).

    Probed minutes apart, two arms read the machine's drift as a difference between them (two shared cores hold a
    rate near their limit in one half hour and not in the next); probed at the same level in turn, both meet the
    same machine, and the ratio resolves to ``step_frac``. An arm that passes nothing down to ``low`` or
    ``max_levels`` gets None (the reference), or ``low`` if that holds and else 0 (the arm under test).
    Returns (reference rate or None, arm rate, trail).
    """
    trail: list[dict] = []
    arms = {"reference": probe_ref, "arm": probe_arm}
    rates: dict[str, float | None] = dict.fromkeys(arms)
    for k in range(max_levels + 1):
        rate = top * (1 - step_frac * k)
        if rate < low:
            break
        for name in (n for n in arms if rates[n] is None):
            check, _ = recorded(arms[name], trail, level=k, arm=name)
            if check(rate):
                rates[name] = rate
        if None not in rates.values():
            break
    if rates["arm"] is None:  # nothing on the grid held: does ``low`` itself?
        check, _ = recorded(probe_arm, trail, level=None, arm="arm")
        rates["arm"] = low if check(low) else 0.0
    return rates["reference"], rates["arm"], trail


def bracket(trail: list[dict], rate: float) -> list[float | None]:
    """[``rate``, the lowest rate above it that failed in ``trail``]: how finely a search resolved its answer."""
    above = [p["rate_per_s"] for p in trail if not p["ok"] and p["rate_per_s"] > rate]
    return [round(rate, 1), min(above) if above else None]


def converged_after_s(windows: list[dict]) -> float | None:
    """Start of the first window from which every window met the SLO."""
    for i, w in enumerate(windows):
        if all(x["slo_met"] for x in windows[i:]):
            return w["start_s"]
    return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


@contextlib.contextmanager
def timed():
    t = {"start": time.monotonic()}
    yield t
    t["seconds"] = round(time.monotonic() - t["start"], 1)


def add_headroom_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--headroom",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the orchestrator provisions batching and an instance per core while the load is low (default: on, "
        "as `tritune orchestrate`)",
    )
