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

from builders.build import PRECISION, BuildOptions
from builders.models import SEED_SIGNATURE
from builders.targets import TARGETS, get_target
from builders.targets.base import VariantArtifact
from builders.targets.tensorrt import (
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
DEFAULT_INPUTS, DEFAULT_OUTPUTS = SEED_SIGNATURE.tensor_specs()  # what the ONNX parser's plan of the seed shows

VERSION_OF = {v: i for i, v in enumerate(PRECISION, start=1)}  # the fixture's own version numbers


def _artifact(variant: str = "int8") -> VariantArtifact:
    return VariantArtifact(variant, PRECISION[variant], Path("unused.onnx"))


def _plan() -> ModelConfig:
    return plan_model_config(
        "cnn_int8",
        _artifact(),
        SHA,
        max_batch_size=64,
        tensorrt_version=TRT,
        inputs=DEFAULT_INPUTS,
        outputs=DEFAULT_OUTPUTS,
    )


def _public() -> ModelConfig:
    versions = {VERSION_OF[v]: _artifact(v) for v in PRECISION}
    live = plan_model_config(
        "cnn",
        _artifact("fp32"),
        SHA,
        max_batch_size=64,
        tensorrt_version=TRT,
        inputs=DEFAULT_INPUTS,
        outputs=DEFAULT_OUTPUTS,
    )
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
    small = plan_model_config(
        "m", _artifact(), SHA, max_batch_size=8, tensorrt_version=TRT, inputs=DEFAULT_INPUTS, outputs=DEFAULT_OUTPUTS
    )
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


def test_cuda_graphs_follow_the_batching_the_orchestrator_loads():
    """The batch sizes the TensorRT backend captures graphs for, as its InitializeGraphSpecs derives them from the
    loaded config when no graph_spec is given: they follow each retuned config's preferred sizes."""
    live = _public()
    assert live.cuda_graph_batch_sizes == (1, 4, 8, 16, 64)
    retuned = applied_config(live, ServingConfig("fp32", 2, 0, True, 1000, (8, 32)))
    assert retuned.cuda_graph_batch_sizes == (1, 8, 32, 64)
    unbatched = applied_config(live, ServingConfig("fp32", 2, 0, False))
    assert unbatched.cuda_graph_batch_sizes == (1, 2, 3, 4, 6, 8, 12, 16, 64)
    assert replace(live, cuda_graphs=False).cuda_graph_batch_sizes == ()
    assert replace(live, max_batch_size=8, dynamic_batching=None).cuda_graph_batch_sizes == (1, 2, 3, 4, 6, 8)


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
    import numpy as np

    from builders import onnx_utils as ox
    from builders.models import SeedCNN

    fp32 = ox.export_onnx(SeedCNN().eval(), tmp_path / "fp32.onnx")
    fp16 = ox.to_fp16(fp32, tmp_path / "fp16.onnx")
    calib = np.random.default_rng(0).random((16, *SEED_SIGNATURE.inputs[0].shape), dtype=np.float32)
    int8 = ox.to_int8(fp32, tmp_path / "int8.onnx", calib, quantize_bias=TensorRTTarget.int8_quantize_bias)
    target = TensorRTTarget(cache_dir=tmp_path / "cache")
    target.check_available()
    versions = {
        1: VariantArtifact("fp32", "fp32", fp32),
        4: VariantArtifact("fp16", "fp16", fp16),
        5: VariantArtifact("int8", "int8", int8),
    }
    compiled = target.compile_public(versions, 1, "cnn", tmp_path / "repo", 64)
    assert compiled.config.inputs == DEFAULT_INPUTS and compiled.config.outputs == DEFAULT_OUTPUTS
    checked = check_plans(tmp_path / "repo", trt.__version__)
    assert {r.precision for _, r in checked} == {"fp32", "fp16", "int8"}
    assert any((tmp_path / "cache" / "tensorrt").glob("*.timing-cache"))


@pytest.mark.gpu
def test_torch_tensorrt_plans_carry_their_own_tensor_names_into_the_config(tmp_path):
    pytest.importorskip("torch_tensorrt", reason="needs Torch-TensorRT: run in the NGC PyTorch image")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    from builders import onnx_utils as ox
    from builders.models import SeedCNN
    from tritune.signature import Signature

    module = SeedCNN().eval()
    fp32 = ox.export_onnx(module, tmp_path / "fp32.onnx")
    target = TensorRTTarget(compiler="torch-tensorrt", cache_dir=tmp_path / "cache")
    compiled = target.compile(VariantArtifact("fp32", "fp32", fp32, module=module), "cnn", tmp_path / "repo", 8)
    record = PlanRecord.read(tmp_path / "repo" / "cnn" / "1" / RECORD_FILE)
    assert (compiled.config.inputs, compiled.config.outputs) == (record.inputs, record.outputs)
    assert Signature.from_config(compiled.config).input_names == ["input"]


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


# -- the int8 variant in the form TensorRT's ONNX parser takes -------------------------------------------------------
@pytest.fixture(scope="module")
def seed_int8(tmp_path_factory):
    """The seed CNN's int8 ONNX as each target asks for it (its own bias form), from one fp32 export."""
    import numpy as np

    from builders.models import SeedCNN
    from builders.onnx_utils import export_onnx, to_int8
    from builders.targets.cpu import CpuTarget

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx(SeedCNN().eval(), tmp / "fp32.onnx")
    calib = np.random.default_rng(0).random((16, *SEED_SIGNATURE.inputs[0].shape), dtype=np.float32)
    return {
        target.name: to_int8(fp32, tmp / f"{target.name}.onnx", calib, quantize_bias=target.int8_quantize_bias)
        for target in (TensorRTTarget, CpuTarget)
    }


def test_the_gpu_targets_int8_onnx_has_only_qdq_types_tensorrt_parses(seed_int8):
    import onnx

    from builders.targets.tensorrt import DEQUANTIZE_INPUT_TYPES, check_qdq_for_tensorrt

    graph = onnx.shape_inference.infer_shapes(onnx.load(str(seed_int8["gpu"]))).graph
    types = {i.name: onnx.TensorProto.DataType.Name(i.data_type) for i in graph.initializer}
    types |= {v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type) for v in graph.value_info}
    dq_inputs = {types[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert dq_inputs and dq_inputs <= DEQUANTIZE_INPUT_TYPES  # INT8 only: weights and activations, no INT32 bias
    assert check_qdq_for_tensorrt(seed_int8["gpu"]) >= 6
    # the CPU target's form (INT32 biases for ONNX Runtime's QLinearConv) is what TensorRT would reject
    with pytest.raises(BuildError, match="input is INT32, TensorRT takes FLOAT4E2M1, FLOAT8E4M3FN, INT4, INT8.*bias"):
        check_qdq_for_tensorrt(seed_int8["cpu"])


def test_the_gpu_target_refuses_an_int8_onnx_tensorrt_cannot_parse_before_tensorrt_runs(seed_int8, tmp_path):
    target = TensorRTTarget(cache_dir=tmp_path / "cache")  # no TensorRT here: the check comes first
    with pytest.raises(BuildError, match="TensorRT's ONNX parser rejects DequantizeLinear .*INT32"):
        target.compile(VariantArtifact("int8", "int8", seed_int8["cpu"]), "cnn_int8", tmp_path / "repo", 64)


def test_nonzero_zero_points_and_integer_quantize_inputs_are_refused(seed_int8):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from builders.targets.tensorrt import check_qdq_for_tensorrt

    proto = onnx.load(str(seed_int8["gpu"]))
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear")
    zero = next(i for i in proto.graph.initializer if i.name == q.input[2])
    zero.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(zero).shape, 3, np.int8), zero.name))
    with pytest.raises(BuildError, match="nonzero zero-point"):
        check_qdq_for_tensorrt(proto)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.INT32, [4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT8, [4])
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    graph = onnx.helper.make_graph([onnx.helper.make_node("QuantizeLinear", ["x", "s"], ["y"])], "g", [x], [y], [scale])
    with pytest.raises(BuildError, match="QuantizeLinear .*input is INT32, TensorRT takes BFLOAT16, FLOAT, FLOAT16"):
        check_qdq_for_tensorrt(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]))


