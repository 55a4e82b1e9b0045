"""Bring your own model, end to end from the console command, with three models this repository did not write:

* (b) an ONNX text classifier exported by PyTorch from Hugging Face transformers' BERT: two INT64 inputs with a
  dynamic sequence length, its own names;
* (a) transformers' ResNet as a PyTorch module (``--torch``), trained briefly on Fashion-MNIST, pruned, distilled;
* (c) a Triton repository tritune did not build: a Python-backend BERT in PyTorch with no batch dimension,
  orchestrated as it is and then measured into a ladder (``tritune measure``).

Each is built or attached, served by a real Triton, load-tested with Locust and the open-loop generator, and
orchestrated. Bad inputs are one line, exit status 2, and leave the repository as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from builders import onnx_utils as ox
from builders.data import fashion_mnist_available
from loadtest.openloop import OpenLoopLoad, constant
from loadtest.run import LoadTestOptions, run_locust
from tests.integration.conftest import ADMIN_KEY, start_server
from tritune.client import InferenceClient
from tritune.samples import load_samples
from tritune.signature import Signature

ROOT = Path(__file__).resolve().parents[2]
FOREIGN = ROOT / "tests" / "data" / "foreign_repository"
QUICK = ["--latency-runs", "1", "--calibration-size", "32"]


def tritune(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITUNE_ADMIN_KEY": ADMIN_KEY}
    return subprocess.run(
        [sys.executable, "-m", "console", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def models_in(repo: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").exists()))


def orchestrate(model: str, srv, repo: Path, log: Path, seconds: int = 6) -> str:
    return ok(
        tritune(
            "orchestrate",
            "--model",
            model,
            "--url",
            srv.grpc_url,
            "--metrics-url",
            srv.metrics_url,
            "--repository",
            str(repo),
            "--slo-p99-ms",
            "500",
            "--accuracy-floor",
            "0",
            "--duration-s",
            str(seconds),
            "--metrics-port",
            "0",
            "--decision-log",
            str(log),
            "--status-interval-s",
            "0",
        )
    )


def locust(server, tmp_path: Path, model: str, data: Path, protocol: str) -> dict:
    opts = LoadTestOptions(
        http_url=server.http_url,
        grpc_url=server.grpc_url,
        protocol=protocol,
        model=model,
        data=data,
        shape="constant:value=2,duration_s=4",
        out_dir=tmp_path,
    )
    result = run_locust(opts)
    assert result.exit_code == 0, result.summary
    return result.summary


# -- (b) an ONNX file from another tool --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory) -> Path:
    """transformers' BERT (random weights, seeded) exported by torch.onnx with a dynamic batch and sequence, by the
    script that writes the benchmark's example."""
    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    cmd = [sys.executable, str(ROOT / "bench" / "export_examples.py"), "--bert", str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return path


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("text") / "eval.npz"
    mask = np.ones((64, 12), np.int64)
    mask[::3, 8:] = 0  # padded sequences
    np.savez(path, input_ids=rng.integers(0, 1000, (64, 12)), attention_mask=mask, labels=rng.integers(0, 4, 64))
    return path


@pytest.fixture(scope="module")
def bert_repo(bert_onnx, text_data, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("bert-repo") / "repo"
    args = ["--onnx", str(bert_onnx), "--eval-data", str(text_data), "--repository", str(repo), *QUICK]
    out = ok(tritune("build", *args))
    assert "inputs input_ids INT64[?], attention_mask INT64[?] → outputs logits FP32[4] (batched)" in out
    return repo


def test_onnx_build_writes_the_signature_and_a_measured_ladder(bert_repo):
    manifest = json.loads((bert_repo / "manifest.json").read_text())
    assert manifest["public_model"] == "bert" and manifest["source"].startswith("onnx:")
    sig = Signature.from_dict(manifest["signature"])
    assert [(t.name, t.datatype, t.shape) for t in sig.inputs] == [
        ("input_ids", "INT64", (-1,)),
        ("attention_mask", "INT64", (-1,)),
    ]
    assert manifest["accuracy"]["metric"] == "top1" and manifest["accuracy"]["labels"] is True
    assert set(manifest["variants"]) == {"fp32", "fp16", "int8"}
    for v in manifest["variants"].values():
        assert 0 <= v["top1"] <= 1 and v["top1_ci95"][0] <= v["top1"] <= v["top1_ci95"][1]
        assert v["latency_ms"]["batch_32"] > 0 and v["flops"] is None
    assert models_in(bert_repo) == ("bert", "bert_fp16", "bert_fp32", "bert_int8")


def test_onnx_model_serves_loads_and_orchestrates(bert_repo, text_data, server_cache, tmp_path):
    srv = start_server(bert_repo, server_cache, models_in(bert_repo))
    try:
        rng = np.random.default_rng(1)
        for protocol, url in (("http", srv.http_url), ("grpc", srv.grpc_url)):
            with InferenceClient(url, protocol) as client:
                for seq in (5, 20):  # the dynamic sequence length, served as exported
                    inputs = {"input_ids": rng.integers(0, 1000, (3, seq)), "attention_mask": np.ones((3, seq), int)}
                    for model in ("bert", "bert_int8"):
                        # version 1 is fp32, the version the public model serves at first
                        reference = ox.session(bert_repo / model / "1" / "model.onnx").run(None, inputs)[0]
                        served = client.infer_all(model, inputs)["logits"]
                        np.testing.assert_allclose(served, reference, rtol=1e-4, atol=1e-4)
        summary = locust(srv, tmp_path, "bert", text_data, "grpc")
        assert summary["requests"] > 0 and summary["failures"] == 0 and summary["answers_checked"]
        manifest = json.loads((bert_repo / "manifest.json").read_text())
        samples = load_samples(text_data, Signature.from_dict(manifest["signature"]))
        result = OpenLoopLoad(srv.http_url, "bert", samples.inputs, samples.labels, batch=4, protocol="http").run(
            2, constant(20)
        )
        assert result.records and not result.failures and result.top1 is not None
        out = orchestrate("bert", srv, bert_repo, tmp_path / "decisions.jsonl")
        assert "orchestrating bert" in out and "ladder off" not in out
    finally:
        srv.stop()


# -- (a) a PyTorch module ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_data(tmp_path_factory) -> tuple[Path, Path]:
    """Fashion-MNIST (Debian's package, installed by `make install`) as the model's input, through `tritune data`;
    scikit-learn's digits where the package is absent."""
    folder = tmp_path_factory.mktemp("images")
    dataset = "fashion-mnist" if fashion_mnist_available() else "digits"
    paths = []
    for split, limit in (("test", 200), ("train", 600)):
        path = folder / f"{split}.npz"
        common = ["--shape", "3,32,32", "--input-name", "pixel_values", "--limit", str(limit)]
        ok(tritune("data", "--dataset", dataset, "--split", split, *common, "--out", str(path)))
        paths.append(path)
    return paths[0], paths[1]


def test_torch_module_builds_pruned_and_distilled_variants_and_serves(image_data, server_cache, tmp_path):
    eval_data, train_data = image_data
    repo = tmp_path / "repo"
    factories = "tests.integration.byo_factories"
    out = ok(
        tritune(
            "build",
            "--torch",
            f"{factories}:resnet_tiny",
            "--student",
            f"{factories}:resnet_student",
            "--variants",
            "fp32,pruned,distilled,int8",
            "--eval-data",
            str(eval_data),
            "--train-data",
            str(train_data),
            "--fit-epochs",
            "4",
            "--lr",
            "0.01",
            "--finetune-epochs",
            "1",
            "--distill-epochs",
            "1",
            "--repository",
            str(repo),
            *QUICK,
        )
    )
    assert "fp32: exporting to ONNX" in out and "pruned: fine-tuning" in out
    manifest = json.loads((repo / "manifest.json").read_text())
    v = manifest["variants"]
    assert manifest["public_model"] == "resnet_tiny" and manifest["source"].startswith("torch:")
    assert set(v) == {"fp32", "pruned", "distilled", "int8"}
    assert v["pruned"]["parameters"] < v["fp32"]["parameters"] and "fine-tuned" in v["pruned"]["derived_from"]
    assert v["fp32"]["top1"] > 0.4  # four epochs on 600 real images: far above the 0.1 of chance
    srv = start_server(repo, server_cache, models_in(repo))
    try:
        x = np.load(eval_data)["pixel_values"][:8]
        with InferenceClient(srv.grpc_url, "grpc") as client:
            served = client.infer("resnet_tiny", x)  # the model's one input and first output, read from Triton
        reference = ox.session(repo / "resnet_tiny_fp32" / "1" / "model.onnx").run(None, {"pixel_values": x})[0]
        np.testing.assert_allclose(served, reference, rtol=1e-4, atol=1e-4)
        summary = locust(srv, tmp_path, "resnet_tiny", eval_data, "http")
        assert summary["requests"] > 0 and summary["failures"] == 0 and summary["answers_checked"]
        out = orchestrate("resnet_tiny", srv, repo, tmp_path / "decisions.jsonl")
        assert "orchestrating resnet_tiny" in out and "ladder off" not in out
    finally:
        srv.stop()


# -- (c) an existing Triton repository ----------------------------------------------------------------------------
def test_foreign_repository_is_orchestrated_as_it_is_then_measured_into_a_ladder(server_cache, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(FOREIGN, repo)  # the links between the two variants' model.py become copies
    data = tmp_path / "requests.npz"
    np.savez(data, token_ids=np.random.default_rng(0).integers(0, 512, (24, 4, 16)))  # 24 requests of 4 × 16
    srv = start_server(repo, server_cache, ("textcls", "textcls_int8"))
    try:
        with InferenceClient(srv.grpc_url, "grpc") as client:
            probs = client.infer("textcls", np.zeros((4, 16), np.int64))
        assert probs.shape == (4, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
        log = tmp_path / "decisions.jsonl"
        load = OpenLoopLoad(srv.grpc_url, "textcls", {"token_ids": np.load(data)["token_ids"]})
        # Long enough for its first action on a busy machine: a new instance of this model imports PyTorch.
        out = orchestrate("textcls", srv, repo, log, seconds=20)
        assert "variant ladder off: textcls was not built by tritune" in out
        assert "batching off: textcls has no batch dimension" in out
        events = [json.loads(line) for line in log.read_text().splitlines()]
        assert events[0]["event"] == "start" and events[0]["config"]["variant"] == ""
        # Whether it acts in 20 s without load depends on the cores other processes leave free (headroom); what it
        # applies, if anything, never batches and never switches the variant.
        applied = [e["after"] for e in events if e.get("action") == "apply"]
        assert all(not c["dynamic_batching"] and c["variant"] == "" for c in applied)
        assert not load.run(2, constant(10)).failures

        out = ok(
            tritune(
                "measure",
                "--repository",
                str(repo),
                "--public-model",
                "textcls_ladder",
                "--variant",
                "fp32=textcls",
                "--variant",
                "int8=textcls_int8",
                "--eval-data",
                str(data),
                "--url",
                srv.grpc_url,
            )
        )
        assert "the ladder is on" in out
        manifest = json.loads((repo / "manifest.json").read_text())
        assert set(manifest["variants"]) == {"fp32", "int8"} and sorted(manifest["public_versions"].values()) == [1, 2]
        rank = {v: (r["top1"], r["latency_ms"]["batch_32"], v) for v, r in manifest["variants"].items()}
        assert manifest["public_versions"][max(rank, key=rank.__getitem__)] == 2  # the most accurate serves on top
        assert manifest["accuracy"]["metric"] == "within_tolerance_vs_fp32"
        with InferenceClient(srv.grpc_url, "grpc", admin_key=ADMIN_KEY) as client:
            assert client.infer("textcls_ladder", np.zeros((2, 16), np.int64)).shape == (2, 3)
            client.switch_variant("textcls_ladder", "int8")
            assert client.model_config("textcls_ladder").version_policy.specific == (2,)
        out = orchestrate("textcls_ladder", srv, repo, tmp_path / "ladder.jsonl")
        assert "ladder off" not in out
    finally:
        srv.stop()


# -- bad input -----------------------------------------------------------------------------------------------------
def _nan_model(path: Path) -> Path:
    """Log of its input, then a MatMul: negative inputs make NaN activations, which int8 calibration cannot scale."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4).flatten().tolist())
    nodes = [helper.make_node("Log", ["x"], ["l"]), helper.make_node("MatMul", ["l", "w"], ["y"])]
    graph = helper.make_graph(nodes, "nan", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_bad_inputs_are_one_line_exit_2_and_leave_the_repository_as_it_was(bert_onnx, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "keep.txt").write_text("the user's file")
    bad_onnx = tmp_path / "broken.onnx"
    bad_onnx.write_bytes(b"this is not a protobuf")
    rng = np.random.default_rng(0)
    ids, mask = rng.integers(0, 1000, (8, 6)), np.ones((8, 6), np.int64)

    def npz(name: str, **arrays) -> Path:
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    negative = npz("negative.npz", x=-np.ones((16, 4), np.float32))
    bert = ["--onnx", str(bert_onnx), "--eval-data"]
    cases = [
        (["--onnx", str(bad_onnx)], "ONNX Runtime cannot load"),
        ([*bert, str(npz("names.npz", ids=ids, mask=mask))], "not model inputs"),
        ([*bert, str(npz("dtype.npz", input_ids=ids * 1.0, attention_mask=mask))], "takes INT64"),
        ([*bert, str(npz("shape.npz", input_ids=ids[:, :, None], attention_mask=mask))], "has shape [8, 6, 1]"),
        (
            [*bert, str(npz("labels.npz", input_ids=ids, attention_mask=mask, labels=[1, 2]))],
            "'labels' has shape [2], expected [8]",
        ),
        (["--torch", "no_such_package.models:resnet"], "cannot import no_such_package.models"),
        (["--onnx", str(_nan_model(tmp_path / "nan.onnx")), "--eval-data", str(negative)], "int8 calibration failed"),
    ]
    for args, message in cases:
        res = tritune("build", *args, "--repository", str(repo), *QUICK)
        assert res.returncode == 2, (args, res.stdout[-2000:], res.stderr[-2000:])
        err = res.stderr.strip()
        assert err.count("\n") == 0 and message in err, (args, err)
        assert sorted(p.name for p in repo.iterdir()) == ["keep.txt"], args
        assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name], args
