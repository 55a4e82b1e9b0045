"""GPU target: TensorRT engines (``platform: "tensorrt_plan"``) for Triton's TensorRT backend.

Two compilers make the plan:

* ``tensorrt`` (default) builds from the variant's ONNX with TensorRT's ONNX parser. TensorRT 10: a weakly typed
  network with the FP16 builder flag for the fp16 variant and the INT8 flag for the int8 variant's Q/DQ graph (no
  calibrator: implicit calibration is deprecated since 10.1). TensorRT 11 has no FP16/INT8 builder flags: the
  network is strongly typed and the precisions come from the graph itself (the FP16-converted ONNX, the Q/DQ ONNX).
* ``torch-tensorrt`` compiles the PyTorch module (``torch.export`` → ``convert_exported_program_to_serialized_
  trt_engine``). It needs :attr:`VariantArtifact.module`, which ``tritune build`` fills in; an artifact with only
  an ONNX file cannot use it. INT8 is not offered there (it would need a ModelOpt-quantized module). Torch-TensorRT
  names the engine's outputs ``output0``… (and the input after ``forward``'s argument, which we make ``input``), so
  its plans do not keep the output names of the ONNX path: the model's config and the manifest's signature are
  read from the engine (:func:`engine_io`), and clients read them from Triton.

Either way the batch dimension is dynamic through one optimization profile (min 1, opt, max = max_batch_size), the
timing cache is kept per GPU model and TensorRT version, and ``<version>/model.plan.json`` records what built the
plan. A plan loads only on the TensorRT release that built it (and the GPU architecture it was built for):
:func:`check_plans` compares the records with the serving image's TensorRT before deployment.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torch import nn

from builders.onnx_utils import MAX_EXPORT_BATCH
from builders.targets.base import CompiledModel, VariantArtifact, warmup_samples
from tritune.client import with_variant
from tritune.errors import (
    BuildError,
    ConfigError,
    PlanMismatchError,
    RepositoryError,
    TargetUnavailableError,
    TrituneError,
)
from tritune.model_config import DynamicBatching, InstanceGroup, ModelConfig, QueuePolicy, TensorSpec
from tritune.signature import Signature

COMPILERS = ("tensorrt", "torch-tensorrt")
PLAN_FILE = "model.plan"  # Triton's default file name for tensorrt_plan
RECORD_FILE = "model.plan.json"
PLATFORM = "tensorrt_plan"
SERVING_VERSION_ENV = "TRITUNE_SERVING_TENSORRT_VERSION"
SERVING_IMAGE_ENV = "TRITUNE_SERVING_IMAGE"
# The -py3 Triton image of a YY.MM carries that release's TensorRT (TRITON_TENSORRT_VERSION in .env, from NVIDIA's
# frameworks support matrix). The -trtllm-python-py3 flavour follows TensorRT-LLM's own TensorRT and often lags it;
# these are its TensorRT versions by YY.MM, from Triton's compatibility table (docs/introduction/compatibility.md of
# triton-inference-server/server). A plan built in nvcr.io/nvidia/pytorch:25.06-py3 (10.11) does not load there.
TRTLLM_IMAGE_TENSORRT = {
    "25.01": "10.8.0.43",
    "25.02": "10.8.0.43",
    "25.03": "10.9.0.34",
    "25.04": "10.9.0.34",
    "25.05": "10.9.0.34",
    "25.06": "10.10.0.31",
    "25.07": "10.10.0.31",
    "25.08": "10.11.0.33",
    "25.09": "10.11.0.33",
    "25.10": "10.11.0.33",
    "25.11": "10.13.3.9",
    "25.12": "10.13.3.9",
    "26.01": "10.13.3.9",
    "26.02": "10.13.3.9",
    "26.03": "10.14.1.48",
    "26.04": "10.14.1.48",
    "26.05": "10.14.1.48",
    "26.06": "10.14.1.48",
    "26.07": "10.14.1.48",
}
INSTALL_HINT = (
    "run the gpu target inside nvcr.io/nvidia/pytorch:YY.MM-py3 with the Triton image's YY.MM "
    "(TRITON_IMAGE_TAG in .env) and `pip install '.[gpu]'` there, or use `docker compose --profile gpu up builder`"
)
# A GPU instance is wasted on single images, so plans start with dynamic batching on. The sizes are the ones the
# orchestrator's batching rung prefers on GPUs (RulePolicy.preferred_batch_sizes); the delay, 0.5 ms, is half that
# rung's 1 ms, so a light load pays little for batching before the orchestrator retunes both from here.
PREFERRED_BATCH_SIZES = (4, 8, 16)
MAX_QUEUE_DELAY_US = 500
# About four full batches at max_batch_size 64: a request queued behind more would miss any sensible SLO anyway,
# so it is rejected at once instead of timing out later.
MAX_QUEUE_SIZE = 256
# The orchestrator's preferred batch sizes top out at 16; kernels are tuned for the shape the load mostly sees.
DEFAULT_OPT_BATCH = 16
WORKSPACE_BYTES = 1 << 30
RECORD_SCHEMA_VERSION = 1
# TensorRT DataType names → Triton data types.
TRT_TO_TRITON = {
    "FLOAT": "TYPE_FP32",
    "HALF": "TYPE_FP16",
    "BF16": "TYPE_BF16",
    "INT8": "TYPE_INT8",
    "UINT8": "TYPE_UINT8",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "BOOL": "TYPE_BOOL",
}


# -- pure pieces (unit-tested without TensorRT) ------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    @classmethod
    def for_max(cls, max_batch_size: int, opt: int = DEFAULT_OPT_BATCH) -> BatchProfile:
        if not 1 <= max_batch_size <= MAX_EXPORT_BATCH:
            raise BuildError(f"max batch size must be in 1..{MAX_EXPORT_BATCH}, got {max_batch_size}")
        return cls(1, max(1, min(opt, max_batch_size)), max_batch_size)


# A dynamic dimension other than the batch (a sequence length, say) with no --trt-profile for it: min, opt, max.
DEFAULT_DYNAMIC_RANGE = (1, 16, 256)


@dataclass(frozen=True)
class ShapeProfile:
    """One input's optimization profile: its full min / opt / max shapes, batch dimension first."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def parse_profiles(spec: str | None) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``--trt-profile``: ``NAME=MIN/OPT/MAX[;NAME=…]``, each a per-sample shape with ``x`` between dimensions
    (``input_ids=1/128/512``, ``pixel_values=3x224x224/3x224x224/3x224x224``)."""
    out = {}
    for item in (i.strip() for i in (spec or "").split(";") if i.strip()):
        name, eq, shapes = item.partition("=")
        parts = shapes.split("/")
        try:
            dims = tuple(tuple(int(d) for d in part.split("x")) for part in parts)
        except ValueError:
            dims = ()
        if not eq or not name.strip() or len(dims) != 3 or any(d < 1 for shape in dims for d in shape):
            raise ConfigError(f"--trt-profile {item!r} is not NAME=MIN/OPT/MAX, e.g. input_ids=1/128/512")
        out[name.strip()] = dims
    return out


def shape_profiles(
    signature: Signature,
    batch: BatchProfile,
    overrides: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None,
) -> dict[str, ShapeProfile]:
    """Every input's optimization profile, from the model's signature: the batch profile on the batch dimension,
    a fixed dimension as it is, a dynamic one from ``overrides`` (per-sample min/opt/max shapes by input name) or
    DEFAULT_DYNAMIC_RANGE."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(signature.input_names))
    if unknown:
        raise ConfigError(f"--trt-profile names {unknown}, not inputs of the model ({signature.input_names})")
    if not signature.batched:
        raise BuildError(
            "the gpu target builds models with a batch dimension so far; this one has none "
            f"({signature.describe()}): build it for --target cpu"
        )
    profiles = {}
    for t in signature.inputs:
        if t.name in overrides:
            lo, mid, hi = overrides.pop(t.name)
            if not all(t.accepts(shape) for shape in (lo, mid, hi)) or not all(
                a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True)
            ):
                raise ConfigError(
                    f"--trt-profile {t.name}={'x'.join(map(str, lo))}/{'x'.join(map(str, mid))}/"
                    f"{'x'.join(map(str, hi))} does not fit {t.describe()} or is not min ≤ opt ≤ max"
                )
        else:
            lo, mid, hi = (tuple(DEFAULT_DYNAMIC_RANGE[k] if d < 0 else d for d in t.shape) for k in range(3))
        profiles[t.name] = ShapeProfile((batch.min, *lo), (batch.opt, *mid), (batch.max, *hi))
    return profiles


