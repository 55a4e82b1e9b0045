"""Record the windows tests/unit/test_capacity.py replays: one real Triton at a fixed open-loop load, first on the
most accurate variant, then on a cheaper one (what the orchestrator does under pressure), scraped every 2 s.

    .venv/bin/python tests/data/record_capacity_windows.py --rate 400 > tests/data/capacity_windows.json

Needs the full repository (`tritune build`).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from loadtest.openloop import OpenLoopLoad, constant
from orchestrator.loop import scrape
from orchestrator.metrics import parse_metrics, window
from tritune.apply import Applier
from tritune.client import InferenceClient
from tritune.manifest import Manifest
from tritune.server import ServerOptions, TritonServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--rate", type=float, default=250.0)
    ap.add_argument("--phase-s", type=float, default=14.0)
    ap.add_argument("--accurate", default="fp32", help="the variant served first (the test's most accurate one)")
    ap.add_argument("--cheaper", default="pruned", help="the cheaper variant the orchestrator steps down to")
    args = ap.parse_args()
    manifest = Manifest.read(args.repository)
    variants = {n: {"top1": v.top1, "latency_ms_b32": v.latency_ms_b32} for n, v in manifest.variants.items()}
    accurate = args.accurate
    images = np.random.default_rng(0).random((256, 3, 32, 32), dtype=np.float32)
    server = TritonServer(ServerOptions(repository=args.repository, models=("cnn",), admin_key="k",
                                        cache_dir=Path(".cache/tritune"))).start()  # fmt: skip
    phases = []
    try:
        applier = Applier(InferenceClient(server.grpc_url, "grpc", admin_key="k", timeout_s=120), "cnn")
        base = replace(applier.current()[1], instances=1, threads=0, dynamic_batching=True, max_queue_delay_us=1000)
        for variant in (accurate, args.cheaper):
            config = replace(base, variant=variant)
            assert applier.apply(config).ok
            load = OpenLoopLoad(server.grpc_url, "cnn", images)
            t = threading.Thread(target=load.run, args=(args.phase_s + 2, constant(args.rate)))
            t.start()
            time.sleep(2.0)
            prev = parse_metrics(scrape(server.metrics_url), time.monotonic())
            windows = []
            while len(windows) < int(args.phase_s // 2):
                time.sleep(2.0)
                cur = parse_metrics(scrape(server.metrics_url), time.monotonic())
                windows.append(window(prev, cur, "cnn").summary())
                prev = cur
            t.join()
            phases.append({"config": config.describe(), "windows": windows})
    finally:
        server.stop()
    print(json.dumps({
        "recorded_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "rate_per_s": args.rate,
        "variants": variants,
        "accurate": accurate,
        "phases": phases,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
