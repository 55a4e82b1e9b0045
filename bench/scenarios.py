"""Scenario suite: each scenario runs three arms on fresh Tritons — (a) Triton's default config, (b) the best static
config for the scenario, (c) the orchestrator from the default — and reports, per arm, the share of 5-s windows
meeting the SLO, the served top-1 weighted by time, failed requests, actions and rollbacks, and after each change of
load the seconds and actions until every later window met the SLO. Medians over ``--repeats`` runs; prints JSON.

    python bench/scenarios.py --scenario tradeoff_step            # one scenario (see --list)
    python bench/record.py scenarios --merge-key tradeoff_step -- .venv/bin/python bench/scenarios.py \\
        --scenario tradeoff_step                                   # its result merges into docs/results/scenarios.json

Rates are set from the machine, not written in: before its arms a scenario measures, on a fresh Triton and under
the scenario's own conditions (SLO, client batch, neighbour), the open-loop capacity of each accuracy level's
cheapest variant in its calibration config (dynamic batching, one instance per core); the measured capacities are
cached per (manifest, conditions) under ``--runs-dir`` and printed with the result. Arm (b) is the most accurate
config that meets the SLO at the scenario's peak rate, found by probing candidate configs level by level, the most
accurate level first (the most accurate config meeting the base rate is reported beside it).

The load generator is ``loadtest/openloop.py`` (one asyncio loop, pre-serialized requests); every arm reports its
CPU share and send lag, and an arm whose generator ran out of CPU is marked invalid.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import WINDOW_S, Bench, default_floor, median, rate_search, retry_blips
from loadtest.capacity import Capacity
from loadtest.openloop import LoadResult, constant
from loadtest.shapes import DiurnalShape, ReplayShape, Shape
from tritune.compare import Level, variant_ladder
from tritune.manifest import MANIFEST
from tritune.serving import ServingConfig

CALIBRATION_PROBE_S = 10.0
CALIBRATION_WARMUP_S = 2.0
SEARCH_PROBE_S = 10.0
PROBE_RETRIES = 1  # tries more of a probe that failed like a stall (``retry_blips``), in calibration and search
# After a step the load stays at its base this long: time for Triton's p99 summaries (they lag by up to a minute)
# to clear, the controller's down delay, and a restore to be verified.
RETURN_S = 120.0


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    shape: Callable[[Capacity], Shape]
    slo_ms: float = 50.0
    headroom: bool = True
    batch: int = 1
    whole_ladder: bool = True  # floor at the lowest level's top-1; False: one point below fp32 (only ties qualify)
    neighbour: bool = False  # a busy process on one core for the whole scenario

    def conditions(self) -> dict:
        return {"slo_ms": self.slo_ms, "batch": self.batch, "neighbour": self.neighbour}


def steps(*segments: tuple[float, float]) -> ReplayShape:
    """``steps((30, 100), (45, 400))``: 100/s for 30 s, then 400/s for 45 s."""
    points, t = [], 0.0
    for duration, rate in segments:
        points.append((t, round(rate, 1)))
        t += duration
    return ReplayShape(duration_s=t, points=tuple(points))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "ties",
            "the variants that tie on accuracy only (floor one point below fp32): a 1× → 4× → 1× step",
            lambda c: steps((30, 0.2 * c.level(0)), (30, 0.8 * c.level(0)), (30, 0.2 * c.level(0))),
            whole_ladder=False,
        ),
        Scenario(
            "tradeoff_step",
            "a base load the top level holds, a step beyond it, and back: down the ladder and up again",
            lambda c: steps((30, 0.6 * c.level(0)), (45, c.beyond_top()), (RETURN_S, 0.6 * c.level(0))),
        ),
        Scenario(
            "steep_step",
            "a step to 3× the base, beyond the top level's capacity, with no warning, and back",
            lambda c: steps((30, c.beyond_top(1.5) / 3), (45, c.beyond_top(1.5)), (RETURN_S, c.beyond_top(1.5) / 3)),
        ),
        Scenario(
            "tight_slo",
            "a 10-ms SLO, headroom off: a step within the top level's capacity at that SLO",
            lambda c: steps((30, 0.3 * c.level(0)), (45, 0.8 * c.level(0)), (45, 0.3 * c.level(0))),
            slo_ms=10.0,
            headroom=False,
        ),
        Scenario(
            "batched_clients",
            "clients sending batch-8 requests: a step beyond the top level's capacity and back",
            lambda c: steps((30, 0.5 * c.level(0)), (45, c.beyond_top()), (RETURN_S, 0.5 * c.level(0))),
            batch=8,
        ),
        Scenario(
            "no_headroom",
            "how it runs on GPUs: no headroom, from the default; a step beyond the top level that the ladder meets",
            lambda c: steps((30, 0.5 * c.level(0)), (45, c.beyond_top()), (RETURN_S, 0.5 * c.level(0))),
            headroom=False,
        ),
        Scenario(
            "long_trace",
            "a compressed day (diurnal, 5 minutes) peaking beyond the top level's capacity",
            lambda c: DiurnalShape(duration_s=300, low=0.3 * c.level(0), high=c.beyond_top(1.3), period_s=150),
        ),
        Scenario(
            "noisy_neighbour",
            "a busy process on one core for the whole run; a step beyond the top level's capacity (measured beside it)",
            lambda c: steps((30, 0.5 * c.level(0)), (45, c.beyond_top()), (RETURN_S, 0.5 * c.level(0))),
            neighbour=True,
        ),
    )
}


@contextlib.contextmanager
def neighbour(on: bool) -> Iterator[None]:
    """A busy loop pinned to core 0 while the block runs (a noisy neighbour on a shared machine)."""
    if not on:
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", "import os; os.sched_setaffinity(0, {0})\nwhile True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def levels_of(bench: Bench) -> list[Level]:
    """The accuracy ladder of the variants above the floor (tritune/compare.py)."""
    return variant_ladder(bench.ctx.variants, bench.floor)


def calibration_config(bench: Bench, variant: str) -> ServingConfig:
    cores = bench.ctx.cores
    delay_us = int(min(2000, bench.slo_ms * 1000 / 10))
    return ServingConfig(variant, instances=cores, dynamic_batching=True, max_queue_delay_us=delay_us)


def candidates(bench: Bench, variant: str) -> list[ServingConfig]:
    """Static configs of one variant, the likeliest to hold a high rate first."""
    batching = calibration_config(bench, variant)
    return [
        batching,
        replace(batching, instances=1),
        ServingConfig(variant, instances=bench.ctx.cores),
        ServingConfig(variant),
    ]


def probe(bench: Bench, server, rate: float, seconds: float, tag: str) -> tuple[bool, dict]:
    bench.settle(server, 2.0)
    result = bench.load(server, CALIBRATION_WARMUP_S + seconds, constant(rate))
    s = result.summary(bench.slo_ms, skip_s=CALIBRATION_WARMUP_S)
    gen = result.generator.report()
    ok = s["failed"] == 0 and s["p99_ms"] is not None and s["p99_ms"] <= bench.slo_ms and gen["valid"]
    why = gen["invalid_because"] or (f"{s['failed']} failed" if s["failed"] else "p99 over the SLO")
    print(
        f"  {tag}: {rate:7.1f} req/s → p99 {s['p99_ms']} ms, generator {gen['cpu_core_share']:.0%} of a core, "
        f"send lag p99 {gen['send_lag_p99_ms']} ms: {'ok' if ok else 'FAIL: ' + why}",
        file=sys.stderr,
        flush=True,
    )
    return ok, {**s, "generator": gen}


def retried_probe(bench: Bench, server, seconds: float, tag: str):
    """``rate -> (ok, info)``: a probe whose failure is tried again when it looks like a stall of the machine
    (nothing failed, p99 under 10× the SLO): one stall fails a probe whatever the config, and a search would take
    it for the ceiling."""
    return retry_blips(lambda r: probe(bench, server, r, seconds, tag), bench.slo_ms, PROBE_RETRIES)


def calibrate(bench: Bench, scenario: Scenario, levels: list[Level], cache: Path) -> dict:
    # The method is part of the key: a capacity measured by another probe or search is not reused.
    method = {"probe_s": CALIBRATION_PROBE_S, "warmup_s": CALIBRATION_WARMUP_S, "retries": PROBE_RETRIES}
    key = hashlib.sha256(
        (bench.repository / MANIFEST).read_bytes() + json.dumps([scenario.conditions(), method]).encode()
    ).hexdigest()[:16]
    path = cache / f"capacity-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    per_level = []
    with bench.server(f"calibrate-{scenario.name}") as server:
        start = 100.0 / scenario.batch
        for lv in levels:
            config = calibration_config(bench, lv.cheapest)
            bench.set_config(server, config)
            rate, trail = rate_search(
                retried_probe(bench, server, CALIBRATION_PROBE_S, f"capacity {lv.cheapest}"),
                start,
                max_rate=16000 / scenario.batch,  # the generator marks a rate it cannot offer invalid
            )
            per_level.append(
                {
                    "variant": lv.cheapest,
                    "config": config.describe(),
                    "rate_per_s": rate,
                    "probes": [
                        {
                            "rate_per_s": p["rate_per_s"],
                            "ok": p["ok"],
                            "p99_ms": p["p99_ms"],
                            "failed": p["failed"],
                            "generator": p["generator"],
                        }
                        for p in trail
                    ],
                }
            )
            start = max(rate, start)
    out = {"conditions": scenario.conditions(), "levels": per_level, "measured_utc": time.strftime("%FT%TZ")}
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


def best_static(bench: Bench, levels: list[Level], rate: float, tag: str) -> dict:
    """The most accurate config meeting the SLO at ``rate``: the levels top down, each level's cheapest variant
    (among ties the cheaper wins), its candidate configs in order; the first that holds."""
    tried = []
    with bench.server(f"static-{tag}") as server:
        for lv in levels:
            for config in candidates(bench, lv.cheapest):
                bench.set_config(server, config)
                ok, info = retried_probe(bench, server, SEARCH_PROBE_S, f"static {tag} {config.variant}")(rate)
                tried.append({"config": config.describe(), "ok": ok, "p99_ms": info["p99_ms"]})
                if ok:
                    return {"rate_per_s": round(rate, 1), "config": config.describe(), "top1": lv.top1, "tried": tried}
    return {"rate_per_s": round(rate, 1), "config": None, "top1": None, "tried": tried}


def change_points(shape: Shape) -> list[float]:
    if isinstance(shape, ReplayShape):
        return [t for t, _ in shape.points[1:]]
    return []


def change_values(shape: Shape) -> list[float]:
    """The rate of each segment of a stepped shape, in order (the first is the base)."""
    return [v for _, v in shape.points] if isinstance(shape, ReplayShape) else []


def convergence(windows: list[dict], changes: list[float], end_s: float, action_times: list[float]) -> list[dict]:
    """After each change of load: seconds from the change until every later window before the next change met the
    SLO (None: it never did), and the actions taken in that time."""
    out = []
    for i, t in enumerate(changes):
        until = changes[i + 1] if i + 1 < len(changes) else end_s
        span = [w for w in windows if t <= w["start_s"] < until]
        settled = next((w["start_s"] for k, w in enumerate(span) if all(x["slo_met"] for x in span[k:])), None)
        seconds = None if settled is None else round(settled - t, 1)
        stop = until if settled is None else settled
        out.append(
            {
                "at_s": t,
                "seconds_until_slo_holds": seconds,
                "actions": sum(1 for a in action_times if t <= a < stop),
            }
        )
    return out


# Rules whose reload the load did not force: taken within the SLO (a restore, headroom, a dominating variant, a
# shorter delay, an instance less). A window one of them misses is a cost of reacting the load never asked for.
UNFORCED_RULES = frozenset(
    {"restore-variant", "provision-headroom", "free-faster-variant", "shorten-queue-delay", "remove-instance"}
)


def missed_per_change(windows: list[dict], changes: list[float], end_s: float) -> list[int]:
    """Windows that missed the SLO between each change of load and the next (the goal: at most one per step)."""
    bounds = [*changes, end_s]
    return [
        sum(1 for w in windows if bounds[i] <= w["start_s"] < bounds[i + 1] and not w["slo_met"])
        for i in range(len(changes))
    ]


def missed_after_unforced(windows: list[dict], actions: list[dict], window_s: float) -> list[float]:
    """Start of each missed window that began within one window after a reload the load did not force
    (``actions``: ``{"at_s", "rule"}``); the goal is none."""
    unforced = [a["at_s"] for a in actions if a["rule"] in UNFORCED_RULES]
    return [
        w["start_s"]
        for w in windows
        if not w["slo_met"] and any(at - window_s < w["start_s"] <= at + window_s for at in unforced)
    ]


def step_to_serving(changes: list[float], actions: list[dict], end_s: float) -> list[float | None]:
    """Seconds from each change of load to the first action after it serving, within that change's span; None
    where no action came. An action's ``at_s`` is when the orchestrator logged it, after the load returned with
    the new config READY: the moment it serves (its ``apply_s`` is already inside)."""
    bounds = [*changes, end_s]
    out = []
    for i, t in enumerate(changes):
        first = next((a for a in sorted(actions, key=lambda a: a["at_s"]) if t <= a["at_s"] < bounds[i + 1]), None)
        out.append(None if first is None else round(first["at_s"] - t, 2))
    return out


def step_to_decision(changes: list[float], actions: list[dict], end_s: float) -> list[float | None]:
    """Seconds from each change of load to the decision of the first action after it (its log time less its
    apply time): how long the controller took to see the step, apart from the reload."""
    bounds = [*changes, end_s]
    out = []
    for i, t in enumerate(changes):
        first = next((a for a in sorted(actions, key=lambda a: a["at_s"]) if t <= a["at_s"] < bounds[i + 1]), None)
        out.append(None if first is None else round(first["at_s"] - first.get("apply_s", 0.0) - t, 2))
    return out


def frontier(points: dict[str, tuple[float, float]]) -> tuple[list[str], dict[str, list[str]]]:
    """Arms on the (windows met, served top-1) frontier, and for each arm the arms that dominate it: at least as
    good on both and strictly better on one."""
    dominated_by = {
        a: [b for b, q in points.items() if b != a and q[0] >= p[0] and q[1] >= p[1] and q != p]
        for a, p in points.items()
    }
    return [a for a in points if not dominated_by[a]], dominated_by


def timeline_top1(bench: Bench, start: ServingConfig, actions: list[tuple[float, str]], duration_s: float) -> float:
    """Top-1 of the served variant (the manifest's, on the held-out set) weighted by the time it served."""
    variants = bench.ctx.variants
    total, t, current = 0.0, 0.0, start.variant
    for at, variant in sorted(actions):
        at = min(max(at, 0.0), duration_s)
        total += variants[current].top1 * (at - t)
        t, current = at, variant
    total += variants[current].top1 * (duration_s - t)
    return total / duration_s


def run_arm(bench: Bench, scenario: Scenario, shape: Shape, arm: str, static: ServingConfig | None, tag: str) -> dict:
    rate = lambda t: shape.value(t) or shape.value(shape.duration_s - 1e-6)  # noqa: E731
    action_times: list[float] = []
    actions: list[tuple[float, str]] = []
    orch = None
    with bench.server(tag) as server:
        start_config = bench.applier(server).current()[1]
        if arm in ("static", "static_base") and static is not None:
            bench.set_config(server, static)
            start_config = static
            bench.settle(server, 2.0)
        if arm == "orchestrator":
            result, orch = bench.orchestrated(
                server, shape.duration_s, rate, log=bench.runs_dir / f"{tag}.jsonl", lead_in_s=10.0
            )
            for a in (r for r in orch.history if r["event"] == "action"):
                at = a["t_s"] - orch.load_started_s
                action_times.append(at)
                actions.append((at, a["after"]["variant"]))
        else:
            result = bench.load(server, shape.duration_s, rate)
    return summarize(bench, scenario, shape, result, arm, start_config, actions, action_times, orch)


def summarize(bench, scenario, shape, result: LoadResult, arm, start_config, actions, action_times, orch) -> dict:
    windows = result.windows(WINDOW_S, bench.slo_ms)
    met = sum(1 for w in windows if w["slo_met"])
    out = {
        "windows": len(windows),
        "share_meeting_slo": round(met / len(windows), 4) if windows else None,
        "share_meeting_slo_front_door": None,  # the suite serves one Triton directly; docs/fleet.md has the door
        "served_top1_time_weighted": round(timeline_top1(bench, start_config, actions, shape.duration_s), 4),
        "served_top1_measured": None if result.top1 is None else round(result.top1, 4),
        "failed_requests": len(result.failures),
        "requests": len(result.records),
        "p99_ms_whole_run": result.summary(bench.slo_ms)["p99_ms"],
        "missed_windows_start_s": [w["start_s"] for w in windows if not w["slo_met"]],
        "after_each_change": convergence(windows, change_points(shape), shape.duration_s, action_times),
        "missed_windows_per_change": missed_per_change(windows, change_points(shape), shape.duration_s),
        "generator": result.generator.report(),
        "start_config": start_config.describe(),
    }
    if orch is not None:
        acts = [r for r in orch.history if r["event"] == "action"]
        out.update(
            actions=len(acts),
            actions_during_load=sum(1 for t in action_times if t >= 0),
            action_rules=[a["rule"] for a in acts],
            action_times_s=[round(t, 1) for t in action_times],  # since the load started (negative: lead-in)
            variants_served=[v for _, v in actions],
            rollbacks=orch.rollbacks,
            final_config=orch.current.describe() if orch.current else None,
        )
        timed = [
            {"at_s": t, "rule": a["rule"], "apply_s": a.get("apply_s", 0.0)}
            for t, a in zip(action_times, acts, strict=True)
        ]
        out.update(
            step_to_serving_s=step_to_serving(change_points(shape), timed, shape.duration_s),
            step_to_decision_s=step_to_decision(change_points(shape), timed, shape.duration_s),
            missed_after_unforced_reload_start_s=missed_after_unforced(windows, timed, WINDOW_S),
        )
    else:
        out.update(actions=0, rollbacks=0)
    print(
        f"  {arm}: {met}/{len(windows)} windows met p99 ≤ {bench.slo_ms:g} ms, top-1 "
        f"{out['served_top1_time_weighted']}, {out['failed_requests']} failed"
        + (f", actions: {', '.join(map(str, out.get('action_rules') or [])) or 'none'}" if orch else ""),
        file=sys.stderr,
        flush=True,
    )
    return out


# static: the most accurate config holding the peak; static_base: the most accurate holding the base (what a user
# sizing for the usual load would pick); both run the whole scenario, as the orchestrator does.
ARMS = ("default", "static", "static_base", "orchestrator")
MEDIAN_FIELDS = ("share_meeting_slo", "served_top1_time_weighted", "failed_requests", "actions", "rollbacks")


def run_scenario(scenario: Scenario, args: argparse.Namespace) -> dict:
    floor = default_floor(args.repository, -1)
    runs_dir = args.runs_dir / scenario.name

    def make(floor: float) -> Bench:
        return Bench(
            args.repository,
            runs_dir,
            scenario.slo_ms,
            floor,
            headroom=scenario.headroom,
            batch=scenario.batch,
            interval_s=args.interval_s,
            standby=args.standby,
        )

    bench = make(floor)
    if scenario.whole_ladder:  # the floor admits every level: the controller may trade accuracy for capacity
        floor = min(v.top1 for v in bench.ctx.variants.values())
        bench = make(floor)
    levels = levels_of(bench)
    started = time.monotonic()
    with neighbour(scenario.neighbour):
        cal = calibrate(bench, scenario, levels, args.runs_dir)
        if args.calibrate_only:
            return {"scenario": scenario.name, "calibration": cal}
        capacity = Capacity(tuple(max(lv["rate_per_s"], 1.0) for lv in cal["levels"]))
        shape = scenario.shape(capacity)
        timeline = shape.timeline(1.0)
        peak, base = max(v for _, v in timeline), timeline[0][1]
        static_peak = best_static(bench, levels, peak, "peak")
        static_base = best_static(bench, levels, base, "base")
        statics = {
            "static": ServingConfig.from_dict(static_peak["config"]) if static_peak["config"] else None,
            "static_base": ServingConfig.from_dict(static_base["config"]) if static_base["config"] else None,
        }
        runs = []
        for i in range(args.repeats):
            runs.append(
                {
                    arm: run_arm(bench, scenario, shape, arm, statics.get(arm), f"r{i}-{arm}")
                    for arm in ARMS
                    if args.arms[arm]
                }
            )
    arms = [a for a in ARMS if args.arms[a]]
    med = {arm: {f: median([r[arm].get(f) for r in runs]) for f in MEDIAN_FIELDS} for arm in arms}
    for arm in arms:
        med[arm]["generator_valid_runs"] = sum(1 for r in runs if r[arm]["generator"]["valid"])
        med[arm]["generator_cpu_core_share"] = median([r[arm]["generator"]["cpu_core_share"] for r in runs])
    goals = {}
    front, dominated_by = frontier(
        {a: (med[a]["share_meeting_slo"] or 0.0, med[a]["served_top1_time_weighted"] or 0.0) for a in arms}
    )
    if "orchestrator" in arms:
        o = [r["orchestrator"] for r in runs]
        goals["not_dominated"] = not dominated_by["orchestrator"]
        steps_up = [i for i, (a, b) in enumerate(itertools.pairwise(change_values(shape))) if b > a]
        worst_missed = [max((r["missed_windows_per_change"][i] for i in steps_up), default=0) for r in o]
        goals["at_most_1_missed_window_per_step"] = median(worst_missed) <= 1
        unforced = [len(r["missed_after_unforced_reload_start_s"]) for r in o]
        goals["no_miss_after_unforced_reload"] = median(unforced) == 0
        serving = [r["step_to_serving_s"][i] for r in o for i in steps_up]
        med["orchestrator"]["step_to_serving_s_median"] = median([x for x in serving if x is not None])
        med["orchestrator"]["step_to_serving_s_worst"] = None if not serving or None in serving else max(serving)
        goals["step_to_serving_at_most_1_5_s"] = (
            bool(serving) and None not in serving and med["orchestrator"]["step_to_serving_s_median"] <= 1.5
        )
        goals["zero_failed"] = med["orchestrator"]["failed_requests"] == 0
        if not scenario.headroom:
            after = [r["orchestrator"]["after_each_change"] for r in runs]
            first = [a[0] for a in after if a]  # the step up
            secs = median([f["seconds_until_slo_holds"] for f in first]) if first else None
            acts = median([f["actions"] for f in first]) if first else None
            goals["step_at_most_2_actions_and_15_s"] = (
                secs is not None and secs <= 15 and acts is not None and acts <= 2
            )
    return {
        "scenario": scenario.name,
        "about": scenario.about,
        "slo_p99_ms": scenario.slo_ms,
        "headroom": scenario.headroom,
        "client_batch": scenario.batch,
        "neighbour": scenario.neighbour,
        "accuracy_floor": round(floor, 4),
        "ladder": [{"members": list(lv.members), "top1": lv.top1, "cheapest": lv.cheapest} for lv in levels],
        "calibration": cal,
        "load": shape.describe(),
        "peak_rate_per_s": round(peak, 1),
        "base_rate_per_s": round(base, 1),
        "static_best_at_peak": static_peak,
        "static_best_at_base": static_base,
        "repeats": args.repeats,
        "median": med,
        "frontier": front,
        "dominated_by": dominated_by,
        "goals": goals,
        "runs": runs,
        "wall_s": round(time.monotonic() - started, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="repeatable; default: all")
    ap.add_argument("--list", action="store_true", help="print the scenarios and exit")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/bench-scenarios"))
    ap.add_argument("--calibrate-only", action="store_true", help="measure (or show the cached) level capacities")
    ap.add_argument(
        "--interval-s", type=float, default=Bench.interval_s, help="the orchestrator's tick (default: %(default)s)"
    )
    ap.add_argument(
        "--standby",
        action=argparse.BooleanOptionalAction,
        default=Bench.standby,
        help="the orchestrator keeps the first rung down loaded beside the served variant (default: %(default)s)",
    )
    args = ap.parse_args()
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:16} {s.about}")
        return 0
    chosen = set(args.arms.split(","))
    if not chosen <= set(ARMS):
        ap.error(f"--arms: unknown {', '.join(sorted(chosen - set(ARMS)))}; choose from {', '.join(ARMS)}")
    args.arms = {a: a in chosen for a in ARMS}
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    names = args.scenario or list(SCENARIOS)
    results = {name: run_scenario(SCENARIOS[name], args) for name in names}
    out = {
        "benchmark": "scenarios",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "window_s": WINDOW_S,
        "orchestrator": {"interval_s": args.interval_s, "standby": args.standby},
        "scenarios": results,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
