"""Adaptation: a step load (1× → 4× → 1×) and a spike, against the static default, the static oracle and the
orchestrator; the share of 5-s windows meeting the SLO, failed requests, actions. One process; prints JSON.

    python bench/adaptation.py [--repository model_repository] [--oracle runs/bench-goodput/sweep.json]

Open-loop load (latency from the scheduled send), each arm on a fresh Triton, arms interleaved per repeat; medians
over ``--repeats``. The oracle is the best static config of a sweep (``bench/goodput.py`` writes one); without
``--oracle`` a small sweep runs first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import WINDOW_S, Bench, add_headroom_argument, default_floor, median
from bench.goodput import config_from
from loadtest.measure import StabilityRule
from loadtest.shapes import SpikeShape, StepShape
from loadtest.sweep import SweepGenerator, SweepSpace, run_sweep


def small_sweep(bench: Bench) -> dict:
    variants = tuple(v for v, info in bench.ctx.variants.items() if info.top1 >= bench.floor)
    space = SweepSpace(variants=variants, instances=(1, 2), queue_delays_us=(None, 2000), concurrency=(16, 64))
    with bench.server("sweep") as server:
        applier = bench.applier(server)
        gen = SweepGenerator(space, applier.current()[1], bench.slo_ms)
        return run_sweep(
            gen, applier, server.http_url, "cnn", bench.images, bench.labels, rule=StabilityRule(), protocol="http"
        )


def run_arm(bench: Bench, arm: str, shape, oracle, tag: str, lead_in_s: float = 0.0) -> dict:
    rate = lambda t: shape.value(t) or shape.value(shape.duration_s - 1e-6)  # noqa: E731
    with bench.server(tag) as server:
        orch = None
        if arm == "oracle":
            bench.set_config(server, oracle)
            bench.settle(server, 2.0)
        if arm == "orchestrator":
            result, orch = bench.orchestrated(
                server, shape.duration_s, rate, log=bench.runs_dir / f"{tag}.jsonl", lead_in_s=lead_in_s
            )
        else:
            result = bench.load(server, shape.duration_s, rate)
    windows = result.windows(WINDOW_S, bench.slo_ms)
    met = sum(1 for w in windows if w["slo_met"])
    out = {
        "windows": len(windows),
        "windows_meeting_slo": met,
        "share_meeting_slo": round(met / len(windows), 4) if windows else None,
        "failed_requests": len(result.failures),
        "requests": len(result.records),
        "p99_ms_whole_run": result.summary(bench.slo_ms)["p99_ms"],
        "missed_windows_start_s": [w["start_s"] for w in windows if not w["slo_met"]],
        # the generator shares the server's cores: its CPU share and send lag say whether it, not Triton, set the
        # figures (invalid where it could not send on schedule)
        "generator": result.generator.report(),
    }
    if orch is not None:
        acts = [r for r in orch.history if r["event"] == "action"]
        out.update(
            actions=len(acts),
            action_rules=[a["rule"] for a in acts],
            # seconds after the load started (negative: during the lead-in, before any request)
            action_times_s=[round(a["t_s"] - orch.history[0]["t_s"] - lead_in_s, 1) for a in acts],
            rollbacks=orch.rollbacks,
            final_config=orch.current.describe() if orch.current else None,
        )
    print(
        f"  {tag}: {met}/{len(windows)} windows met p99 ≤ {bench.slo_ms:g} ms, {out['failed_requests']} failed, "
        f"generator {out['generator']['cpu_core_share']:.0%} of a core"
        + ("" if out["generator"]["valid"] else f" (INVALID: {out['generator']['invalid_because']})")
        + (f", actions {out.get('action_rules')}" if orch else ""),
        file=sys.stderr,
        flush=True,
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--slo-ms", type=float, default=50.0)
    ap.add_argument("--accuracy-floor", type=float, default=-1, help="-1: one top-1 point below fp32")
    ap.add_argument("--base-rate", type=float, default=150.0, help="1× in requests/s (batch 1)")
    ap.add_argument("--step-s", type=float, default=40.0, help="seconds at each level of the 1× → 4× → 1× step")
    ap.add_argument("--spike-factor", type=float, default=5.0)
    ap.add_argument("--spike-s", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--lead-in-s",
        type=float,
        default=10.0,
        help="the orchestrator is attached this long before the load starts, as in a deployment where it runs all "
        "along (0: both start together); the oracle arm gets its config before the load too",
    )
    add_headroom_argument(ap)
    ap.add_argument("--oracle", type=Path, default=None, help="a sweep.json whose best config is the oracle")
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/bench-adaptation"))
    args = ap.parse_args()

    args.accuracy_floor = default_floor(args.repository, args.accuracy_floor)
    bench = Bench(args.repository, args.runs_dir, args.slo_ms, args.accuracy_floor, headroom=args.headroom)
    sweep = json.loads(args.oracle.read_text()) if args.oracle else small_sweep(bench)
    oracle = config_from(sweep["best"]["config"])
    b = args.base_rate
    loads = {
        "step_1x_4x_1x": StepShape(duration_s=3 * args.step_s, values=(b, 4 * b, b), step_s=args.step_s),
        "spike": SpikeShape(
            duration_s=20 + args.spike_s + 30, base=b, peak=args.spike_factor * b, at_s=20, spike_s=args.spike_s
        ),
    }
    arms = ("default", "oracle", "orchestrator")
    runs = []
    for i in range(args.repeats):
        run = {}
        for load_name, shape in loads.items():
            run[load_name] = {
                arm: run_arm(bench, arm, shape, oracle, f"r{i}-{load_name}-{arm}", args.lead_in_s) for arm in arms
            }
        runs.append(run)
    summary = {
        load: {
            arm: {
                "share_meeting_slo": median([r[load][arm]["share_meeting_slo"] for r in runs]),
                "failed_requests": median([r[load][arm]["failed_requests"] for r in runs]),
                "generator_cpu_core_share": median([r[load][arm]["generator"]["cpu_core_share"] for r in runs]),
                "generator_valid_runs": sum(1 for r in runs if r[load][arm]["generator"]["valid"]),
                **(
                    {
                        "actions": median([r[load][arm]["actions"] for r in runs]),
                        "rollbacks": median([r[load][arm]["rollbacks"] for r in runs]),
                    }
                    if arm == "orchestrator"
                    else {}
                ),
            }
            for arm in arms
        }
        for load in loads
    }
    out = {
        "benchmark": "adaptation",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "slo_p99_ms": args.slo_ms,
        "accuracy_floor": round(args.accuracy_floor, 4),
        "window_s": WINDOW_S,
        "loads": {k: v.describe() for k, v in loads.items()},
        "oracle_config": oracle.describe(),
        "orchestrator_lead_in_s": args.lead_in_s,
        "orchestrator_headroom": args.headroom,
        "repeats": args.repeats,
        "median": summary,
        "goal_orchestrator_ge_99pct_and_0_failed": all(
            summary[load]["orchestrator"]["share_meeting_slo"] >= 0.99
            and summary[load]["orchestrator"]["failed_requests"] == 0
            for load in loads
        ),
        "runs": runs,
    }
    print(json.dumps(out, indent=2))
    (args.runs_dir / "adaptation.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