# What TensorRT's ONNX parser takes into Q/DQ nodes (onnx-tensorrt docs/operators.md, TensorRT 10: QuantizeLinear
# "FP32, FP16, BF16", DequantizeLinear "INT8, FP8, FP4, INT4", both "zero_point must be zero"). A DequantizeLinear
# of INT32 (ONNX Runtime's quantized bias) fails with "only activation types allowed as input to this layer".
QUANTIZE_INPUT_TYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16"})
DEQUANTIZE_INPUT_TYPES = frozenset({"INT8", "FLOAT8E4M3FN", "FLOAT4E2M1", "INT4"})
SCALE_TYPES = QUANTIZE_INPUT_TYPES


def check_qdq_for_tensorrt(model: Any) -> int:
    """Refuse, naming the node, a Q/DQ graph TensorRT's parser would reject: a QuantizeLinear of a non-float input,
    a DequantizeLinear of anything but INT8/FP8/FP4/INT4, a scale that is not a float, or a nonzero zero-point
    (TensorRT quantizes symmetrically only). ``model``: a path or ``onnx.ModelProto``. Returns the Q/DQ nodes
    checked."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    types = {i.name: i.data_type for i in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.HasField("tensor_type"):
            types.setdefault(info.name, info.type.tensor_type.elem_type)
    for node in graph.node:  # Constant nodes hold scales and zero-points in some exports
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            types.setdefault(node.output[0], node.attribute[0].t.data_type)
    consts = {i.name: i for i in graph.initializer}

    def type_name(tensor: str) -> str:
        code = types.get(tensor)
        return onnx.TensorProto.DataType.Name(code) if code else "unknown"

    checked = 0
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        checked += 1
        where = f"{node.op_type} {node.name or node.output[0]!r}"
        allowed = QUANTIZE_INPUT_TYPES if node.op_type == "QuantizeLinear" else DEQUANTIZE_INPUT_TYPES
        if type_name(node.input[0]) not in allowed:
            bias = " (a quantized bias: build int8 with float biases, as `tritune build --target gpu` does)"
            raise BuildError(
                f"TensorRT's ONNX parser rejects {where}: its input is {type_name(node.input[0])}, TensorRT takes "
                f"{', '.join(sorted(allowed))}{bias if type_name(node.input[0]) == 'INT32' else ''}"
            )
        if len(node.input) > 1 and type_name(node.input[1]) not in SCALE_TYPES:
            raise BuildError(f"TensorRT's ONNX parser rejects {where}: its scale is {type_name(node.input[1])}")
        if len(node.input) > 2 and node.input[2]:
            zero = consts.get(node.input[2])
            if zero is not None and numpy_helper.to_array(zero).any():
                raise BuildError(
                    f"TensorRT's ONNX parser rejects {where}: a nonzero zero-point (TensorRT quantizes symmetrically "
                    "only); quantize with symmetric activations and weights"
                )
    return checked


@dataclass(frozen=True)
class PlanSettings:
    """How TensorRT builds one variant: strongly typed or not, and which builder precision flags."""

    strongly_typed: bool
    builder_flags: tuple[str, ...]

    def describe(self) -> str:
        kind = "strongly typed" if self.strongly_typed else "weakly typed"
        return f"{kind}, flags: {', '.join(self.builder_flags) or 'none'}"


def tensorrt_release(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a TensorRT version string such as ``10.11.0.33``.

    Plans are bound to a TensorRT release; the fourth number is the build of that release, not another release.
    """
    parts = re.findall(r"\d+", str(version))
    if len(parts) < 2:
        raise ConfigError(f"{version!r} is not a TensorRT version like 10.11.0.33; fix {SERVING_VERSION_ENV}")
    return int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) > 2 else 0


