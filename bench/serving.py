"""Triton-served throughput vs direct in-process ONNX Runtime for the same model, in one run; prints JSON.

* direct: the best of one ORT session × all cores and one session per core in parallel threads;
* served: the model through a real local Triton (Python backend + ORT), for each instance × thread setting that
  fits the cores, driven by closed-loop gRPC clients at a fixed batch; the best setting counts;
* ratio = served / direct (target ≥ 0.90 at batch ≥ 8);
* per-request overhead at batch 1 over HTTP and gRPC: median served latency − median direct latency;
* where the CPU goes while serving: seconds of CPU used by the load generator (this process), tritonserver and
  the Python-backend stubs, per second of wall time, plus Triton's own per-request breakdown (queue, input,
  infer, output) from its statistics API.

    python bench/serving.py [--repository model_repository] [--model cnn_fp32] [--batches 8,32] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builders import onnx_utils as ox
from builders.models import INPUT_NAME, OUTPUT_NAME
from tritune.client import InferenceClient
from tritune.server import ServerOptions, TritonServer

KEY = "bench-key"
CORES = os.cpu_count() or 1
CLK = os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user+system) per process of the server's group, from /proc, tagged server or stub."""
    totals: dict[int, tuple[str, float]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        kind = "stubs" if b"triton_python_backend_stub" in cmd else "tritonserver"
        totals[int(pid)] = (kind, (int(stat[11]) + int(stat[12])) / CLK)
    return totals


def cpu_delta(before: dict, after: dict) -> dict[str, float]:
    """CPU used between two samples; processes born in between count from zero."""
    out = {"tritonserver": 0.0, "stubs": 0.0}
    for pid, (kind, cpu) in after.items():
        out[kind] += cpu - before.get(pid, (kind, 0.0))[1]
    return out


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def direct_throughput(path: Path, batch: int, seconds: float, runs: int) -> dict:
    x = np.random.default_rng(0).random((batch, 3, 32, 32), dtype=np.float32)

    def measure(sessions: list) -> float:
        counts = [0] * len(sessions)
        stop = threading.Event()

        def loop(i, sess):
            while not stop.is_set():
                sess.run([OUTPUT_NAME], {INPUT_NAME: x})
                counts[i] += 1

        threads = [threading.Thread(target=loop, args=(i, s)) for i, s in enumerate(sessions)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        return sum(counts) * batch / (time.perf_counter() - start)

    layouts = {f"1x{CORES}": [ox.session(path, CORES)], f"{CORES}x1": [ox.session(path, 1) for _ in range(CORES)]}
    medians = {name: statistics.median(measure(s) for _ in range(runs)) for name, s in layouts.items()}
    best = max(medians, key=medians.get)
    return {"img_per_s": round(medians[best], 1), "layout": best, "all": {k: round(v, 1) for k, v in medians.items()}}


def served_throughput(server: TritonServer, model: str, batch: int, clients: int, seconds: float) -> dict:
    x = np.random.default_rng(0).random((batch, 3, 32, 32), dtype=np.float32)
    counts, errors = [0] * clients, []
    stop = threading.Event()

    def loop(i):
        with InferenceClient(server.grpc_url, "grpc") as c:
            c.infer(model, x)
            while not stop.is_set():
                try:
                    c.infer(model, x)
                    counts[i] += 1
                except Exception as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(1.5)  # warm-up: connections open, the previous instances' stubs gone
    c0, g0, n0, t0 = self_cpu_s(), group_cpu_s(server.proc.pid), sum(counts), time.perf_counter()
    time.sleep(seconds)
    c1, g1, n1, t1 = self_cpu_s(), group_cpu_s(server.proc.pid), sum(counts), time.perf_counter()
    stop.set()
    for t in threads:
        t.join()
    wall = t1 - t0
    used = cpu_delta(g0, g1)
    return {
        "img_per_s": round((n1 - n0) * batch / wall, 1),
        "errors": len(errors),
        "cpu_cores_used": {
            "load_generator": round((c1 - c0) / wall, 2),
            "tritonserver": round(used["tritonserver"] / wall, 2),
            "python_backend_stubs": round(used["stubs"] / wall, 2),
        },
    }


def server_breakdown_us(client: InferenceClient, model: str) -> dict:
    stats = client.model_stats(model)["model_stats"][0]["inference_stats"]
    n = max(int(stats["success"]["count"]), 1)
    return {
        k: round(int(stats[k]["ns"]) / n / 1000, 1)
        for k in ("queue", "compute_input", "compute_infer", "compute_output", "success")
    }


def latency_ms(fn, n: int) -> float:
    fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--model", default="cnn_fp32")
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--runs", type=int, default=5, help="direct ORT runs per layout (median)")
    ap.add_argument("--latency-requests", type=int, default=300)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    onnx_path = args.repository / args.model / "1" / "model.onnx"
    if not onnx_path.exists():
        sys.exit(f"{onnx_path} missing: run `tritune build` first")

    result: dict = {"benchmark": "serving", "model": args.model, "cores": CORES, "batches": {}}
    settings = [(i, CORES // i) for i in range(1, CORES + 1) if CORES % i == 0]  # instances × threads = cores
    with (
        tempfile.TemporaryDirectory() as cache,
        TritonServer(
            ServerOptions(
                repository=args.repository,
                models=(args.model,),
                admin_key=KEY,
                cache_dir=Path(cache),
            )
        ) as server,
    ):
        admin = InferenceClient(server.http_url, admin_key=KEY, timeout_s=120)
        base = admin.model_config(args.model)
        for batch in batches:
            direct = direct_throughput(onnx_path, batch, args.seconds / 2, args.runs)
            served = {}
            for instances, threads in settings:
                admin.load(
                    args.model,
                    config=replace(
                        base.with_instances(instances),
                        parameters={**base.parameters, "intra_op_num_threads": str(threads)},
                    ),
                )
                served[f"{instances}x{threads}"] = served_throughput(
                    server, args.model, batch, 2 * instances, args.seconds
                )
            best = max(served, key=lambda k: served[k]["img_per_s"])
            result["batches"][str(batch)] = {
                "direct_ort": direct,
                "triton": {"best_setting": best, **served[best], "all": served},
                "ratio_triton_to_direct": round(served[best]["img_per_s"] / direct["img_per_s"], 3),
            }
        # Per-request overhead at batch 1, one client, one instance with all cores (same as direct 1×cores).
        admin.load(args.model, config=replace(base, parameters={**base.parameters, "intra_op_num_threads": str(CORES)}))
        x1 = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
        sess = ox.session(onnx_path, CORES)
        direct_ms = latency_ms(lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: x1}), args.latency_requests)
        overhead = {"direct_ort_ms": round(direct_ms, 3)}
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            with InferenceClient(url, protocol) as c:
                ms = latency_ms(lambda c=c: c.infer(args.model, x1), args.latency_requests)
            overhead[f"{protocol}_ms"] = round(ms, 3)
            overhead[f"{protocol}_overhead_ms"] = round(ms - direct_ms, 3)
        overhead["server_side_us_per_request"] = server_breakdown_us(admin, args.model)
        result["batch_1_overhead"] = overhead
        admin.close()
    result["target"] = {"ratio_at_batch_ge_8": 0.90}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