def test_the_seed_builds_int8_in_the_targets_bias_form(tmp_path):
    """The seed pipeline's export stage hands the target's bias form to the quantizer."""
    import onnx

    from builders.build import _export, _Seed
    from builders.data import load_dataset
    from builders.models import SeedCNN
    from builders.targets.tensorrt import check_qdq_for_tensorrt

    data = load_dataset("digits", tmp_path / "data")
    opts = replace(BuildOptions(), variants=("fp32", "int8"), calibration_size=16)
    seed = _Seed(opts, data, None, lambda _msg: None, {})
    for quantize_bias, int32_dq in ((False, 0), (True, 1)):
        paths, _ = _export(seed, {"fp32": SeedCNN().eval()}, tmp_path / str(quantize_bias), quantize_bias)
        graph = onnx.load(str(paths["int8"])).graph
        int32 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT32}
        assert bool(sum(n.input[0] in int32 for n in graph.node if n.op_type == "DequantizeLinear")) == int32_dq
    check_qdq_for_tensorrt(tmp_path / "False" / "int8.onnx")


# -- the timing cache, as TensorRT's API defines its return values -----------------------------------------------------
class FakeBuilderConfig:
    """The three IBuilderConfig calls on the timing cache, with their documented results: create_timing_cache
    gives None for a blob it cannot read, set_timing_cache False for a cache of another device, get_timing_cache
    None when none is set."""

    class Cache:
        def __init__(self, blob: bytes):
            self.blob = blob

        def serialize(self):
            return memoryview(self.blob or b"fresh")

    def __init__(self, foreign: bytes = b"", set_fails: bool = False):
        self.foreign, self.set_fails, self.cache = foreign, set_fails, None

    def create_timing_cache(self, blob: bytes):
        return None if blob == b"corrupt" else self.Cache(bytes(blob))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        if self.set_fails or (self.foreign and cache.blob == self.foreign):
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