def plan_settings(tensorrt_version: str, precision: str) -> PlanSettings:
    """The build path for a TensorRT version and a variant precision (``fp32``, ``fp16``, ``int8``)."""
    if precision not in ("fp32", "fp16", "int8"):
        raise BuildError(f"unknown precision {precision!r}; the gpu target builds fp32, fp16 and int8 variants")
    major = tensorrt_release(tensorrt_version)[0]
    if major < 10:
        raise TargetUnavailableError(f"TensorRT {tensorrt_version} is older than 10; {INSTALL_HINT}")
    if major >= 11:
        # No FP16/INT8 builder flags any more: the FP16-converted ONNX and the Q/DQ ONNX carry their own types.
        return PlanSettings(strongly_typed=True, builder_flags=())
    return PlanSettings(
        strongly_typed=False, builder_flags={"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision]
    )


def timing_cache_path(cache_dir: Path, gpu_name: str, compute_capability: str, tensorrt_version: str) -> Path:
    """One timing cache per GPU model and TensorRT version: kernel timings from another GPU or release would be
    wrong or rejected."""
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    sm = "sm" + compute_capability.replace(".", "")
    trt = re.sub(r"[^0-9.]+", "", tensorrt_version) or "unknown"
    return Path(cache_dir) / f"{gpu}-{sm}-trt{trt}.timing-cache"


@dataclass(frozen=True)
class PlanRecord:
    """What built a plan, kept beside it as ``model.plan.json``."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    compiler: str
    variant: str
    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]
    batch_profile: BatchProfile
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    onnx_sha256: str
    plan_sha256: str
    plan_bytes: int
    built_utc: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["builder_flags"] = list(self.builder_flags)
        data["inputs"] = [_spec_dict(s) for s in self.inputs]
        data["outputs"] = [_spec_dict(s) for s in self.outputs]
        return {"schema_version": RECORD_SCHEMA_VERSION, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanRecord:
        try:
            return cls(
                tensorrt_version=str(data["tensorrt_version"]),
                gpu_name=str(data["gpu_name"]),
                compute_capability=str(data["compute_capability"]),
                compiler=str(data["compiler"]),
                variant=str(data["variant"]),
                precision=str(data["precision"]),
                strongly_typed=bool(data["strongly_typed"]),
                builder_flags=tuple(data["builder_flags"]),
                batch_profile=BatchProfile(**data["batch_profile"]),
                inputs=tuple(_spec(s) for s in data["inputs"]),
                outputs=tuple(_spec(s) for s in data["outputs"]),
                onnx_sha256=str(data["onnx_sha256"]),
                plan_sha256=str(data["plan_sha256"]),
                plan_bytes=int(data["plan_bytes"]),
                built_utc=str(data.get("built_utc", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanMismatchError(
                f"plan record lacks or mangles {exc}; rebuild with `tritune build --target gpu`"
            ) from exc

    def write(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def read(cls, path: Path) -> PlanRecord:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise PlanMismatchError(
                f"{path} is missing, so the plan's TensorRT version is unknown; "
                "rebuild with `tritune build --target gpu`"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise PlanMismatchError(f"{path} is unreadable ({exc}); rebuild with `tritune build --target gpu`") from exc


def _spec_dict(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "data_type": spec.data_type, "dims": list(spec.dims)}


def _spec(data: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(str(data["name"]), str(data["data_type"]), tuple(int(d) for d in data["dims"]))


def plan_model_config(
    model_name: str,
    artifact: VariantArtifact,
    sha256: str,
    max_batch_size: int,
    *,
    tensorrt_version: str,
    compiler: str = "tensorrt",
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
) -> ModelConfig:
    """The serving config of a plan: one GPU instance, dynamic batching with a bounded queue, CUDA graphs. The
    tensors are the plan's own (:func:`engine_io`), whichever compiler named them."""
    return ModelConfig(
        name=model_name,
        platform=PLATFORM,
        max_batch_size=max_batch_size,
        inputs=inputs,
        outputs=outputs,
        instance_group=(InstanceGroup(count=1, kind="KIND_GPU"),),
        dynamic_batching=DynamicBatching(
            preferred_batch_size=tuple(b for b in PREFERRED_BATCH_SIZES if b <= max_batch_size),
            max_queue_delay_us=MAX_QUEUE_DELAY_US,
            default_queue_policy=QueuePolicy(max_queue_size=MAX_QUEUE_SIZE),
        ),
        # Graphs cut the per-launch CPU cost that dominates a small CNN; they cost GPU memory per instance, which
        # the orchestrator's per-instance memory estimate (process memory ÷ instances) includes.
        cuda_graphs=True,
        model_warmup=warmup_samples(inputs, max_batch_size),
        parameters={
            "variant": artifact.variant,
            "precision": artifact.precision,
            # Also makes a config differ whenever the artifact does, so a reload with new files is never skipped.
            "artifact_sha256": sha256,
            "tensorrt_version": tensorrt_version,
            "compiler": compiler,
        },
    )


def public_config(live_config: ModelConfig, live: int, versions: Mapping[int, VariantArtifact]) -> ModelConfig:
    """The public model's config: the live variant's plan config, serving only its version, plus the variant →
    version map the orchestrator switches with (as :meth:`CpuTarget.compile_public` writes it)."""
    return with_variant(
        live_config.with_parameters(variant_versions=json.dumps({a.variant: n for n, a in sorted(versions.items())})),
        versions[live].variant,
    )


# -- deploy-time check -------------------------------------------------------------------------------------------------
def image_tensorrt(image: str, py3_tensorrt_version: str) -> str:
    """The TensorRT a Triton image serves plans with: ``py3_tensorrt_version`` (``TRITON_TENSORRT_VERSION``) for the
    ``-py3`` flavour, Triton's compatibility table for ``-trtllm-python-py3``; any other flavour is refused."""
    m = re.fullmatch(r"(?:[^\s]*/)?tritonserver:(\d{2}\.\d{2})-([a-z0-9-]+)", image.strip())
    if m is None:
        raise ConfigError(
            f"{image!r} is not an NGC Triton image like nvcr.io/nvidia/tritonserver:25.06-py3; fix {SERVING_IMAGE_ENV}"
        )
    tag, flavour = m.groups()
    if flavour == "py3":
        return py3_tensorrt_version
    if flavour == "trtllm-python-py3":
        if tag not in TRTLLM_IMAGE_TENSORRT:
            raise ConfigError(
                f"the TensorRT of {image} is not in tritune's copy of Triton's compatibility table; serve the plans "
                f"with nvcr.io/nvidia/tritonserver:{tag}-py3 (TRITON_IMAGE_FLAVOUR=py3 in .env)"
            )
        return TRTLLM_IMAGE_TENSORRT[tag]
    raise PlanMismatchError(
        f"{image}: tritune serves TensorRT plans on the -py3 and -trtllm-python-py3 flavours, whose TensorRT it "
        f"knows; use nvcr.io/nvidia/tritonserver:{tag}-py3 (TRITON_IMAGE_FLAVOUR=py3 in .env)"
    )


def check_plan_record(
    record: PlanRecord,
    serving_tensorrt_version: str,
    serving_compute_capability: str | None = None,
    where: str = "plan",
    serving_image: str | None = None,
) -> None:
    """Raise :class:`PlanMismatchError` unless the serving TensorRT (and GPU, when known) can load the plan."""
    if tensorrt_release(record.tensorrt_version) != tensorrt_release(serving_tensorrt_version):
        if serving_image and not re.search(r":\d{2}\.\d{2}-py3$", serving_image):  # a flavour of its own TensorRT
            raise PlanMismatchError(
                f"{where} was built with TensorRT {record.tensorrt_version} but {serving_image} serves with TensorRT "
                f"{serving_tensorrt_version} (Triton's compatibility table); serve it with the -py3 flavour "
                "(TRITON_IMAGE_FLAVOUR=py3 in .env), or build in an NGC PyTorch image with that TensorRT"
            )
        raise PlanMismatchError(
            f"{where} was built with TensorRT {record.tensorrt_version} but Triton serves with TensorRT "
            f"{serving_tensorrt_version}; rebuild it in nvcr.io/nvidia/pytorch of the Triton image's YY.MM "
            "(TRITON_IMAGE_TAG in .env): `docker compose --profile gpu up builder`"
        )
    if serving_compute_capability and record.compute_capability != serving_compute_capability:
        raise PlanMismatchError(
            f"{where} was built for compute capability {record.compute_capability} ({record.gpu_name}) but the "
            f"serving GPU has {serving_compute_capability}; rebuild it on the GPU model that serves it"
        )


def check_plans(
    repository: Path,
    serving_tensorrt_version: str | None = None,
    serving_compute_capability: str | None = None,
    environ: Mapping[str, str] | None = None,
    serving_image: str | None = None,
) -> list[tuple[Path, PlanRecord]]:
    """Check every ``model.plan`` in a repository against the serving TensorRT (the image's, when the image is
    named: its flavour may carry another TensorRT than its YY.MM's -py3); returns (plan, record) pairs."""
    environ = os.environ if environ is None else environ
    serving = serving_tensorrt_version or environ.get(SERVING_VERSION_ENV, "")
    if not serving:
        raise ConfigError(
            f"the serving image's TensorRT version is unknown; set {SERVING_VERSION_ENV} "
            "(compose sets it from TRITON_TENSORRT_VERSION in .env)"
        )
    serving_image = serving_image or environ.get(SERVING_IMAGE_ENV) or None
    if serving_image:
        serving = image_tensorrt(serving_image, serving)
    repository = Path(repository)
    plans = sorted(repository.glob(f"*/[0-9]*/{PLAN_FILE}"))
    if not plans:
        raise RepositoryError(f"no TensorRT plans under {repository}; build them with `tritune build --target gpu`")
    checked = []
    for plan in plans:
        where = str(plan.relative_to(repository))
        record = PlanRecord.read(plan.with_name(RECORD_FILE))
        if _sha256(plan) != record.plan_sha256:
            raise PlanMismatchError(f"{where} changed after it was built; rebuild with `tritune build --target gpu`")
        check_plan_record(record, serving, serving_compute_capability, where, serving_image)
        checked.append((plan, record))
    return checked


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the target --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuDevice:
    name: str
    compute_capability: str  # "9.0"


class ServingModule(nn.Module):
    """What torch-tensorrt compiles: the engine's input is named after ``forward``'s argument (``input``, as in the
    ONNX), and an FP16 body keeps FP32 inputs and outputs, as the FP16 ONNX does."""

    def __init__(self, module: nn.Module, half: bool):
        super().__init__()
        self.module = module.half() if half else module
        self.half_precision = half

    def forward(self, input):
        x = input.half() if self.half_precision else input
        return self.module(x).float()


class TensorRTTarget:
    name = "gpu"
    compilers = COMPILERS
    backend_description = "Triton TensorRT backend (tensorrt_plan)"
    # TensorRT's parser takes no INT32 into a DequantizeLinear: int8's biases stay float (check_qdq_for_tensorrt).
    int8_quantize_bias = False

    def __init__(
        self,
        compiler: str = "tensorrt",
        cache_dir: Path | str | None = None,
        opt_batch_size: int = DEFAULT_OPT_BATCH,
        environ: Mapping[str, str] | None = None,
        profiles: str | None = None,
    ):
        if compiler not in COMPILERS:
            raise BuildError(f"unknown compiler {compiler!r}; choose from {', '.join(COMPILERS)}")
        self.compiler = compiler
        self.backend_description = f"Triton TensorRT backend (tensorrt_plan), compiled with {compiler}"
        self.cache_dir = Path(cache_dir if cache_dir is not None else ".cache/tritune") / "tensorrt"
        self.opt_batch_size = opt_batch_size
        self.shape_overrides = parse_profiles(profiles)  # checked against each model's inputs when it is built
        self._environ = os.environ if environ is None else environ
        self._tensorrt_version: str | None = None
        self._device: GpuDevice | None = None
        # (ONNX sha256, precision, max batch) → version folder already holding that plan: the public model reuses
        # the per-variant plans instead of building every engine twice.
        self._built: dict[tuple[str, str, int], Path] = {}

    # -- availability --------------------------------------------------------------------------------------------------
    def check_available(self) -> None:
        try:
            import tensorrt
        except ImportError:
            raise TargetUnavailableError(f"TensorRT is not installed; {INSTALL_HINT}") from None
        version = str(tensorrt.__version__)
        plan_settings(version, "fp32")  # refuses TensorRT < 10
        if self.compiler == "torch-tensorrt":
            try:
                import torch_tensorrt  # noqa: F401
            except ImportError:
                raise TargetUnavailableError(
                    f"--compiler torch-tensorrt needs torch-tensorrt; {INSTALL_HINT}"
                ) from None
        import torch

        if not torch.cuda.is_available():
            raise TargetUnavailableError(
                "no CUDA GPU is visible (torch.cuda.is_available() is False); the gpu target builds on an NVIDIA "
                "GPU with its driver: run it there, e.g. `docker compose --profile gpu up builder`"
            )
        serving = self._environ.get(SERVING_VERSION_ENV)
        image = self._environ.get(SERVING_IMAGE_ENV)
        if serving and image:
            serving = image_tensorrt(image, serving)
        if serving and tensorrt_release(version) != tensorrt_release(serving):
            # Fail before hours of training, not at deployment.
            raise PlanMismatchError(
                f"this builder has TensorRT {version} but Triton will serve with {serving} "
                f"({image or SERVING_VERSION_ENV}); build in nvcr.io/nvidia/pytorch of the Triton image's YY.MM "
                "(TRITON_IMAGE_TAG in .env) and serve the -py3 flavour"
            )
        index = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        self._tensorrt_version = version
        self._device = GpuDevice(torch.cuda.get_device_name(index), f"{major}.{minor}")

    # -- Target protocol -----------------------------------------------------------------------------------------------
    def compile(self, artifact: VariantArtifact, model_name: str, out_root: Path, max_batch_size: int) -> CompiledModel:
        model_dir = Path(out_root) / model_name
        record = self._build_version(artifact, model_dir / "1", max_batch_size)
        config = self._config(model_name, artifact, record, max_batch_size)
        config.write(model_dir)
        return CompiledModel(model_name, model_dir, config, record.onnx_sha256)

    def compile_public(
        self, versions: dict[int, VariantArtifact], live: int, model_name: str, out_root: Path, max_batch_size: int
    ) -> CompiledModel:
        """The public model: every variant as one version; ``version_policy`` picks the one that serves (see
        :meth:`builders.targets.cpu.CpuTarget.compile_public` for why)."""
        if live not in versions:
            raise BuildError(f"live version {live} is not among {sorted(versions)}")
        model_dir = Path(out_root) / model_name
        records = {n: self._build_version(a, model_dir / str(n), max_batch_size) for n, a in versions.items()}
        # One config serves every version, so every plan must show Triton the same tensors.
        if len({(r.inputs, r.outputs) for r in records.values()}) > 1:
            raise BuildError(
                f"the plans of {model_name}'s versions disagree on input/output tensors; build every variant with "
                "the same --compiler"
            )
        config = public_config(self._config(model_name, versions[live], records[live], max_batch_size), live, versions)
        config.write(model_dir)
        return CompiledModel(model_name, model_dir, config, records[live].onnx_sha256)

    # -- internals -----------------------------------------------------------------------------------------------------
    def _config(
        self, model_name: str, artifact: VariantArtifact, record: PlanRecord, max_batch_size: int
    ) -> ModelConfig:
        return plan_model_config(
            model_name,
            artifact,
            record.onnx_sha256,
            max_batch_size,
            tensorrt_version=record.tensorrt_version,
            compiler=record.compiler,
            inputs=record.inputs,
            outputs=record.outputs,
        )

    def _ready(self) -> tuple[str, GpuDevice]:
        if self._tensorrt_version is None or self._device is None:
            self.check_available()
        assert self._tensorrt_version is not None and self._device is not None
        return self._tensorrt_version, self._device

    def _build_version(self, artifact: VariantArtifact, version_dir: Path, max_batch_size: int) -> PlanRecord:
        profile = BatchProfile.for_max(max_batch_size, self.opt_batch_size)
        version_dir.mkdir(parents=True, exist_ok=False)
        onnx_sha = artifact.sha256
        key = (onnx_sha, artifact.precision, max_batch_size)
        done = self._built.get(key)
        if done is not None and (done / PLAN_FILE).is_file():
            shutil.copyfile(done / PLAN_FILE, version_dir / PLAN_FILE)
            shutil.copyfile(done / RECORD_FILE, version_dir / RECORD_FILE)
            return PlanRecord.read(version_dir / RECORD_FILE)
        if self.compiler == "tensorrt" and artifact.precision == "int8":
            check_qdq_for_tensorrt(artifact.onnx_path)  # before TensorRT: a clear line instead of a parser dump
        version, device = self._ready()
        cache = timing_cache_path(self.cache_dir, device.name, device.compute_capability, version)
        if self.compiler == "tensorrt":
            settings = plan_settings(version, artifact.precision)
            shapes = shape_profiles(Signature.from_onnx(artifact.onnx_path), profile, self.shape_overrides)
            plan = build_onnx_plan(artifact.onnx_path, settings, shapes, cache)
        else:
            settings = PlanSettings(strongly_typed=True, builder_flags=())  # use_explicit_typing
            plan = build_torch_tensorrt_plan(artifact, profile, cache, self.shape_overrides)
        inputs, outputs = engine_io(plan)
        (version_dir / PLAN_FILE).write_bytes(plan)
        record = PlanRecord(
            tensorrt_version=version,
            gpu_name=device.name,
            compute_capability=device.compute_capability,
            compiler=self.compiler,
            variant=artifact.variant,
            precision=artifact.precision,
            strongly_typed=settings.strongly_typed,
            builder_flags=settings.builder_flags,
            batch_profile=profile,
            inputs=inputs,
            outputs=outputs,
            onnx_sha256=onnx_sha,
            plan_sha256=hashlib.sha256(plan).hexdigest(),
            plan_bytes=len(plan),
            built_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        record.write(version_dir / RECORD_FILE)
        self._built[key] = version_dir
        return record


# -- TensorRT calls (need TensorRT and a GPU) --------------------------------------------------------------------------
def _logger():
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def build_onnx_plan(
    onnx_path: Path,
    settings: PlanSettings,
    profiles: Mapping[str, ShapeProfile],
    timing_cache: Path,
    workspace_bytes: int = WORKSPACE_BYTES,
) -> bytes:
    """Serialize a TensorRT engine from an ONNX file with a dynamic batch dimension; ``profiles`` gives every
    input's min / opt / max shapes (:func:`shape_profiles`)."""
    import tensorrt as trt

    logger = _logger()
    builder = trt.Builder(logger)
    # Networks are always explicit-batch since TensorRT 10 (the EXPLICIT_BATCH flag is deprecated and ignored);
    # the optimization profile below covers the dynamic batch dimension.
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if settings.strongly_typed and strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(
            f"TensorRT's ONNX parser rejected {Path(onnx_path).name}: {errors[:400]}; re-export the variant"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    opt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shapes = profiles.get(tensor.name)
        if shapes is None:
            raise BuildError(f"TensorRT sees an input {tensor.name!r} the ONNX signature lacks; re-export the model")
        opt_profile.set_shape(tensor.name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(opt_profile)
    for flag in settings.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    cached = _load_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(
            f"TensorRT could not build {Path(onnx_path).name} ({settings.describe()}); see the TensorRT log above"
        )
    if cached:
        _save_timing_cache(config, timing_cache)
    return bytes(memoryview(serialized))


TORCH_DTYPES = {"FP32": "float32", "FP16": "float16", "INT64": "int64", "INT32": "int32", "BOOL": "bool"}


def torch_tensorrt_input(signature: Signature, profile: BatchProfile, overrides=None) -> tuple[str, ShapeProfile]:
    """The one input Torch-TensorRT compiles here, its name and min / opt / max shapes, from the variant's ONNX
    signature (not a constant): :class:`ServingModule` takes one tensor."""
    if len(signature.inputs) != 1:
        raise BuildError(
            f"--compiler torch-tensorrt compiles one-input modules here; this one takes {signature.describe()}: use "
            "--compiler tensorrt (the ONNX parser takes any number of inputs)"
        )
    if profile.max < 2:
        # torch.export specializes a dimension whose example size is 1, so a batch range of 1..1 cannot stay
        # dynamic, and the plan must have a dynamic batch dimension for Triton's max_batch_size.
        raise BuildError(
            "--compiler torch-tensorrt needs --max-batch-size of at least 2 (torch.export fixes a batch of 1); "
            "use --compiler tensorrt for --max-batch-size 1"
        )
    tensor = signature.inputs[0]
    if tensor.datatype not in TORCH_DTYPES:
        raise BuildError(f"--compiler torch-tensorrt does not take a {tensor.datatype} input; use --compiler tensorrt")
    return tensor.name, shape_profiles(signature, profile, overrides)[tensor.name]


def example_batch(profile: BatchProfile) -> int:
    """The example tensor's batch for torch.export: at least 2 (1 would be specialized) and within min..max, or the
    export refuses its own example."""
    return min(max(2, profile.opt), profile.max)


def build_torch_tensorrt_plan(
    artifact: VariantArtifact, profile: BatchProfile, timing_cache: Path, overrides=None
) -> bytes:
    """Serialize a TensorRT engine from the variant's PyTorch module with Torch-TensorRT (strongly typed). The
    engine's tensor names are Torch-TensorRT's (the input after ``forward``'s argument, outputs ``output0``…):
    :func:`engine_io` reads them back into the model's config and the manifest's signature."""
    if artifact.module is None:
        raise BuildError(
            f"{artifact.variant}: --compiler torch-tensorrt compiles the PyTorch module and this artifact has only "
            "its ONNX; build through `tritune build` (which passes the module) or use --compiler tensorrt"
        )
    if artifact.precision == "int8":
        raise BuildError(
            "--compiler torch-tensorrt builds fp32 and fp16 variants; int8 comes from its Q/DQ ONNX: use "
            "--compiler tensorrt, or leave int8 out of --variants"
        )
    signature = Signature.from_onnx(artifact.onnx_path)
    _name, shapes = torch_tensorrt_input(signature, profile, overrides)
    # A copy: the build later measures the original module on the CPU.
    module = ServingModule(copy.deepcopy(artifact.module), half=artifact.precision == "fp16")
    exported, dtype = export_serving_module(module, signature.inputs[0].datatype, shapes, profile, artifact.variant)
    return convert_to_plan(exported, shapes, dtype, timing_cache, artifact.variant)


def export_serving_module(
    module: nn.Module, datatype: str, shapes: ShapeProfile, profile: BatchProfile, variant: str, device: str = "cuda"
):
    """``torch.export`` of the serving module with a dynamic batch dimension (min..max of the profile), from an
    example of :func:`example_batch` rows; returns the exported program and the input's torch dtype."""
    import torch

    dtype = getattr(torch, TORCH_DTYPES[datatype])
    module = module.eval().to(device)
    example_shape = (example_batch(profile), *shapes.opt[1:])
    example = (
        torch.rand(example_shape, device=device).to(dtype)
        if dtype.is_floating_point
        else torch.ones(example_shape, dtype=dtype, device=device)
    )
    batch = torch.export.Dim("batch", min=profile.min, max=profile.max)
    try:
        with torch.no_grad():
            return torch.export.export(module, (example,), dynamic_shapes=({0: batch},)), dtype
    except Exception as exc:  # torch.export raises many kinds (UserError, ConstraintViolationError, …)
        raise BuildError(
            f"{variant}: torch.export could not export the module with a dynamic batch "
            f"({type(exc).__name__}: {_first_line(exc)}); use --compiler tensorrt"
        ) from exc


def convert_to_plan(exported, shapes: ShapeProfile, dtype, timing_cache: Path, variant: str) -> bytes:
    """Torch-TensorRT's conversion of an exported program to a serialized engine, its failure as one BuildError."""
    import torch_tensorrt

    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        serialized = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine(
            exported,
            inputs=[
                torch_tensorrt.Input(min_shape=shapes.min, opt_shape=shapes.opt, max_shape=shapes.max, dtype=dtype)
            ],
            use_explicit_typing=True,
            require_full_compilation=True,
            min_block_size=1,
            timing_cache_path=str(timing_cache),
        )
    except Exception as exc:
        # Torch-TensorRT logs a converter's failure and then reads a variable the failure never set, so what reaches
        # here is often an UnboundLocalError ('interpreter_result'); the converter's own error is in its log.
        raise BuildError(
            f"{variant}: Torch-TensorRT could not convert the module ({type(exc).__name__}: {_first_line(exc)}); "
            "the converter's error is in the log above: build with --compiler tensorrt"
        ) from exc
    return bytes(serialized)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def engine_io(plan: bytes) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The plan's input and output tensors as Triton sees them (batch dimension left out); loading the plan here
    also proves it deserializes."""
    import tensorrt as trt

    engine = trt.Runtime(_logger()).deserialize_cuda_engine(plan)
    if engine is None:
        raise BuildError("TensorRT cannot load the plan it just built; see the TensorRT log above")
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(engine.get_tensor_shape(name))
        if not shape or shape[0] != -1:
            raise BuildError(f"plan tensor {name!r} has no dynamic batch dimension ({shape}); re-export the variant")
        dtype = engine.get_tensor_dtype(name).name
        if dtype not in TRT_TO_TRITON:
            raise BuildError(f"plan tensor {name!r} has type {dtype}, which Triton's config cannot declare")
        spec = TensorSpec(name, TRT_TO_TRITON[dtype], shape[1:])
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    return tuple(inputs), tuple(outputs)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _load_timing_cache(config, path: Path) -> bool:
    """Give ``config`` the timing cache kept at ``path``, or a new one; False when the build goes without one.

    As TensorRT defines them: ``create_timing_cache`` returns None (it does not raise) for a blob it cannot read,
    a truncated or corrupt file or one of another TensorRT release, and ``set_timing_cache`` returns False when the
    cache was made on another device and ``ignore_mismatch`` is False. Either way the build starts a new cache
    instead of failing: the cache only saves build time.
    """
    data = path.read_bytes() if path.is_file() else b""
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # documented to return None; older bindings raised instead (as Polygraphy guards)
            cache = None
        if cache is None:
            _warn(f"timing cache {path} is truncated or from another TensorRT release; starting a new one")
        elif config.set_timing_cache(cache, ignore_mismatch=False):
            return True
        else:
            _warn(f"timing cache {path} was made on another GPU; starting a new one")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        _warn("TensorRT could not start a timing cache; building without one (builds take longer)")
        return False
    return True


def _save_timing_cache(config, path: Path) -> bool:
    """Write the config's timing cache over ``path`` atomically; False (said once) when there is none to write."""
    cache = config.get_timing_cache()
    blob = cache.serialize() if cache is not None else None
    data = bytes(memoryview(blob)) if blob is not None else b""
    if not data:
        _warn(f"no timing cache to keep at {path}; the next build times its kernels again")
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)  # a concurrent build never reads half a cache
    return True


# -- `python -m builders.check_plans`: the deploy-time check -----------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m builders.check_plans",
        description="Check that every TensorRT plan in a model repository was built for the serving TensorRT.",
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="(default: %(default)s)")
    p.add_argument(
        "--serving-tensorrt-version",
        default=None,
        help=f"TensorRT of the Triton image (default: ${SERVING_VERSION_ENV})",
    )
    p.add_argument("--serving-compute-capability", default=None, help="e.g. 9.0; checked when given")
    p.add_argument(
        "--serving-image",
        default=None,
        help=f"the Triton image, e.g. nvcr.io/nvidia/tritonserver:25.06-py3; its flavour's TensorRT is checked "
        f"(default: ${SERVING_IMAGE_ENV})",
    )
    args = p.parse_args(argv)
    try:
        checked = check_plans(
            args.repository,
            args.serving_tensorrt_version,
            args.serving_compute_capability,
            serving_image=args.serving_image,
        )
    except TrituneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    versions = sorted({r.tensorrt_version for _, r in checked})
    print(f"ok: {len(checked)} plan(s) in {args.repository} built with TensorRT {', '.join(versions)}")
    return 0
