"""Zero-loss reconfiguration: at least 20 config changes under steady open-loop load (instances up and down,
dynamic batching on/off and its delay, variant swaps), through the orchestrator's own applier. Prints JSON.

    python bench/reconfig.py [--repository model_repository] [--rate 250] [--cycles 2] [--repeats 3]

For every change: its kind, the apply time (load_model → READY → read back) and whether Triton reloaded the model
or changed it in place. Triton logs ``loading: cnn:N`` for both; a full reload initializes every instance of the new
copy, an in-place change (Triton 2.51 makes one when only the instance count differs) only the instances it adds, so the
count of ``TRITONBACKEND_ModelInstanceInitialize`` lines against the target's instances tells them apart. Latency: p99
of requests scheduled in reconfiguration windows (from the apply until 2 s after it returned) against the p99 of
all other requests (steady state), and split by the change's mode (in-place vs full-reload windows). Failed
requests must be 0. Each run reports its load generator's CPU share and send lag (``generator``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Bench, median
from loadtest.openloop import OpenLoopLoad, constant
from tritune import slo
from tritune.serving import ServingConfig

AFTER_S = 2.0  # a reconfiguration window lasts until this long after the apply returned


def schedule(fast: str) -> list[tuple[str, ServingConfig]]:
    """One cycle: every kind of change the orchestrator makes, each undone again (12 changes)."""
    base = ServingConfig("fp32")
    db = replace(base, dynamic_batching=True, max_queue_delay_us=500, preferred_batch_sizes=(4, 8, 16))
    steps = [
        ("enable-batching", db),
        ("instances 1→2", replace(db, instances=2)),
        ("lengthen-delay", replace(db, instances=2, max_queue_delay_us=2000)),
        (f"variant fp32→{fast}", replace(db, instances=2, max_queue_delay_us=2000, variant=fast)),
        ("variant →int8", replace(db, instances=2, max_queue_delay_us=2000, variant="int8")),
        ("variant →fp32", replace(db, instances=2, max_queue_delay_us=2000)),
        ("shorten-delay", replace(db, instances=2)),
        ("instances 2→1", db),
        ("instances 1→2 (threads fixed)", replace(db, instances=2, threads=1)),
        ("instances 2→1 (threads fixed)", replace(db, instances=1, threads=1)),
        ("threads 1→auto", db),
        ("disable-batching", base),
    ]
    return steps


def reload_mode(log_chunk: str, target_instances: int) -> str:
    """'full-reload' when the new copy initialized all its instances; 'in-place' when Triton only added (or removed)
    instances of the serving copy."""
    initialized = log_chunk.count("TRITONBACKEND_ModelInstanceInitialize:")
    return "full-reload" if initialized >= target_instances else "in-place"


def one_run(bench: Bench, args, index: int) -> dict:
    steps = schedule(args.fast_variant) * args.cycles
    duration = args.warmup_s + len(steps) * args.every_s + args.tail_s
    changes: list[dict] = []
    with bench.server(f"r{index}") as server:
        applier = bench.applier(server)
        load = OpenLoopLoad(server.grpc_url, "cnn", bench.images, bench.labels)
        holder: dict = {}
        loader = threading.Thread(target=lambda: holder.update(r=load.run(duration, constant(args.rate))))
        t0 = time.perf_counter()
        loader.start()
        time.sleep(args.warmup_s)
        log_path = server.log_path
        for kind, target in steps:
            due = t0 + args.warmup_s + len(changes) * args.every_s
            time.sleep(max(0.0, due - time.perf_counter()))
            log_before = log_path.stat().st_size
            start = time.perf_counter() - t0
            res = applier.apply(target)
            end = time.perf_counter() - t0
            time.sleep(0.3)  # Triton logs the instances it initialized before it reports READY; a margin anyway
            with log_path.open() as fh:
                fh.seek(log_before)
                new_log = fh.read()
            mode = reload_mode(new_log, target.instances)
            changes.append(
                {
                    "kind": kind,
                    "ok": res.ok,
                    "error": res.error,
                    "apply_s": round(res.seconds, 3),
                    "mode": mode,
                    "start_s": round(start, 2),
                    "end_s": round(end, 2),
                }
            )
            print(
                f"  r{index} {kind:32s} {'ok' if res.ok else 'FAILED'} {res.seconds:6.2f} s {mode.replace('-', ' ')}",
                file=sys.stderr,
                flush=True,
            )
        loader.join()
    result = holder["r"]
    sched = np.array([r.scheduled_s for r in result.records])
    in_mode = {"full-reload": np.zeros(len(sched), dtype=bool), "in-place": np.zeros(len(sched), dtype=bool)}
    for c in changes:
        in_mode[c["mode"]] |= (sched >= c["start_s"]) & (sched < c["end_s"] + AFTER_S)
    in_reconf = in_mode["full-reload"] | in_mode["in-place"]
    lat = np.array([r.latency_ms for r in result.records])
    ok = np.array([r.ok for r in result.records])
    warm = sched >= 2.0

    def pct(mask, q):
        return slo.percentile_ms(lat[mask & ok & warm], q)

    def by_mode(mode):
        return [c["apply_s"] for c in changes if c["mode"] == mode and c["ok"]]

    return {
        "reconfigurations": len(changes),
        "failed_applies": sum(1 for c in changes if not c["ok"]),
        "requests": len(result.records),
        "failed_requests": len(result.failures),
        "failure_samples": sorted({r.error for r in result.failures})[:3],
        "p99_ms_reconfiguration_windows": pct(in_reconf, 99),
        "p99_ms_steady_state": pct(~in_reconf, 99),
        "p99_ms_full_reload_windows": pct(in_mode["full-reload"], 99),
        "p99_ms_in_place_windows": pct(in_mode["in-place"], 99),
        "p50_ms_reconfiguration_windows": pct(in_reconf, 50),
        "p50_ms_steady_state": pct(~in_reconf, 50),
        "apply_s_full_reload_median": median(by_mode("full-reload")),
        "apply_s_in_place_median": median(by_mode("in-place")),
        "full_reloads": len(by_mode("full-reload")),
        "in_place": len(by_mode("in-place")),
        # the generator shares the server's cores: its CPU share and send lag say whether it, not Triton, set the
        # latencies; a run whose generator fell behind did not offer the rate it claims
        "generator": result.generator.report(),
        "changes": changes,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--rate", type=float, default=250.0, help="steady open-loop requests/s (batch 1)")
    ap.add_argument("--every-s", type=float, default=5.0, help="seconds between reconfigurations")
    ap.add_argument("--cycles", type=int, default=2, help="12 changes per cycle")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--tail-s", type=float, default=5.0)
    ap.add_argument("--fast-variant", default="pruned")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slo-ms", type=float, default=50.0)
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/bench-reconfig"))
    args = ap.parse_args()
    bench = Bench(args.repository, args.runs_dir, args.slo_ms, 0.0)
    runs = [one_run(bench, args, i) for i in range(args.repeats)]
    keys = (
        "reconfigurations",
        "failed_applies",
        "failed_requests",
        "p99_ms_reconfiguration_windows",
        "p99_ms_steady_state",
        "p99_ms_full_reload_windows",
        "p99_ms_in_place_windows",
        "p50_ms_reconfiguration_windows",
        "p50_ms_steady_state",
        "apply_s_full_reload_median",
        "apply_s_in_place_median",
        "full_reloads",
        "in_place",
    )
    by_kind: dict[str, list[float]] = {}
    modes: dict[str, set[str]] = {}
    for r in runs:
        for c in r["changes"]:
            if c["ok"]:
                by_kind.setdefault(c["kind"], []).append(c["apply_s"])
                modes.setdefault(c["kind"], set()).add(c["mode"])
    out = {
        "benchmark": "reconfig",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "offered_rate_per_s": args.rate,
        "reconfiguration_window": f"from the apply until {AFTER_S:g} s after it returned",
        "repeats": args.repeats,
        "median": {k: median([r[k] for r in runs]) for k in keys},
        "total_failed_requests": sum(r["failed_requests"] for r in runs),
        "generator_cpu_core_share": median([r["generator"]["cpu_core_share"] for r in runs]),
        "generator_valid_runs": sum(1 for r in runs if r["generator"]["valid"]),
        "apply_s_median_by_kind": {
            k: {"apply_s": round(median(v), 3), "mode": "/".join(sorted(modes[k]))} for k, v in by_kind.items()
        },
        "runs": runs,
    }
    print(json.dumps(out, indent=2))
    (args.runs_dir / "reconfig.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
