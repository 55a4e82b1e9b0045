"""Goodput: the highest open-loop request rate whose p99 stays within the SLO, for (a) Triton's default config,
(b) the best static config an exhaustive sweep finds (the oracle) and (c) the orchestrator starting from the
default. Same model, same machine, one process; prints JSON.

    python bench/goodput.py [--repository model_repository] [--slo-ms 50] [--repeats 3]

The oracle sweep runs once (closed-loop clients, every config of the space, the constraint p99 ≤ SLO); then each
repeat searches rates for (a), (b), (c) on fresh Tritons. Every probe holds a constant open-loop rate for
``--converge-s`` + ``--measure-s`` and passes when the last ``--measure-s`` meet the SLO with no failure in the whole
probe: static configs and the orchestrator are judged over the same span after the same time under load, since a
rate near a config's limit can hold for 20 s and still not be sustainable (each stall of the machine leaves a
backlog it drains slowly). ``--static-warmup-s`` shortens the static arms' time before judging (quicker, flatters
them). Orchestrator probes start from the default config with the orchestrator on.

The orchestrator is attached ``--lead-in-s`` before the traffic starts, as in a deployment where it runs all along
(``--lead-in-s 0``: a cold start, Triton's default config meeting the full rate at once). Its rate is searched on a
grid down from the oracle's rate in steps of ``--paired-step`` (5%) of it; at each level the oracle's config (a
fresh Triton) and the orchestrator are probed in turn, and each arm's rate is the first level it holds. c/b paired
compares the two in the same minutes: probed half an hour apart, two shared cores hold a rate near their limit in
one and not the other, and sequential arms read that drift as a difference between them. c/b (over the oracle's
searched rate) is reported as well; ``--paired-step 0`` bisects between the default's and the oracle's rates
instead. Reported: rates per arm (median of repeats), the ratios b/a, c/a, c/b, c/b paired, and the orchestrator's
seconds to converge (from the first request) at its passing rate. A failed probe that looks like a stall of the
machine rather than an overload (nothing failed, p99 under 10× the SLO) is tried again (``--retries``, every arm
alike; see ``retry_blips``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Bench,
    add_headroom_argument,
    bracket,
    converged_after_s,
    default_floor,
    median,
    meets_slo,
    paired_descent,
    rate_search,
    retry_blips,
    search_below,
    timed,
)
from loadtest.measure import StabilityRule
from loadtest.openloop import constant
from loadtest.sweep import SweepGenerator, SweepSpace, run_sweep
from tritune.serving import ServingConfig


def oracle_sweep(bench: Bench, args) -> dict:
    variants = tuple(v for v, info in bench.ctx.variants.items() if info.top1 >= bench.floor)
    if args.variants:
        variants = tuple(v for v in args.variants.split(",") if v in variants)
    space = SweepSpace(
        variants=variants,
        instances=(1, 2),
        queue_delays_us=(None, 1000, 4000),
        preferred_batch_sizes=((),),
        concurrency=(4, 16, 64),
    )
    with bench.server("sweep") as server:
        applier = bench.applier(server)
        gen = SweepGenerator(space, applier.current()[1], bench.slo_ms)
        return run_sweep(
            gen,
            applier,
            server.http_url,
            "cnn",
            bench.images,
            bench.labels,
            rule=StabilityRule(window_s=2.0, max_windows=6),
            progress=lambda m: print(m, file=sys.stderr, flush=True),
            protocol="http",
        )


def config_from(d: dict) -> ServingConfig:
    return ServingConfig(
        variant=d["variant"],
        instances=d["instances"],
        threads=d.get("threads", 0),
        dynamic_batching=d["dynamic_batching"],
        max_queue_delay_us=d["max_queue_delay_us"],
        preferred_batch_sizes=tuple(d["preferred_batch_sizes"]),
    )


def static_probe(bench: Bench, server, rate: float, args, tag: str) -> tuple[bool, dict]:
    bench.settle(server)
    total = args.static_warmup_s + args.measure_s
    result = bench.load(server, total, constant(rate))
    ok, s = meets_slo(result, bench.slo_ms, skip_s=args.static_warmup_s)
    # A rate the generator could not send on schedule was not offered: no pass, whatever the p99.
    gen = result.generator.report()
    ok = ok and gen["valid"]
    print(
        f"  {tag}: {rate:7.1f} req/s → p99 {s['p99_ms']} ms {'ok' if ok else 'FAIL'}, "
        f"generator {gen['cpu_core_share']:.0%} of a core" + ("" if gen["valid"] else f" ({gen['invalid_because']})"),
        file=sys.stderr,
    )
    return ok, {
        "p99_ms": s["p99_ms"],
        "failed": s["failed"],
        "throughput_per_s": s["throughput_per_s"],
        "generator": gen,
    }


def static_max_rate(bench: Bench, config: ServingConfig | None, args, tag: str) -> tuple[float, list[dict]]:
    with bench.server(tag) as server:
        if config is not None:
            bench.set_config(server, config)
        probe = retry_blips(lambda r: static_probe(bench, server, r, args, tag), bench.slo_ms, args.retries)
        return rate_search(probe, args.start_rate, args.max_rate)


def fresh_static_probe(bench: Bench, config: ServingConfig, rate: float, args, tag: str) -> tuple[bool, dict]:
    """A static config on a Triton of its own, as each orchestrator probe has."""
    with bench.server(tag) as server:
        bench.set_config(server, config)
        return static_probe(bench, server, rate, args, tag)


def orchestrated_probe(bench: Bench, rate: float, args, tag: str) -> tuple[bool, dict]:
    with bench.server(tag) as server:
        total = args.converge_s + args.measure_s
        log = bench.runs_dir / f"{tag}-{rate:.0f}.jsonl"
        result, orch = bench.orchestrated(server, total, constant(rate), log=log, lead_in_s=args.lead_in_s)
        ok, s = meets_slo(result, bench.slo_ms, skip_s=args.converge_s)
        windows = result.windows(5.0, bench.slo_ms)
        info = {
            "p99_ms_last": s["p99_ms"],
            "failed": len(result.failures),
            "converged_after_s": converged_after_s(windows),
            "actions": [r["rule"] for r in orch.history if r["event"] == "action"],
            # seconds after traffic started (negative: during the lead-in, before any request)
            "action_times_s": [
                round(r["t_s"] - orch.history[0]["t_s"] - args.lead_in_s, 1)
                for r in orch.history
                if r["event"] == "action"
            ],
            "rollbacks": orch.rollbacks,
            "final_config": orch.current.describe() if orch.current else None,
            "generator": result.generator.report(),
        }
        ok = ok and info["failed"] == 0 and info["generator"]["valid"]
        print(
            f"  {tag}: {rate:7.1f} req/s → last {args.measure_s:g} s p99 {s['p99_ms']} ms {'ok' if ok else 'FAIL'}; "
            f"actions {info['actions']}; generator {info['generator']['cpu_core_share']:.0%} of a core",
            file=sys.stderr,
        )
        return ok, info


def orchestrator_max_rate(
    bench: Bench, a: float, b: float, oracle: ServingConfig, args, tag: str
) -> tuple[float, list[dict], float | None]:
    """(rate, trail, the oracle's rate probed beside it or None). Paired (``--paired-step`` > 0): one grid down
    from the oracle's rate, the oracle (fresh Triton) and the orchestrator probed in turn at each level. Otherwise
    the oracle's rate first, then bisection between the default's and the oracle's rates."""
    probe = retry_blips(lambda r: orchestrated_probe(bench, r, args, tag), bench.slo_ms, args.retries)
    if args.paired_step <= 0:
        c, trail = search_below(probe, a, b, args.bisect_steps)
        return c, trail, None
    ref = retry_blips(lambda r: fresh_static_probe(bench, oracle, r, args, f"{tag}-oracle"), bench.slo_ms, args.retries)
    b_paired, c, trail = paired_descent(ref, probe, b, a, args.paired_step, args.paired_levels)
    return c, trail, b_paired


def generator_summary(trail: list[dict]) -> dict:
    """The load generator's cost over a run's probes: the most it took of a core, and the probes it invalidated
    (failed because it could not send on schedule, whatever the server did)."""
    gens = [p["generator"] for p in trail if p.get("generator")]
    return {
        "cpu_core_share_max": max((g["cpu_core_share"] for g in gens), default=None),
        "probes": len(gens),
        "invalid_probes": sum(1 for g in gens if not g["valid"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--slo-ms", type=float, default=50.0)
    ap.add_argument("--accuracy-floor", type=float, default=-1, help="-1: one top-1 point below fp32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--static-warmup-s",
        type=float,
        default=None,
        help="static probes: seconds under load before the judged --measure-s (default: --converge-s, as the "
        "orchestrator; the first 3 s were skipped before this option existed)",
    )
    ap.add_argument("--start-rate", type=float, default=200.0)
    ap.add_argument(
        "--max-rate",
        type=float,
        default=12800.0,
        help="the static searches' ceiling: a rate that holds at the last doubling below it is a lower bound "
        "(reported under 'censored')",
    )
    ap.add_argument("--converge-s", type=float, default=60.0)
    ap.add_argument("--measure-s", type=float, default=20.0)
    ap.add_argument(
        "--lead-in-s",
        type=float,
        default=10.0,
        help="the orchestrator is attached to the default-configured Triton this long before traffic starts "
        "(0: both start together, a cold start under full load)",
    )
    add_headroom_argument(ap)
    ap.add_argument(
        "--retries",
        type=int,
        default=1,
        help="a failed probe that looks like a stall of the machine (nothing failed, p99 < 10x the SLO) is "
        "retried this often; a rate passes if any try passes (every arm alike; 0: single probes)",
    )
    ap.add_argument(
        "--bisect-steps",
        type=int,
        default=3,
        help="with --paired-step 0: the orchestrator's bisection steps between the default's and the oracle's "
        "rates (3: an eighth of the gap, as fine as the static arms' search near the oracle's rate)",
    )
    ap.add_argument(
        "--paired-step",
        type=float,
        default=0.05,
        help="the orchestrator's search: a grid down from the oracle's rate in this fraction of it, the oracle "
        "probed beside the orchestrator at each level (c/b paired; the machine's drift between arms cancels); "
        "0: bisection between the default's and the oracle's rates, arms minutes apart",
    )
    ap.add_argument("--paired-levels", type=int, default=6, help="grid levels below the oracle's rate")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/bench-goodput"))
    ap.add_argument(
        "--variants", default="", help="the sweep's variants (default: all above the floor); the orchestrator has all"
    )
    ap.add_argument("--oracle", type=Path, default=None, help="reuse a sweep.json instead of sweeping again")
    args = ap.parse_args()

    args.accuracy_floor = default_floor(args.repository, args.accuracy_floor)
    if args.static_warmup_s is None:  # every arm judged over the same span after the same time under load
        args.static_warmup_s = args.converge_s
    bench = Bench(args.repository, args.runs_dir, args.slo_ms, args.accuracy_floor, headroom=args.headroom)
    with timed() as t_sweep:
        sweep = json.loads(args.oracle.read_text()) if args.oracle else oracle_sweep(bench, args)
    (args.runs_dir / "sweep.json").write_text(json.dumps(sweep, indent=1))
    if not sweep["best"]:
        print(json.dumps({"error": "no config met the SLO in the sweep"}))
        return 1
    oracle = replace(config_from(sweep["best"]["config"]), threads=0)
    print(f"oracle: {oracle.describe()}", file=sys.stderr)

    runs = []
    for i in range(args.repeats):
        with timed() as t:
            a, a_trail = static_max_rate(bench, None, args, f"r{i}-default")
            b, b_trail = static_max_rate(bench, oracle, args, f"r{i}-oracle")
            c, c_trail, b_paired = orchestrator_max_rate(bench, a, b, oracle, args, f"r{i}-orchestrator")
        c_only = [p for p in c_trail if p.get("arm", "arm") == "arm"]
        passing = [p for p in c_only if p["ok"] and p["rate_per_s"] == round(c, 1)]
        # [highest passing, lowest failing above it]: how finely each rate was resolved
        brackets = {"default": bracket(a_trail, a), "oracle": bracket(b_trail, b), "orchestrator": bracket(c_only, c)}
        runs.append(
            {
                "default_max_rate_per_s": round(a, 1),
                "oracle_max_rate_per_s": round(b, 1),
                "orchestrator_max_rate_per_s": round(c, 1),
                "paired_oracle_rate_per_s": round(b_paired, 1) if b_paired else None,
                "c_over_b_paired": round(c / b_paired, 3) if b_paired else None,
                "orchestrator_converged_after_s": passing[0]["converged_after_s"] if passing else None,
                "orchestrator_actions": passing[0]["actions"] if passing else None,
                "orchestrator_final_config": passing[0]["final_config"] if passing else None,
                "brackets": brackets,
                # static arms whose rate is a lower bound: nothing above it failed (the search stopped at its ceiling)
                "censored": [arm for arm in ("default", "oracle") if brackets[arm][0] > 0 and brackets[arm][1] is None],
                "trails": {"default": a_trail, "oracle": b_trail, "orchestrator": c_trail},
                "generator": generator_summary(a_trail + b_trail + c_trail),
                "seconds": t.get("seconds"),
            }
        )
    a = median([r["default_max_rate_per_s"] for r in runs])
    b = median([r["oracle_max_rate_per_s"] for r in runs])
    c = median([r["orchestrator_max_rate_per_s"] for r in runs])
    conv = median([r["orchestrator_converged_after_s"] for r in runs])
    c_over_b_paired = median([r["c_over_b_paired"] for r in runs])  # median() skips None, None if none
    out = {
        "benchmark": "goodput",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "slo_p99_ms": args.slo_ms,
        "accuracy_floor": round(args.accuracy_floor, 4),
        "repeats": args.repeats,
        "orchestrator_lead_in_s": args.lead_in_s,
        "orchestrator_headroom": args.headroom,
        "retries_of_a_stall": args.retries,
        "search_ceiling_per_s": args.max_rate,
        "judged_s": {
            "span": args.measure_s,
            "static_after_s": args.static_warmup_s,
            "orchestrator_after_s": args.converge_s,
        },
        "oracle_config": oracle.describe(),
        "oracle_sweep": {
            "points": len(sweep["points"]),
            "seconds": t_sweep.get("seconds"),
            "best": sweep["best"],
            "baseline_best": sweep["baseline_best"],
        },
        "median": {
            "a_default_max_rate_per_s": a,
            "b_oracle_max_rate_per_s": b,
            "c_orchestrator_max_rate_per_s": c,
            "b_over_a": round(b / a, 2) if a else None,
            "c_over_a": round(c / a, 2) if a else None,
            "c_over_b": round(c / b, 2) if b else None,
            "c_over_b_paired": c_over_b_paired,
            "orchestrator_converged_after_s": conv,
            "generator_cpu_core_share_max": median([r["generator"]["cpu_core_share_max"] for r in runs]),
        },
        "generator_invalid_probes": sum(r["generator"]["invalid_probes"] for r in runs),
        "goals": {
            "c_over_a_ge_2": bool(a and c / a >= 2.0),
            "c_over_b_ge_0.95": bool(b and c / b >= 0.95),
            "c_over_b_paired_ge_0.95": None if c_over_b_paired is None else c_over_b_paired >= 0.95,
            "converged_within_60_s": conv is not None and conv <= 60,
        },
        "runs": runs,
    }
    print(json.dumps(out, indent=2))
    (args.runs_dir / "goodput.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