def test_timing_cache_branches_follow_the_api(tmp_path, capsys):
    from builders.targets.tensorrt import _load_timing_cache, _save_timing_cache

    path = tmp_path / "h100.timing-cache"
    # none yet: a new cache, kept after the build
    config = FakeBuilderConfig()
    assert _load_timing_cache(config, path) and _save_timing_cache(config, path) and path.read_bytes() == b"fresh"
    # a good cache is reused as it is
    path.write_bytes(b"kernels")
    config = FakeBuilderConfig()
    assert _load_timing_cache(config, path) and config.cache.blob == b"kernels"
    # corrupt (create_timing_cache → None) and another GPU's (set_timing_cache → False): a new one, said why
    for blob, config, why in (
        (b"corrupt", FakeBuilderConfig(), "truncated or from another TensorRT"),
        (b"ampere", FakeBuilderConfig(foreign=b"ampere"), "made on another GPU"),
    ):
        path.write_bytes(blob)
        assert _load_timing_cache(config, path) and config.cache.blob == b""
        assert why in capsys.readouterr().err
        assert _save_timing_cache(config, path) and path.read_bytes() == b"fresh"
    # no cache can be set at all: the build goes on without one, and nothing is saved over the old file
    path.write_bytes(b"kernels")
    config = FakeBuilderConfig(set_fails=True)
    assert not _load_timing_cache(config, path) and config.get_timing_cache() is None
    assert not _save_timing_cache(config, path) and path.read_bytes() == b"kernels"
    assert "building without one" in capsys.readouterr().err


# -- Torch-TensorRT: the module's interface, a real torch.export, and its errors ---------------------------------------
def test_torch_tensorrt_takes_the_input_from_the_signature_and_refuses_what_it_cannot_build():
    from builders.targets.tensorrt import ShapeProfile, example_batch, torch_tensorrt_input
    from tritune.signature import Signature, Tensor

    image = Signature((Tensor("pixel_values", "FP32", (3, 64, 64)),), (Tensor("logits", "FP32", (5,)),), True)
    name, shapes = torch_tensorrt_input(image, BatchProfile.for_max(32))
    assert (name, shapes) == ("pixel_values", ShapeProfile((1, 3, 64, 64), (16, 3, 64, 64), (32, 3, 64, 64)))
    two = Signature((Tensor("a", "FP32", (4,)), Tensor("b", "FP32", (4,))), (Tensor("y", "FP32", (1,)),), True)
    with pytest.raises(BuildError, match="one-input modules.*--compiler tensorrt"):
        torch_tensorrt_input(two, BatchProfile.for_max(32))
    with pytest.raises(BuildError, match="--max-batch-size of at least 2"):
        torch_tensorrt_input(image, BatchProfile.for_max(1))
    # the example batch is never 1 (torch.export would fix it) and never past the profile's max
    assert [example_batch(BatchProfile.for_max(m)) for m in (2, 3, 8, 64)] == [2, 3, 8, 16]
    assert example_batch(BatchProfile.for_max(64, opt=1)) == 2


