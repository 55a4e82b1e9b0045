"""The build manifest: one JSON file in the model repository, owned here as a typed, versioned record.

``tritune build`` writes it; the orchestrator, the sweep, the demo and the benchmarks read it (the orchestrator
takes each variant's accuracy from here to honour the accuracy floor). Every field is documented in
docs/builders.md. A manifest of another schema version, or one missing a field, is refused with a line that says
to rebuild: nothing downstream guesses at a missing key.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tritune.errors import RepositoryError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class VariantRecord:
    """One variant as built: what it is, what it costs, how accurate it is, what built it."""

    model_name: str  # its own Triton model (the public model serves it as a version)
    variant: str  # fp32, pruned, distilled, fp16, int8
    precision: str
    architecture: str
    arch_kwargs: dict[str, Any]
    derived_from: str | None
    parameters: int
    flops: int | None  # None where the builder cannot count them (an imported ONNX graph)
    file_bytes: int
    sha256: str
    top1: float  # held-out accuracy, 0..1, by the manifest's ``accuracy["metric"]`` (top-1 unless it says otherwise)
    top1_delta_vs_fp32_points: float
    error_vs_fp32: dict[str, float]  # max abs/rel error of the logits vs the fp32 ONNX model
    export_check_vs_torch: dict[str, float]
    latency_ms: dict[str, float]  # in-process ONNX Runtime latency by "batch_<n>"
    target: str  # cpu or gpu
    backend: str
    built_with: dict[str, Any]  # versions of torch, onnxruntime, TensorRT, …
    dataset_fingerprint: str
    accuracy_target_met: bool | None = None  # pruned and int8 only: within the build's accuracy target
    # Per-image correctness on the held-out images (tritune.compare.pack) and top-1's 95% Wilson interval: the
    # paired comparison of variants. None in manifests built before they were recorded.
    correct: str | None = None
    top1_ci95: list[float] | None = None

    @property
    def latency_ms_b32(self) -> float:
        """The variant's relative cost: in-process latency at batch 32."""
        return float(self.latency_ms["batch_32"])


def version_numbers(variants: dict[str, VariantRecord]) -> dict[str, int]:
    """The public model's version of each variant: least accurate first (equal accuracy: cheaper first, then by
    name). Triton sends a request without a version to the highest loaded version, so the most accurate variant
    loaded is the one that serves, and a cheaper rung kept loaded and warm beside it (``tritune/apply.py``'s
    standby) is a lower version: a step down to it unloads the served version and nothing loads."""
    order = sorted(variants, key=lambda v: (variants[v].top1, variants[v].latency_ms_b32, v))
    return {v: n for n, v in enumerate(order, start=1)}


@dataclass(frozen=True)
class Manifest:
    dataset: dict[str, Any]  # name, source, image counts, classes, input shape, fingerprint, notes
    public_model: str
    public_variant: str | None  # the version the public model serves first
    public_versions: dict[str, int]  # variant → version of the public model
    input: dict[str, Any]
    output: dict[str, Any]
    accuracy_target_points: float
    options: dict[str, Any]  # the build's options
    variants: dict[str, VariantRecord]
    created_utc: str = ""
    host: dict[str, Any] = field(default_factory=dict)
    build_seconds: float | None = None
    # The model's interface (tritune.signature.Signature.to_dict) and what its variants' ``top1`` measures
    # (tritune.accuracy.Evaluator.describe); manifests written before these were recorded are the seed CNN's.
    signature: dict[str, Any] | None = None
    accuracy: dict[str, Any] = field(default_factory=lambda: {"metric": "top1", "meaning": "top-1 against the labels"})
    source: str = "seed CNN (builders/models.py)"
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["variants"] = {name: _without_none(asdict(v)) for name, v in self.variants.items()}
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> Manifest:
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RepositoryError(
                f"{source} has schema version {version!r}, this tritune reads {SCHEMA_VERSION}; "
                "rebuild with `tritune build`"
            )
        try:
            variants = {name: VariantRecord(**_known(VariantRecord, v)) for name, v in d["variants"].items()}
            return cls(**{**_known(cls, d), "variants": variants})
        except (KeyError, TypeError) as exc:
            raise RepositoryError(
                f"{source} lacks a field or has a malformed one ({exc}); rebuild with `tritune build`"
            ) from exc

    @classmethod
    def read(cls, repository: Path) -> Manifest:
        return cls.from_dict(load_json(repository), str(Path(repository) / MANIFEST))

    def write(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @property
    def data_dir(self) -> str:
        return str(self.options.get("data_dir", "data"))


def _known(cls, d: dict[str, Any]) -> dict[str, Any]:
    """The keys ``cls`` declares: a newer builder's extra field does not break an older reader."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _without_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not (k == "accuracy_target_met" and v is None)}


def load_json(repository: Path) -> dict[str, Any]:
    """The manifest's raw JSON, with a clear error when it is missing or unreadable."""
    path = Path(repository) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RepositoryError(f"{path} does not exist; build the repository first with `tritune build`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{path} is unreadable or not JSON ({exc}); rebuild with `tritune build`") from exc


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
