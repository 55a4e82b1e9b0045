"""Benchmark the built variants in-process with ONNX Runtime; prints JSON.

For each variant: top-1 on the held-out set (recomputed from the ONNX file), parameters, FLOPs, file bytes,
throughput at batch 1 and 32 (median of --runs runs, variants interleaved round-robin so drift hits all alike),
and the ratio to fp32 measured in the same run. Targets (2-core CPU): int8 ≥ 1.3× and pruned ≥ 1.4× fp32 at
batch 32; pruned and int8 within 1 top-1 point of fp32.

    python bench/variants.py [--repository model_repository] [--runs 7] [--build]

With ``--onnx FILE`` or ``--torch MODULE:FACTORY`` (and the build's data options after ``--``), the user's model
is built first into a fresh repository and timed (goal: a ResNet-18-class ONNX model at 224×224 from file to a
served fp32/fp16/int8 ladder, evaluated on 1,000 samples, in at most 5 minutes on 2 cores); its ladder is then
printed the same way, with the accuracy metric the manifest holds and its 95% interval:

    python bench/variants.py --onnx resnet18.onnx -- --eval-data fm224.npz --eval-size 1000
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
from builders.data import DATASETS, load_dataset
from builders.models import INPUT_NAME, OUTPUT_NAME
from builders.train import top1
from tritune.compare import ladder, ordered, unpack
from tritune.manifest import MANIFEST, Manifest

TARGETS = {"int8_speedup_b32": 1.3, "pruned_speedup_b32": 1.4, "max_accuracy_loss_points": 1.0, "ladder_levels": 3}


def throughput(sess, batch: int, seconds: float) -> float:
    x = np.random.default_rng(batch).random((batch, 3, 32, 32), dtype=np.float32)
    sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        n += 1
    return n * batch / elapsed


BYO_BUILD_GOAL_S = 300.0  # ResNet-18-class ONNX at 224×224, fp32/fp16/int8, 1,000 samples evaluated


def byo(args, build_args: list[str]) -> int:
    """Build the user's model with the console command (timed), then measure its variants' speed in-process."""
    import subprocess
    import tempfile

    from tritune.samples import load_samples, synthesize
    from tritune.signature import Signature

    repo = args.repository if args.repository != Path("model_repository") else Path(tempfile.mkdtemp()) / "repo"
    source = ["--onnx", str(args.onnx)] if args.onnx else ["--torch", args.torch]
    cmd = [sys.executable, "-m", "console", "build", *source, "--repository", str(repo), *build_args]
    started = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - started
    if res.returncode != 0:
        print(res.stderr, file=sys.stderr)
        return res.returncode
    manifest = Manifest.read(repo)
    sig = Signature.from_dict(manifest.signature)
    eval_data = next((build_args[i + 1] for i, a in enumerate(build_args[:-1]) if a == "--eval-data"), None)
    data = load_samples(eval_data, sig) if eval_data else synthesize(sig, 32)
    idx = np.arange(32) % len(data)
    sessions = {
        n: ox.session(repo / v.model_name / "1" / "model.onnx", args.threads) for n, v in manifest.variants.items()
    }
    samples: dict[str, dict[int, list[float]]] = {n: {1: [], 32: []} for n in sessions}
    for _ in range(max(args.runs, 5)):
        for batch in (1, 32):
            feeds = {k: v[idx[:batch]] for k, v in data.inputs.items()} if sig.batched else None
            for name, sess in sessions.items():
                samples[name][batch].append(feed_throughput(sess, feeds, batch, args.seconds))
    base = {b: float(np.median(samples["fp32"][b])) for b in (1, 32)}
    variants = {}
    for name, v in manifest.variants.items():
        tput = {f"batch_{b}": round(float(np.median(samples[name][b])), 1) for b in (1, 32)}
        variants[name] = {
            manifest.accuracy["metric"]: round(v.top1, 4),
            "ci95": v.top1_ci95,
            "delta_points_vs_fp32": v.top1_delta_vs_fp32_points,
            "error_vs_fp32": v.error_vs_fp32,
            "file_bytes": v.file_bytes,
            "parameters": v.parameters,
            "throughput_samples_per_s": tput,
            "speedup_vs_fp32": {f"batch_{b}": round(float(np.median(samples[name][b])) / base[b], 3) for b in (1, 32)},
        }
    print(
        json.dumps(
            {
                "benchmark": "variants (bring your own model)",
                "model": manifest.source,
                "signature": manifest.signature,
                "accuracy": manifest.accuracy,
                "data": {"source": manifest.dataset.get("source"), "samples": manifest.dataset.get("samples")},
                "machine": {"cpus": os.cpu_count(), "ort_threads": args.threads},
                "build_command": " ".join(["tritune", "build", *source, *build_args]),
                "build_wall_s": round(wall_s, 1),
                "build_goal_s": BYO_BUILD_GOAL_S,
                "runs": max(args.runs, 5),
                "variants": variants,
            },
            indent=2,
        )
    )
    return 0


def feed_throughput(sess, feeds, batch: int, seconds: float) -> float:
    """Samples per second at ``batch`` on ``feeds`` (random inputs of the model's signature when None)."""
    if feeds is None:
        feeds = ox.session_signature(sess).random_inputs(batch, np.random.default_rng(batch))
    outputs = [o.name for o in sess.get_outputs()]
    sess.run(outputs, feeds)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        sess.run(outputs, feeds)
        n += 1
    per_call = batch if ox.session_signature(sess).batched else 1
    return n * per_call / elapsed


def main() -> int:
    argv = sys.argv[1:]
    build_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, default=None, help="bring your own ONNX file (build options after --)")
    ap.add_argument("--torch", default=None, help="bring your own module:factory (build options after --)")
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--runs", type=int, default=7, help="runs per (variant, batch); the median is reported (>= 5)")
    ap.add_argument("--seconds", type=float, default=0.5, help="length of one run")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--build", action="store_true", help="run `tritune build` first if there is no manifest")
    args = ap.parse_args(argv)
    if args.onnx or args.torch:
        return byo(args, build_args)

    if args.build and not (args.repository / MANIFEST).exists():
        from builders.build import BuildOptions, build

        build(BuildOptions(repository=args.repository), log=lambda m: print(m, file=sys.stderr))
    manifest = Manifest.read(args.repository)
    ds = manifest.dataset
    data = load_dataset(ds["name"] if ds["name"] in DATASETS else "auto", manifest.data_dir)
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
