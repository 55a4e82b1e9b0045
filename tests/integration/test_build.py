"""Build every variant on a small subset through the real console command, then check what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from builders import onnx_utils as ox
from builders.build import VARIANTS
from tritune.client import served_variant
from tritune.compare import unpack
from tritune.model_config import ModelConfig

HELD_OUT = 899  # half of scikit-learn's 1,797 digits (builders/data.py)
QUICK = [
    "--subset",
    "160",
    "--epochs",
    "1",
    "--finetune-epochs",
    "1",
    "--distill-epochs",
    "1",
    "--calibration-size",
    "16",
    "--latency-runs",
    "1",
    "--dataset",
    "digits",
]


def tritune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "console", *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    proc = tritune("build", "--repository", "repo", "--cache-dir", "cache", *QUICK, cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root, proc.stdout


def test_run_says_which_dataset_it_used(built):
    _, out = built
    assert "dataset: digits — scikit-learn load_digits" in out


def test_manifest_records_every_variant(built):
    root, _ = built
    manifest = json.loads((root / "repo" / "manifest.json").read_text())
    assert manifest["dataset"]["name"] == "digits" and manifest["dataset"]["held_out_images"] == HELD_OUT
    assert list(manifest["variants"]) == list(VARIANTS)
    fp32 = manifest["variants"]["fp32"]
    for name, v in manifest["variants"].items():
        assert v["precision"] == {"fp16": "fp16", "int8": "int8"}.get(name, "fp32")
        assert 0.0 <= v["top1"] <= 1.0 and v["parameters"] > 0 and v["flops"] > 0
        assert v["file_bytes"] == (root / "repo" / v["model_name"] / "1" / "model.onnx").stat().st_size
        assert {"max_abs_err", "max_rel_err", "top1_agreement"} <= set(v["error_vs_fp32"])
        assert v["latency_ms"]["batch_1"] > 0 and v["latency_ms"]["batch_32"] > 0
        assert v["target"] == "cpu" and v["built_with"]["onnxruntime"] and v["built_with"]["tensorrt"] is None
        hits = unpack(v["correct"])  # per-image correctness, for the paired comparison
        assert len(hits) == HELD_OUT and hits.mean() == pytest.approx(v["top1"])
        assert v["top1_ci95"][0] <= v["top1"] <= v["top1_ci95"][1]
    assert manifest["variants"]["pruned"]["parameters"] <= 0.6 * fp32["parameters"]
    assert manifest["variants"]["pruned"]["flops"] <= 0.6 * fp32["flops"]
    assert manifest["variants"]["int8"]["file_bytes"] < 0.5 * fp32["file_bytes"]
    # the ladder's lower rungs: each student looks at less of the image, so each costs less than the one above
    flops = [manifest["variants"][v]["flops"] for v in ("distilled", "small", "tiny")]
    assert flops[0] > 3 * flops[1] > 9 * flops[2]
    assert fp32["error_vs_fp32"]["max_abs_err"] == 0.0


def test_each_model_folder_is_servable(built):
    root, _ = built
    manifest = json.loads((root / "repo" / "manifest.json").read_text())
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    for v in manifest["variants"].values():
        folder = root / "repo" / v["model_name"]
        config = ModelConfig.read(folder)
        assert config.name == v["model_name"] and config.backend == "python"
        assert config.parameters["artifact_sha256"] == v["sha256"]
        assert list((folder / "1" / "__pycache__").glob("model.cpython-*.pyc")), "model.py must be precompiled"
        onnx.checker.check_model(str(folder / "1" / "model.onnx"), full_check=True)
        assert ox.run_onnx(ox.session(folder / "1" / "model.onnx"), x).shape == (3, 10)
    public = ModelConfig.read(root / "repo" / "cnn")
    versions = json.loads(public.parameters["variant_versions"])
    assert public.name == "cnn" and served_variant(public) == "fp32" and "variant" not in public.parameters
    assert public.version_policy.specific == (versions["fp32"],)
    # least accurate first (equal top-1: the cheaper first), so that the most accurate loaded version serves
    order = sorted(
        VARIANTS, key=lambda v: (manifest["variants"][v]["top1"], manifest["variants"][v]["latency_ms"]["batch_32"], v)
    )
    assert versions == manifest["public_versions"] == {v: i for i, v in enumerate(order, start=1)}
    for variant, number in versions.items():  # each version is that variant's artifact
        source = root / "repo" / f"cnn_{variant}" / "1" / "model.onnx"
        assert (root / "repo" / "cnn" / str(number) / "model.onnx").read_bytes() == source.read_bytes()


def test_second_build_reuses_checkpoints(built):
    root, _ = built
    proc = tritune(
        "build",
        "--repository",
        "repo2",
        "--cache-dir",
        "cache",
        "--variants",
        "fp32,pruned,distilled",
        *QUICK,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    assert "training SeedCNN" not in proc.stdout
    assert proc.stdout.count("reusing checkpoint") == 3


def test_failed_build_changes_nothing(built):
    root, _ = built
    before = {p: p.stat().st_mtime_ns for p in (root / "repo").rglob("*")}
    proc = tritune(
        "build", "--repository", "repo", "--cache-dir", "cache", "--max-batch-size", "5000", *QUICK, cwd=root
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "max batch size" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in (root / "repo").rglob("*")} == before
    assert not [p for p in root.iterdir() if "staging" in p.name or "trash" in p.name]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "fp32,turbo"], "unknown variant"),
        (["--calibration-size", "0"], "calibration size must be at least 1"),
        (["--dataset", "cifar10", "--data-dir", "nowhere"], "no CIFAR-10 copy"),
        (["--checkpoint", "missing.pt"], "does not exist"),
    ],
)
def test_bad_input_is_a_one_line_error(built, args, message):
    root, _ = built
    proc = tritune("build", "--repository", "repo3", "--cache-dir", "cache", *QUICK, *args, cwd=root)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert not (root / "repo3").exists()


def test_corrupt_cached_checkpoint_says_what_to_do(built):
    root, _ = built
    (root / "cache-bad" / "checkpoints").mkdir(parents=True)
    proc = tritune("build", "--repository", "repo4", "--cache-dir", "cache-bad", *QUICK, "--variants", "fp32", cwd=root)
    assert proc.returncode == 0, proc.stderr
    for ckpt in (root / "cache-bad" / "checkpoints").glob("*.pt"):
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    proc = tritune("build", "--repository", "repo4", "--cache-dir", "cache-bad", *QUICK, "--variants", "fp32", cwd=root)
    assert proc.returncode == 2 and "corrupt" in proc.stderr and "delete" in proc.stderr
