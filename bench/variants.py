"""Benchmark the built variants in-process with ONNX Runtime; prints JSON.

For each variant: top-1 on the held-out set (recomputed from the ONNX file), parameters, FLOPs, file bytes,
throughput at batch 1 and 32 (median of --runs runs, variants interleaved round-robin so drift hits all alike),
and the ratio to fp32 measured in the same run. Targets (2-core CPU): int8 ≥ 1.3× and pruned ≥ 1.4× fp32 at
batch 32; pruned and int8 within 1 top-1 point of fp32.

    python bench/variants.py [--repository model_repository] [--runs 7] [--build]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builders import onnx_utils as ox
from builders.data import load_dataset
from builders.train import top1
from tritune.compare import ladder, ordered, unpack
from tritune.manifest import MANIFEST, Manifest
from tritune.model_io import INPUT_NAME, OUTPUT_NAME

TARGETS = {"int8_speedup_b32": 1.3, "pruned_speedup_b32": 1.4, "max_accuracy_loss_points": 1.0, "ladder_levels": 3}


def throughput(sess, batch: int, seconds: float) -> float:
    x = np.random.default_rng(batch).random((batch, 3, 32, 32), dtype=np.float32)
    sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        n += 1
    return n * batch / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--runs", type=int, default=7, help="runs per (variant, batch); the median is reported (>= 5)")
    ap.add_argument("--seconds", type=float, default=0.5, help="length of one run")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--build", action="store_true", help="run `tritune build` first if there is no manifest")
    args = ap.parse_args()

    if args.build and not (args.repository / MANIFEST).exists():
        from builders.build import BuildOptions, build

        build(BuildOptions(repository=args.repository), log=lambda m: print(m, file=sys.stderr))
    manifest = Manifest.read(args.repository)
    ds = manifest.dataset
    data = load_dataset(ds["name"] if ds["name"] in ("cifar10", "digits") else "auto", manifest.data_dir)
    variants = manifest.variants
    sessions = {
        name: ox.session(args.repository / v.model_name / "1" / "model.onnx", args.threads)
        for name, v in variants.items()
    }
    samples: dict[str, dict[int, list[float]]] = {n: {1: [], 32: []} for n in sessions}
    for _ in range(max(args.runs, 5)):
        for batch in (1, 32):
            for name, sess in sessions.items():
                samples[name][batch].append(throughput(sess, batch, args.seconds))

    results = {}
    for name, v in variants.items():
        acc = top1(ox.run_onnx(sessions[name], data.x_test), data.y_test)
        results[name] = {
            "top1": round(acc, 4),
            "parameters": v.parameters,
            "flops": v.flops,
            "file_bytes": v.file_bytes,
            "throughput_img_per_s": {f"batch_{b}": round(float(np.median(s)), 1) for b, s in samples[name].items()},
        }
    base = results.get("fp32")
    if base:
        for r in results.values():
            r["speedup_vs_fp32"] = {
                k: round(r["throughput_img_per_s"][k] / base["throughput_img_per_s"][k], 3)
                for k in ("batch_1", "batch_32")
            }
            r["top1_delta_points"] = round((r["top1"] - base["top1"]) * 100, 2)
    checks = {}
    if base and "int8" in results:
        checks["int8_speedup_b32"] = results["int8"]["speedup_vs_fp32"]["batch_32"] >= TARGETS["int8_speedup_b32"]
        checks["int8_accuracy"] = results["int8"]["top1_delta_points"] >= -TARGETS["max_accuracy_loss_points"]
    if base and "pruned" in results:
        checks["pruned_speedup_b32"] = results["pruned"]["speedup_vs_fp32"]["batch_32"] >= TARGETS["pruned_speedup_b32"]
        checks["pruned_accuracy"] = results["pruned"]["top1_delta_points"] >= -TARGETS["max_accuracy_loss_points"]
        checks["pruned_params_flops_reduced_40pct"] = (
            results["pruned"]["parameters"] <= 0.6 * base["parameters"]
            and results["pruned"]["flops"] <= 0.6 * base["flops"]
        )
    # The accuracy ladder by the paired test on the manifest's per-image results; cost: this run's batch-32 time.
    levels = ladder(
        {
            name: (
                v.top1,
                unpack(v.correct) if v.correct else None,
                1.0 / results[name]["throughput_img_per_s"]["batch_32"],
            )
            for name, v in variants.items()
        }
    )
    checks["ladder_three_separated_levels"] = len(levels) >= TARGETS["ladder_levels"]
    checks["ladder_each_level_faster"] = ordered(levels)
    print(
        json.dumps(
            {
                "benchmark": "variants",
                "dataset": {"name": ds["name"], "held_out_images": ds["held_out_images"]},
                "machine": {"cpus": os.cpu_count(), "ort_threads": args.threads},
                "runs": max(args.runs, 5),
                "variants": results,
                "ladder": [
                    {
                        "members": list(lv.members),
                        "top1": lv.top1,
                        "cheapest": lv.cheapest,
                        "img_per_s_batch_32": results[lv.cheapest]["throughput_img_per_s"]["batch_32"],
                        "p_vs_level_above": None if lv.p_vs_above is None else float(f"{lv.p_vs_above:.3g}"),
                    }
                    for lv in levels
                ],
                "targets": TARGETS,
                "targets_met": checks,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