@pytest.mark.parametrize("max_batch_size", [2, 5, 64])
def test_the_serving_module_exports_with_a_dynamic_batch(max_batch_size):
    """The torch.export step of the Torch-TensorRT path, run for real on the CPU: every batch in 1..max runs."""
    from builders.models import SeedCNN
    from builders.targets.tensorrt import export_serving_module, shape_profiles

    profile = BatchProfile.for_max(max_batch_size)
    shapes = shape_profiles(SEED_SIGNATURE, profile)["input"]
    module = ServingModule(SeedCNN().eval(), half=False)
    exported, dtype = export_serving_module(module, "FP32", shapes, profile, "fp32", device="cpu")
    assert dtype == torch.float32 and [n.name for n in exported.graph.nodes if n.op == "placeholder"][-1] == "input"
    for batch in sorted({1, max_batch_size}):
        x = torch.rand(batch, *SEED_SIGNATURE.inputs[0].shape)
        assert torch.allclose(exported.module()(x), module(x), atol=1e-5)


def test_a_torch_tensorrt_conversion_failure_is_one_clear_error(monkeypatch, tmp_path):
    """Torch-TensorRT logs a converter failure and then raises UnboundLocalError on its own unset variable; that
    becomes one BuildError naming the variant and the way out (the library is stood in for: it needs CUDA)."""
    from types import SimpleNamespace

    from builders.targets.tensorrt import ShapeProfile, convert_to_plan

    def convert(*_args, **_kw):
        raise UnboundLocalError("cannot access local variable 'interpreter_result' where it is not associated")

    fake = SimpleNamespace(
        Input=lambda **kw: kw, dynamo=SimpleNamespace(convert_exported_program_to_serialized_trt_engine=convert)
    )
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    shapes = ShapeProfile((1, 3, 32, 32), (16, 3, 32, 32), (64, 3, 32, 32))
    with pytest.raises(
        BuildError, match=r"fp16: Torch-TensorRT could not convert .*UnboundLocalError.*--compiler tensorrt"
    ):
        convert_to_plan(object(), shapes, torch.float32, tmp_path / "cache" / "t", "fp16")


# -- the serving image's flavour ---------------------------------------------------------------------------------
def test_the_serving_images_flavour_decides_its_tensorrt():
    from builders.targets.tensorrt import image_tensorrt

    assert image_tensorrt("nvcr.io/nvidia/tritonserver:25.06-py3", TRT) == TRT
    assert image_tensorrt("nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3", TRT) == "10.10.0.31"
    assert image_tensorrt("tritonserver:25.08-trtllm-python-py3", TRT) == "10.11.0.33"
    with pytest.raises(PlanMismatchError, match="use nvcr.io/nvidia/tritonserver:25.06-py3"):
        image_tensorrt("nvcr.io/nvidia/tritonserver:25.06-vllm-python-py3", TRT)
    with pytest.raises(ConfigError, match="not in tritune's copy of Triton's compatibility table"):
        image_tensorrt("nvcr.io/nvidia/tritonserver:24.01-trtllm-python-py3", TRT)
    with pytest.raises(ConfigError, match="is not an NGC Triton image"):
        image_tensorrt("nvcr.io/nvidia/pytorch:25.06-py3", TRT)


def test_check_plans_refuses_a_flavour_with_another_tensorrt_in_one_line(tmp_path, capsys):
    """Plans built in pytorch:25.06-py3 (TensorRT 10.11) against tritonserver:25.06-trtllm-python-py3 (10.10)."""
    version = tmp_path / "cnn" / "1"
    version.mkdir(parents=True)
    (version / PLAN_FILE).write_bytes(b"plan")
    _record(plan_sha256=hashlib.sha256(b"plan").hexdigest()).write(version / RECORD_FILE)
    env = {SERVING_VERSION_ENV: TRT, "TRITUNE_SERVING_IMAGE": "nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3"}
    with pytest.raises(PlanMismatchError, match=r"built with TensorRT 10\.11\.0\.33 but .*trtllm-python-py3 serves"):
        check_plans(tmp_path, environ=env)
    assert check_plans(tmp_path, environ={**env, "TRITUNE_SERVING_IMAGE": "nvcr.io/nvidia/tritonserver:25.06-py3"})
    args = ["--repository", str(tmp_path), "--serving-tensorrt-version", TRT]
    assert main([*args, "--serving-image", "nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TRITON_IMAGE_FLAVOUR=py3" in err
    assert main([*args, "--serving-image", "nvcr.io/nvidia/tritonserver:25.06-py3"]) == 0
