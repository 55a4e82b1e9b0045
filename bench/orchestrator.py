"""The orchestrator at a fixed offered load above the default config's capacity; prints JSON.

Each repeat starts a fresh local Triton with the public model in its default config (one instance, no dynamic
batching), then: (a) "before": the default config under the load, (b) "after": the same load with the
orchestrator running. Reported per repeat and as medians: client-side p99 and goodput (requests within the SLO
per second) before and after, seconds until every later 5-s window met the SLO, actions, rollbacks, failed
requests. The load generator is open loop (latency from the scheduled send time) on the same machine.

    python bench/orchestrator.py [--repository model_repository] [--rate 620] [--slo-ms 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import converged_after_s
from builders.data import load_dataset
from loadtest.openloop import OpenLoopLoad, constant
from orchestrator.loop import LoopOptions, Orchestrator
from orchestrator.policy import Context, ControllerConfig, GuardConfig, Objective, variants_from_manifest
from tritune.apply import Applier
from tritune.client import InferenceClient
from tritune.manifest import Manifest
from tritune.server import ServerOptions, TritonServer

KEY = "bench-key"


def one_run(args, data, ctx: Context, index: int) -> dict:
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    triton_log = args.runs_dir / f"triton-{index}.log"
    options = ServerOptions(
        repository=args.repository,
        models=("cnn",),
        admin_key=KEY,
        log_path=triton_log,
        cache_dir=args.runs_dir / "cache",
    )
    with TritonServer(options) as server, tempfile.TemporaryDirectory() as cache:
        images, labels = data.x_test, data.y_test
        before = OpenLoopLoad(server.grpc_url, "cnn", images, labels).run(args.before_s, constant(args.rate))
        # let the default config drain its backlog so both phases start from an empty queue
        OpenLoopLoad(server.grpc_url, "cnn", images).run(8, constant(1))
        client = InferenceClient(server.grpc_url, "grpc", admin_key=KEY, timeout_s=120)
        log = Path(cache) / "decisions.jsonl"
        orch = Orchestrator(
            Applier(client, "cnn"),
            ctx,
            LoopOptions(
                model="cnn",
                metrics_url=server.metrics_url,
                interval_s=args.interval_s,
                decision_log=log,
                controller=ControllerConfig(guards=GuardConfig(upscale_delay_s=2, downscale_delay_s=300, cooldown_s=5)),
            ),
        )
        loop = threading.Thread(target=orch.run, args=(args.after_s + 10,))
        loop.start()
        after = OpenLoopLoad(server.grpc_url, "cnn", images, labels).run(args.after_s, constant(args.rate))
        orch.stop()
        loop.join(timeout=60)
        windows = after.windows(5.0, args.slo_ms)
        triton_exit = server.proc.poll() if server.proc else None
        steady_from = args.after_s - args.steady_s
        actions = [r for r in orch.history if r["event"] == "action"]
        return {
            "before_default": before.summary(args.slo_ms, skip_s=2.0),
            "after_orchestrated_steady": after.summary(args.slo_ms, skip_s=steady_from),
            "after_orchestrated_whole_run": after.summary(args.slo_ms),
            "converged_after_s": converged_after_s(windows),
            "actions": len(actions),
            "rollbacks": orch.state.rollbacks,
            "action_rules": [a["rule"] for a in actions],
            "apply_seconds": [a["apply_s"] for a in actions],
            "final_config": orch.current.describe() if orch.current else None,
            "failed_requests": len(before.failures) + len(after.failures),
            "failure_samples": sorted({r.error for r in before.failures + after.failures})[:3],
            "triton_exited_during_run": triton_exit,  # None: still running at the end, as it should be
            "triton_log": str(triton_log),
            "windows_5s": windows,
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--rate", type=float, default=620.0, help="offered requests/s (batch 1)")
    ap.add_argument("--slo-ms", type=float, default=100.0)
    ap.add_argument("--accuracy-floor", type=float, default=0.0)
    ap.add_argument("--before-s", type=float, default=15.0)
    ap.add_argument("--after-s", type=float, default=60.0)
    ap.add_argument("--steady-s", type=float, default=20.0, help="the last seconds of the run that count as 'after'")
    ap.add_argument("--interval-s", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/bench-orchestrator"), help="Triton logs per run")
    args = ap.parse_args()

    manifest = Manifest.read(args.repository)
    data = load_dataset(manifest.dataset["name"], manifest.data_dir)
    ctx = Context(
        objective=Objective(args.slo_ms, args.accuracy_floor),
        variants=variants_from_manifest(manifest),
        cores=os.cpu_count() or 1,
        headroom=False,  # the ladder's reaction to an overload from Triton's default, not capacity set up before it
    )
    runs = [one_run(args, data, ctx, i) for i in range(args.repeats)]

    def med(path: list[str]):
        values = []
        for r in runs:
            v = r
            for k in path:
                v = v.get(k) if isinstance(v, dict) else None
            if v is not None:
                values.append(v)
        return statistics.median(values) if values else None

    print(
        json.dumps(
            {
                "benchmark": "orchestrator",
                "offered_rate_per_s": args.rate,
                "slo_p99_ms": args.slo_ms,
                "accuracy_floor": args.accuracy_floor,
                "cores": os.cpu_count(),
                "repeats": args.repeats,
                "median": {
                    "p99_ms_before": med(["before_default", "p99_ms"]),
                    "p99_ms_after": med(["after_orchestrated_steady", "p99_ms"]),
                    "goodput_per_s_before": med(["before_default", "goodput_per_s"]),
                    "goodput_per_s_after": med(["after_orchestrated_steady", "goodput_per_s"]),
                    "converged_after_s": med(["converged_after_s"]),
                    "actions": med(["actions"]),
                    "rollbacks": med(["rollbacks"]),
                    "failed_requests": med(["failed_requests"]),
                },
                "runs": runs,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
