"""The gpu target without a GPU: plan configs (golden), the build path per TensorRT version, the timing-cache key,
the plan record and its deploy-time check, and clear errors where TensorRT is missing. Building a real engine needs
TensorRT and a GPU: that test is marked ``gpu`` and skipped elsewhere (UPDATE_GOLDEN=1 regenerates the goldens)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from builders.build import PRECISION, VERSION_OF, BuildOptions
from builders.targets import TARGETS, get_target
from builders.targets.base import VariantArtifact
from builders.targets.tensorrt import (
    DEFAULT_INPUTS,
    DEFAULT_OUTPUTS,
    PLAN_FILE,
    RECORD_FILE,
    SERVING_VERSION_ENV,
    BatchProfile,
    PlanRecord,
    ServingModule,
    TensorRTTarget,
    build_torch_tensorrt_plan,
    check_plan_record,
    check_plans,
    main,
    plan_model_config,
    plan_settings,
    public_config,
    tensorrt_release,
    timing_cache_path,
)
from tritune.apply import model_config as applied_config
from tritune.apply import serving_config
from tritune.client import with_variant
from tritune.errors import BuildError, ConfigError, PlanMismatchError, RepositoryError, TargetUnavailableError
from tritune.model_config import ModelConfig
from tritune.serving import ServingConfig

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
TRT = "10.11.0.33"
SHA = "0" * 64


def _artifact(variant: str = "int8") -> VariantArtifact:
    return VariantArtifact(variant, PRECISION[variant], Path("unused.onnx"))


def _plan() -> ModelConfig:
    return plan_model_config("cnn_int8", _artifact(), SHA, max_batch_size=64, tensorrt_version=TRT)


def _public() -> ModelConfig:
    versions = {VERSION_OF[v]: _artifact(v) for v in PRECISION}
    live = plan_model_config("cnn", _artifact("fp32"), SHA, max_batch_size=64, tensorrt_version=TRT)
    return public_config(live, VERSION_OF["fp32"], versions)


def _record(**kw) -> PlanRecord:
    fields = {
        "tensorrt_version": TRT,
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "compiler": "tensorrt",
        "variant": "int8",
        "precision": "int8",
        "strongly_typed": False,
        "builder_flags": ("INT8",),
        "batch_profile": BatchProfile.for_max(64),
        "inputs": DEFAULT_INPUTS,
        "outputs": DEFAULT_OUTPUTS,
        "onnx_sha256": SHA,
        "plan_sha256": SHA,
        "plan_bytes": 0,
    }
    return PlanRecord(**{**fields, **kw})


# -- config.pbtxt ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "factory"), [("gpu_plan.pbtxt", _plan), ("gpu_public.pbtxt", _public)])
def test_plan_config_matches_golden(name, factory):
    text = factory().to_pbtxt()
    if os.environ.get("UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(text)
    assert text == (GOLDEN / name).read_text()
    text_format.Parse(text, pb.ModelConfig())  # Triton's own proto accepts it


def test_plan_config_is_a_gpu_plan_with_batching_and_graphs():
    msg = _plan().to_proto()
    assert msg.platform == "tensorrt_plan" and not msg.backend
    assert [(g.kind, g.count) for g in msg.instance_group] == [(pb.ModelInstanceGroup.KIND_GPU, 1)]
    assert list(msg.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert msg.dynamic_batching.max_queue_delay_microseconds > 0
    assert msg.dynamic_batching.default_queue_policy.max_queue_size > 0
    assert msg.optimization.cuda.graphs
    # preferred sizes never exceed max_batch_size
    small = plan_model_config("m", _artifact(), SHA, max_batch_size=8, tensorrt_version=TRT)
    assert small.dynamic_batching.preferred_batch_size == (4, 8)


@pytest.mark.parametrize("factory", [_plan, _public])
def test_plan_config_round_trips(factory):
    cfg = factory()
    assert ModelConfig.from_pbtxt(cfg.to_pbtxt()) == cfg
    assert ModelConfig.from_json(cfg.to_json()) == cfg


def test_orchestrator_retunes_a_plan_config_without_losing_gpu_settings():
    live = _public()
    assert serving_config(live) == ServingConfig("fp32", 1, 0, True, 500, (4, 8, 16))
    switched = with_variant(live, "int8")
    assert switched.version_policy.specific == (VERSION_OF["int8"],) and switched.platform == "tensorrt_plan"
    new = applied_config(live, ServingConfig("fp16", instances=3, dynamic_batching=True, max_queue_delay_us=1000))
    assert new.instance_group[0].kind == "KIND_GPU" and new.instance_count == 3
    assert new.cuda_graphs and new.dynamic_batching.default_queue_policy == live.dynamic_batching.default_queue_policy


# -- build path per TensorRT version -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "precision", "strongly_typed", "flags"),
    [
        ("10.11.0.33", "fp32", False, ()),
        ("10.11.0.33", "fp16", False, ("FP16",)),
        ("10.0.1", "int8", False, ("INT8",)),
        ("11.0.0.1", "fp32", True, ()),
        ("11.0.0.1", "fp16", True, ()),
        ("11.4.0.106", "int8", True, ()),
    ],
)
def test_plan_settings_follow_the_tensorrt_version(version, precision, strongly_typed, flags):
    s = plan_settings(version, precision)
    assert (s.strongly_typed, s.builder_flags) == (strongly_typed, flags)


def test_plan_settings_refuse_old_tensorrt_and_unknown_precision():
    with pytest.raises(TargetUnavailableError, match=r"older than 10.*pip install '\.\[gpu\]'"):
        plan_settings("8.6.1", "fp32")
    with pytest.raises(BuildError, match="unknown precision"):
        plan_settings(TRT, "bf16")


def test_batch_profile_spans_one_to_max():
    assert BatchProfile.for_max(64) == BatchProfile(1, 16, 64)
    assert BatchProfile.for_max(4) == BatchProfile(1, 4, 4)
    with pytest.raises(BuildError, match="max batch size"):
        BatchProfile.for_max(0)


# -- timing cache ------------------------------------------------------------------------------------------------------
def test_timing_cache_is_keyed_by_gpu_model_and_tensorrt_version(tmp_path):
    path = timing_cache_path(tmp_path, "NVIDIA H100 80GB HBM3", "9.0", TRT)
    assert path == tmp_path / "nvidia-h100-80gb-hbm3-sm90-trt10.11.0.33.timing-cache"
    others = {
        timing_cache_path(tmp_path, "NVIDIA L4", "8.9", TRT),
        timing_cache_path(tmp_path, "NVIDIA H100 80GB HBM3", "9.0", "10.12.0.36"),
        timing_cache_path(tmp_path, "NVIDIA H100 PCIe", "9.0", TRT),
    }
    assert path not in others and len(others) == 3
    assert timing_cache_path(tmp_path, "NVIDIA H100 80GB HBM3", "9.0", TRT) == path  # stable across builds
    assert "/" not in timing_cache_path(tmp_path, "A/B: C", "8.0", TRT).name


# -- the plan record and the deploy-time check -------------------------------------------------------------------------
def test_record_round_trips_through_json(tmp_path):
    record = _record(built_utc="2025-01-01T00:00:00+00:00")
    path = record.write(tmp_path / RECORD_FILE)
    assert json.loads(path.read_text())["tensorrt_version"] == TRT
    assert PlanRecord.read(path) == record


def test_matching_versions_pass():
    check_plan_record(_record(), "10.11.0.33")
    check_plan_record(_record(), "10.11.0", serving_compute_capability="9.0")  # build number left out
    assert tensorrt_release("10.11.0.33") == (10, 11, 0)


@pytest.mark.parametrize("serving", ["10.12.0.36", "10.10.0.31", "11.0.0.1"])
def test_mismatching_versions_fail_with_one_line_saying_what_to_do(serving):
    with pytest.raises(PlanMismatchError) as info:
        check_plan_record(_record(), serving, where="cnn/5/model.plan")
    message = str(info.value)
    assert "\n" not in message and TRT in message and serving in message
    assert "cnn/5/model.plan" in message and "rebuild" in message and "TRITON_IMAGE_TAG" in message


def test_other_gpu_architecture_fails():
    with pytest.raises(PlanMismatchError, match=r"compute capability 9\.0 .* has 8\.9; rebuild"):
        check_plan_record(_record(), TRT, serving_compute_capability="8.9")


def test_bad_version_string_is_a_config_error():
    with pytest.raises(ConfigError, match=SERVING_VERSION_ENV):
        tensorrt_release("latest")


def _repository(tmp_path: Path, tensorrt_version: str = TRT, record: bool = True) -> Path:
    # check_plans only hashes the plan file; these bytes are a stand-in, never loaded as an engine.
    version_dir = tmp_path / "repo" / "cnn" / "5"
    version_dir.mkdir(parents=True)
    data = b"stand-in bytes: check_plans hashes the file and never loads it"
    (version_dir / PLAN_FILE).write_bytes(data)
    if record:
        sha = hashlib.sha256(data).hexdigest()
        _record(tensorrt_version=tensorrt_version, plan_sha256=sha, plan_bytes=len(data)).write(
            version_dir / RECORD_FILE
        )
    return tmp_path / "repo"


def test_check_plans_over_a_repository(tmp_path, capsys):
    repo = _repository(tmp_path)
    [(plan, record)] = check_plans(repo, environ={SERVING_VERSION_ENV: "10.11.0.33"})
    assert plan.name == PLAN_FILE and record.variant == "int8"
    with pytest.raises(PlanMismatchError, match=r"cnn/5/model\.plan was built with TensorRT 10\.11"):
        check_plans(repo, "10.12.0.36", environ={})
    with pytest.raises(ConfigError, match=SERVING_VERSION_ENV):
        check_plans(repo, environ={})
    (repo / "cnn" / "5" / PLAN_FILE).write_bytes(b"edited")
    with pytest.raises(PlanMismatchError, match="changed after it was built"):
        check_plans(repo, TRT, environ={})
    # the command-line form: one line on stderr, exit code 2
    assert main(["--repository", str(repo), "--serving-tensorrt-version", TRT]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_check_plans_without_records_or_plans(tmp_path):
    with pytest.raises(PlanMismatchError, match=r"model\.plan\.json is missing.*tritune build --target gpu"):
        check_plans(_repository(tmp_path, record=False), TRT, environ={})
    with pytest.raises(RepositoryError, match="no TensorRT plans"):
        check_plans(tmp_path / "empty", TRT, environ={})


# -- availability and options ------------------------------------------------------------------------------------------
def test_missing_tensorrt_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail, as where it is not installed
    with pytest.raises(TargetUnavailableError) as info:
        TensorRTTarget().check_available()
    message = str(info.value)
    assert "\n" not in message and "pip install '.[gpu]'" in message and "nvcr.io/nvidia/pytorch" in message
    with pytest.raises(TargetUnavailableError, match="TensorRT is not installed"):
        get_target("gpu", "tensorrt")


def test_compiler_option_belongs_to_the_gpu_target():
    assert TARGETS["gpu"] is TensorRTTarget and BuildOptions().compiler is None
    with pytest.raises(BuildError, match="--compiler tensorrt does not apply to --target cpu"):
        get_target("cpu", "tensorrt")
    with pytest.raises(BuildError, match="unknown compiler"):
        TensorRTTarget(compiler="onnxruntime")
    assert type(get_target("cpu")).__name__ == "CpuTarget"  # the CPU path takes no compiler


def test_build_cli_accepts_gpu_target_and_compiler():
    import argparse

    from builders.cli import add_arguments, options_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    opts = options_from_args(parser.parse_args(["--target", "gpu", "--compiler", "torch-tensorrt"]))
    assert (opts.target, opts.compiler) == ("gpu", "torch-tensorrt")
    assert options_from_args(parser.parse_args([])).compiler is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--compiler", "tvm"])


# -- torch-tensorrt seam -----------------------------------------------------------------------------------------------
def test_torch_tensorrt_needs_the_module_and_refuses_int8(tmp_path):
    profile = BatchProfile.for_max(64)
    with pytest.raises(BuildError, match="has only its ONNX.*--compiler tensorrt"):
        build_torch_tensorrt_plan(_artifact("fp32"), profile, tmp_path / "cache")
    with_module = replace(_artifact("int8"), module=torch.nn.Identity())
    with pytest.raises(BuildError, match="int8 comes from its Q/DQ ONNX"):
        build_torch_tensorrt_plan(with_module, profile, tmp_path / "cache")


def test_serving_module_names_the_input_and_keeps_fp32_io():
    assert list(inspect.signature(ServingModule.forward).parameters)[1:] == ["input"]
    inner = torch.nn.Linear(4, 2)
    x = torch.rand(3, 4)
    out = ServingModule(inner, half=False)(x)
    assert out.dtype == torch.float32 and torch.equal(out, inner(x))


# -- a real engine (needs TensorRT and a GPU) --------------------------------------------------------------------------
@pytest.mark.gpu
def test_builds_a_real_plan_for_each_precision(tmp_path):
    trt = pytest.importorskip(
        "tensorrt", reason="needs TensorRT: run in the NGC PyTorch image with `pip install '.[gpu]'`"
    )
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    from builders import onnx_utils as ox
    from builders.models import SeedCNN

    fp32 = ox.export_onnx(SeedCNN().eval(), tmp_path / "fp32.onnx")
    fp16 = ox.to_fp16(fp32, tmp_path / "fp16.onnx")
    target = TensorRTTarget(cache_dir=tmp_path / "cache")
    target.check_available()
    versions = {1: VariantArtifact("fp32", "fp32", fp32), 4: VariantArtifact("fp16", "fp16", fp16)}
    compiled = target.compile_public(versions, 1, "cnn", tmp_path / "repo", 64)
    assert compiled.config.inputs == DEFAULT_INPUTS and compiled.config.outputs == DEFAULT_OUTPUTS
    checked = check_plans(tmp_path / "repo", trt.__version__)
    assert {r.precision for _, r in checked} == {"fp32", "fp16"}
    assert any((tmp_path / "cache" / "tensorrt").glob("*.timing-cache"))


def test_optimization_profiles_come_from_the_signature_and_the_user():
    from builders.targets.tensorrt import (
        DEFAULT_DYNAMIC_RANGE,
        BatchProfile,
        ShapeProfile,
        parse_profiles,
        shape_profiles,
    )
    from tritune.signature import Signature, Tensor

    text = Signature(
        (Tensor("input_ids", "INT64", (-1,)), Tensor("attention_mask", "INT64", (-1,))),
        (Tensor("logits", "FP32", (4,)),),
        batched=True,
    )
    batch = BatchProfile.for_max(64)
    lo, opt, hi = DEFAULT_DYNAMIC_RANGE
    assert shape_profiles(text, batch)["input_ids"] == ShapeProfile((1, lo), (16, opt), (64, hi))
    user = parse_profiles("input_ids=1/128/512; attention_mask=1/128/512")
    assert shape_profiles(text, batch, user)["attention_mask"] == ShapeProfile((1, 1), (16, 128), (64, 512))
    image = Signature((Tensor("pixel_values", "FP32", (3, 224, 224)),), (Tensor("logits", "FP32", (10,)),), True)
    assert shape_profiles(image, batch)["pixel_values"].max == (64, 3, 224, 224)
    with pytest.raises(ConfigError, match="not inputs of the model"):
        shape_profiles(text, batch, parse_profiles("ids=1/2/3"))
    with pytest.raises(ConfigError, match="does not fit"):
        shape_profiles(image, batch, parse_profiles("pixel_values=3x224x224/3x112x112/3x224x224"))
    with pytest.raises(ConfigError, match="min ≤ opt ≤ max"):
        shape_profiles(text, batch, parse_profiles("input_ids=64/16/8"))
    with pytest.raises(ConfigError, match="NAME=MIN/OPT/MAX"):
        parse_profiles("input_ids=1/2")
    unbatched = Signature((Tensor("x", "FP32", (1, 4)),), (Tensor("y", "FP32", (1, 2)),), batched=False)
    with pytest.raises(BuildError, match="batch dimension"):
        shape_profiles(unbatched, batch)


def test_a_brought_onnx_model_on_the_gpu_target_asks_for_tensorrt(tmp_path, monkeypatch):
    """With the ONNX parser the gpu target takes any batched model; without TensorRT it says what to install,
    before any variant is built."""
    from builders.build import build
    from builders.models import SeedCNN
    from builders.onnx_utils import export_onnx

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    path = export_onnx(SeedCNN().eval(), tmp_path / "m.onnx")
    with pytest.raises(TargetUnavailableError, match="TensorRT is not installed"):
        build(BuildOptions(onnx=path, target="gpu", repository=tmp_path / "repo"), log=lambda _m: None)
    assert not (tmp_path / "repo").exists()
    with pytest.raises(ConfigError, match="leave out --compiler torch-tensorrt"):
        build(BuildOptions(onnx=path, target="gpu", compiler="torch-tensorrt"), log=lambda _m: None)
