"""CPU target: Triton's Python backend running the variant's ONNX with ONNX Runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from builders.onnx_utils import MAX_EXPORT_BATCH
from builders.targets.base import CompiledModel, VariantArtifact, warmup_samples
from tritune.client import with_variant
from tritune.errors import BuildError
from tritune.model_config import InstanceGroup, ModelConfig
from tritune.signature import Signature

MODEL_PY = Path(__file__).resolve().parent.parent / "triton" / "model.py"


def cpu_model_config(
    model_name: str, artifact: VariantArtifact, sha256: str, max_batch_size: int, signature: Signature | None = None
) -> ModelConfig:
    """Triton's default serving config for a variant: one CPU instance, no dynamic batching, warmed before READY.

    Inputs and outputs come from the variant's ONNX graph (``signature``, read from the file when not given); a
    model without a batch dimension gets ``max_batch_size: 0``. The orchestrator starts from here and retunes
    batching and instances live.
    """
    signature = signature or Signature.from_onnx(artifact.onnx_path)
    inputs, outputs = signature.tensor_specs()
    return ModelConfig(
        name=model_name,
        backend="python",
        max_batch_size=max_batch_size if signature.batched else 0,
        inputs=inputs,
        outputs=outputs,
        instance_group=(InstanceGroup(count=1, kind="KIND_CPU"),),
        model_warmup=warmup_samples(inputs, max_batch_size if signature.batched else 0),
        parameters={
            "intra_op_num_threads": "auto",
            "variant": artifact.variant,
            "precision": artifact.precision,
            # Also makes a config differ whenever the artifact does, so a reload with new files is never skipped.
            "artifact_sha256": sha256,
        },
    )


class CpuTarget:
    name = "cpu"
    backend_description = "Triton Python backend + ONNX Runtime (CPUExecutionProvider)"
    # ONNX Runtime folds an INT32 bias behind its DequantizeLinear into one QLinearConv / QGemm kernel.
    int8_quantize_bias = True

    def check_available(self) -> None:
        if not MODEL_PY.is_file():
            raise BuildError(f"{MODEL_PY} is missing from the installation; reinstall the package")

    def compile(self, artifact: VariantArtifact, model_name: str, out_root: Path, max_batch_size: int) -> CompiledModel:
        if not 1 <= max_batch_size <= MAX_EXPORT_BATCH:
            raise BuildError(f"max batch size must be in 1..{MAX_EXPORT_BATCH}, got {max_batch_size}")
        model_dir = out_root / model_name
        version_dir = model_dir / "1"
        version_dir.mkdir(parents=True, exist_ok=False)
        shutil.copyfile(artifact.onnx_path, version_dir / "model.onnx")
        shutil.copyfile(MODEL_PY, version_dir / "model.py")
        sha = artifact.sha256
        config = cpu_model_config(model_name, artifact, sha, max_batch_size)
        config.write(model_dir)
        return CompiledModel(model_name, model_dir, config, sha)

    def compile_public(
        self, versions: dict[int, VariantArtifact], live: int, model_name: str, out_root: Path, max_batch_size: int
    ) -> CompiledModel:
        """The public model: every variant as one version; ``version_policy`` picks the one that serves.

        Switching variants is then a config-only reload (Triton loads the new version, routes to it when READY
        and unloads the old one after its requests finish), and later config-only reloads (instances, batching)
        keep serving the chosen version's files from disk.
        """
        if live not in versions:
            raise BuildError(f"live version {live} is not among {sorted(versions)}")
        model_dir = out_root / model_name
        for number, artifact in versions.items():
            version_dir = model_dir / str(number)
            version_dir.mkdir(parents=True, exist_ok=False)
            shutil.copyfile(artifact.onnx_path, version_dir / "model.onnx")
            shutil.copyfile(MODEL_PY, version_dir / "model.py")
        sha = versions[live].sha256
        config = with_variant(
            cpu_model_config(model_name, versions[live], sha, max_batch_size).with_parameters(
                variant_versions=json.dumps({a.variant: n for n, a in sorted(versions.items())})
            ),
            versions[live].variant,
        )
        config.write(model_dir)
        return CompiledModel(model_name, model_dir, config, sha)
