from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from tritune.model_config import ModelConfig, TensorSpec, WarmupSample

# Runs per warmup sample and instance: the first run of a session pays for its allocations (ONNX Runtime's arena,
# the Python backend's shared-memory pool, a TensorRT context's buffers); the second is a steady one.
WARMUP_COUNT = 2


def warmup_samples(inputs: tuple[TensorSpec, ...], max_batch_size: int) -> tuple[WarmupSample, ...]:
    """Zeros at batch 1 and at the largest batch, so a newly loaded version or instance is warm before it serves.

    Dynamic batching and batched clients send batches up to ``max_batch_size``; warming the largest grows the
    buffers once, before READY, instead of under the first burst of live requests. Triton's warmup needs every
    dimension fixed: a dynamic one (-1, a sequence length, say) is warmed at 1, the one size every such model takes.
    A model with a string input gets none: an empty string is no input such a model can be assumed to take.
    """
    if any(spec.data_type == "TYPE_STRING" for spec in inputs):
        return ()
    fixed = tuple(replace(spec, dims=tuple(1 if d < 0 else d for d in spec.dims)) for spec in inputs)
    sizes = sorted({1, max_batch_size}) if max_batch_size > 0 else [0]
    return tuple(WarmupSample(f"zeros_batch_{b}", b, fixed, count=WARMUP_COUNT) for b in sizes)


@dataclass(frozen=True)
class VariantArtifact:
    """One optimized variant as the builders produced it: an ONNX file with a dynamic batch dimension."""

    variant: str
    precision: str
    onnx_path: Path
    # The PyTorch module the ONNX came from, for compilers that start from PyTorch (torch-tensorrt); None when only
    # the ONNX is at hand. The ONNX file is the artifact, so the module takes no part in equality.
    module: Any = field(default=None, compare=False, repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.onnx_path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class CompiledModel:
    model_name: str
    model_dir: Path
    config: ModelConfig
    artifact_sha256: str


class Target(Protocol):
    name: str
    backend_description: str
    # How the int8 variant's Q/DQ ONNX quantizes biases (builders.onnx_utils.to_int8): the form this target's
    # compiler parses. The manifest's int8 accuracy is measured on that same ONNX.
    int8_quantize_bias: bool

    def check_available(self) -> None:
        """Raise TargetUnavailableError, saying what to install, when the toolchain is missing."""

    def compile(self, artifact: VariantArtifact, model_name: str, out_root: Path, max_batch_size: int) -> CompiledModel:
        """Write ``out_root/model_name/`` (version folder ``1`` + config.pbtxt) and return what was written."""

    def compile_public(
        self, versions: dict[int, VariantArtifact], live: int, model_name: str, out_root: Path, max_batch_size: int
    ) -> CompiledModel:
        """Write the public model with one version per variant, ``live`` selected by its version policy."""
