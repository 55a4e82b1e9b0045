"""The build pipeline: data → fp32 → pruned / distilled / fp16 / int8 → ONNX → target → model repository."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from builders import onnx_utils as ox
from builders.data import DEFAULT_TRAIN_IMAGES, load_dataset
from builders.models import (
    INPUT_DATATYPE,
    INPUT_SHAPE,
    NUM_CLASSES,
    SEED_SIGNATURE,
    CompressedNet,
    SeedCNN,
    count_flops,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)
from builders.prune import structured_prune
from builders.repository import MANIFEST, StagedRepository
from builders.targets import VariantArtifact, get_target
from builders.train import TrainConfig, distill, predict_logits, top1, train
from tritune.compare import pack, wilson
from tritune.errors import BuildError, CheckpointError, ExportError, RepositoryError
from tritune.manifest import Manifest, VariantRecord, version_numbers
from tritune.signature import Signature

VARIANTS = ("fp32", "pruned", "distilled", "fp16", "int8", "small", "tiny")
PRECISION = {v: {"fp16": "fp16", "int8": "int8"}.get(v, "fp32") for v in VARIANTS}
# The distillation students: the article's CompressedNet, and the two lower rungs of the accuracy ladder, which
# trade information for compute (docs/builders.md): the centre quarter of the image, and a 4×4 average of it.
STUDENTS: dict[str, dict[str, int]] = {
    "distilled": {},
    "small": {"crop": 16},
    "tiny": {"c1": 16, "c2": 32, "f1": 64, "down": 8, "pool": 1},
}
# Bump when training code changes in a way that must invalidate cached checkpoints.
TRAINING_CODE_VERSION = 1
# Stated export tolerances: ONNX Runtime vs PyTorch on the held-out images.
EXPORT_TOLERANCE = {"fp32": ("max_abs_err", 1e-3), "fp16": ("max_rel_err", 2e-2)}
ACCURACY_TARGET_POINTS = 1.0  # pruned and int8 must stay within this many top-1 points of fp32


@dataclass
class BuildOptions:
    repository: Path = Path("model_repository")
    variants: tuple[str, ...] = VARIANTS
    target: str = "cpu"
    compiler: str | None = None  # gpu target only: "tensorrt" (its default) or "torch-tensorrt"
    trt_profile: str | None = None  # gpu target: optimization profiles of dynamic dims, NAME=MIN/OPT/MAX;…
    dataset: str = "auto"
    data_dir: Path = Path("data")
    download: bool = False
    subset: int | None = None  # training images: None, the data set's default (DEFAULT_TRAIN_IMAGES); 0, all
    epochs: int = 12
    finetune_epochs: int = 8
    distill_epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    prune_ratio: float = 0.5
    distill_temperature: float = 4.0
    distill_alpha: float = 0.7
    calibration_size: int = 256
    calibration_method: str = "minmax"
    max_batch_size: int = 64
    public_model: str = "cnn"
    public_variant: str = "fp32"
    model_prefix: str = "cnn_"
    checkpoint: Path | None = None
    cache_dir: Path = Path(".cache/tritune")
    seed: int = 0
    threads: int = 0
    latency_runs: int = 5
    # Bring your own model (docs/models.md): an ONNX file and the data it is measured on.
    onnx: Path | None = None
    torch: str | None = None  # package.module:factory
    weights: Path | None = None  # the module's state_dict
    student: str | None = None  # package.module:factory of a distillation student (--torch only)
    input_shape: str | None = None  # the module's input shapes, "3,224,224" or "name:3,224,224;other:16"
    fit_epochs: int = 0  # --torch: train the fp32 module this many epochs on --train-data first (0: as given)
    eval_data: Path | None = None
    train_data: Path | None = None  # int8 calibration samples (and training, where a step trains)
    eval_size: int = 0  # evaluate the first N samples of --eval-data (0: all; without data, N random samples)
    output: str | None = None  # the output judged for accuracy (default: the first that reads as class scores)

    def validate(self) -> None:
        if self.fit_epochs < 0:
            raise BuildError(f"--fit-epochs must be 0 (use the weights as given) or positive, got {self.fit_epochs}")
        if self.eval_size < 0:
            raise BuildError(f"--eval-size must be 0 (all) or positive, got {self.eval_size}")
        if self.onnx is not None and self.torch is not None:
            raise BuildError("give one model: --onnx FILE or --torch package.module:factory, not both")
        if (self.weights or self.student or self.input_shape) and self.torch is None:
            raise BuildError("--weights, --student and --input-shape apply to --torch package.module:factory")
        if self.onnx is not None or self.torch is not None:
            return  # the importers check their variants against what their source can give
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise BuildError(
                f"unknown variant(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(VARIANTS)}"
            )
        if self.public_variant and self.public_variant not in self.variants:
            raise BuildError(
                f"public variant {self.public_variant!r} is not among the variants built; add it to --variants"
            )
        if self.calibration_size < 1 and "int8" in self.variants:
            raise BuildError(f"calibration size must be at least 1, got {self.calibration_size}; 256 is a good default")
        for name in ("epochs", "finetune_epochs", "distill_epochs", "batch_size", "latency_runs"):
            if getattr(self, name) < 1:
                raise BuildError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.prune_ratio < 1:
            raise BuildError(f"prune ratio must be in (0, 1), got {self.prune_ratio}")
        if self.subset is not None and self.subset < 0:
            raise BuildError(f"subset must be 0 (all) or positive, got {self.subset}")


# A small, fast build (about a minute on 2 cores) for CI and first looks; numbers from it are not the product's.
QUICK_BUILD = BuildOptions(
    dataset="digits",
    subset=240,
    epochs=2,
    finetune_epochs=1,
    distill_epochs=1,
    calibration_size=32,
    latency_runs=1,
)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


class CheckpointCache:
    """Content-addressed checkpoints: the same inputs never train twice."""

    def __init__(self, root: Path):
        self.root = Path(root) / "checkpoints"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def get(self, key: str):
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return load_checkpoint(path)[0]
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} (cached; delete {path} and the build retrains it)") from exc

    def put(self, key: str, model: torch.nn.Module, meta: dict) -> None:
        try:
            save_checkpoint(model, self.path(key), meta)
        except OSError as exc:
            raise BuildError(f"cannot write checkpoint cache {self.root} ({exc.strerror}); pass --cache-dir") from exc


def versions() -> dict[str, str | None]:
    import torch_pruning

    try:
        import tensorrt  # only present in the GPU builder image

        trt = tensorrt.__version__
    except ImportError:
        trt = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch_pruning": torch_pruning.__version__,
        "tensorrt": trt,
    }


def host_info() -> dict[str, Any]:
    return {"machine": platform.machine(), "cpus": os.cpu_count()}


def options_view(opts: BuildOptions) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}


@dataclass
class _Seed:
    """What the seed pipeline's stages share: the options, the data, the checkpoint cache and the log."""

    opts: BuildOptions
    data: Any  # builders.data.Dataset
    cache: CheckpointCache
    log: Callable[[str], None]
    base_key: dict[str, Any]

    @property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.data.channel_stats()


def build(opts: BuildOptions, log: Callable[[str], None] = print) -> Manifest:
    """Build the requested variants into ``opts.repository``; returns the manifest.

    The seed CNN's pipeline runs its stages in turn — data, fp32 (train or --checkpoint), pruned, distilled
    students, export, fp16/int8, record — and a model the user brings enters at the import seam instead
    (``builders/onnx_import.py``, ``builders/torch_import.py``), so a stage it does not need never runs.
    """
    opts.validate()
    if opts.onnx is not None:
        from builders.onnx_import import build_from_onnx

        return build_from_onnx(opts, log)
    if opts.torch is not None:
        from builders.torch_import import build_from_torch

        return build_from_torch(opts, log)
    target = get_target(opts.target, opts.compiler, opts.cache_dir, opts.trt_profile)
    started = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    seed = _Seed(opts, _seed_data(opts, log), CheckpointCache(opts.cache_dir), log, {})
    seed.base_key = {
        "code": TRAINING_CODE_VERSION,
        "data": seed.data.fingerprint,
        "torch": torch.__version__.split("+")[0],
    }

    fp32, fp32_key = _fp32(seed)
    torch_models: dict[str, torch.nn.Module] = {"fp32": fp32}
    if "pruned" in opts.variants:
        torch_models["pruned"] = _pruned(seed, fp32, fp32_key)
    torch_models |= _students(seed, fp32, fp32_key)

    with (
        tempfile.TemporaryDirectory(prefix="tritune-artifacts-") as art_dir,
        StagedRepository(opts.repository) as staging,
    ):
        onnx_paths, export_checks = _export(seed, torch_models, Path(art_dir), target.int8_quantize_bias)
        manifest_variants = _record(seed, target, staging, torch_models, onnx_paths, export_checks)
        served = SEED_SIGNATURE
        numbers = version_numbers(manifest_variants)
        if opts.public_variant:
            public = {
                numbers[v]: VariantArtifact(v, PRECISION[v], onnx_paths[v], module=torch_models.get(v, fp32))
                for v in manifest_variants
            }
            compiled = target.compile_public(
                public, numbers[opts.public_variant], opts.public_model, staging, opts.max_batch_size
            )
            # What Triton will show: a compiler may name the tensors its own way (Torch-TensorRT's output0).
            served = Signature.from_config(compiled.config)
        build_seconds = round(time.perf_counter() - started, 1)
        manifest = _merge_manifest(opts, seed.data.describe(), manifest_variants, build_seconds, served, numbers)
        manifest.write(staging / MANIFEST)
    log(
        f"wrote {len(manifest_variants)} variant(s) + public model {opts.public_model!r} to {opts.repository} "
        f"in {manifest.build_seconds} s"
    )
    return manifest


def _seed_data(opts: BuildOptions, log: Callable[[str], None]):
    data = load_dataset(opts.dataset, opts.data_dir, opts.download, opts.seed)
    subset = opts.subset if opts.subset is not None else DEFAULT_TRAIN_IMAGES.get(data.name, 0)
    if opts.subset is None and subset:
        data.notes.append(f"the default training subset for {data.name} on a CPU (--subset 0 trains on all)")
    data = data.subset(subset, opts.seed)
    log(f"dataset: {data.name} — {data.source}; {len(data.x_train)} training, {len(data.x_test)} held-out images")
    return data


def _fp32(seed: _Seed) -> tuple[torch.nn.Module, str]:
    """The teacher: ``--checkpoint``, a cached checkpoint of the same inputs, or a SeedCNN trained now."""
    opts, data, cache, log = seed.opts, seed.data, seed.cache, seed.log
    mean, std = seed.stats
    fp32_cfg = TrainConfig(opts.epochs, opts.batch_size, opts.lr, seed=opts.seed)
    if opts.checkpoint is not None:
        fp32, _ = load_checkpoint(opts.checkpoint)
        log(f"fp32: loaded {opts.checkpoint}")
        return fp32, hashlib.sha256(Path(opts.checkpoint).read_bytes()).hexdigest()[:20]
    key = _hash({**seed.base_key, "stage": "fp32", "arch": "SeedCNN", "mean": mean, "std": std, **fp32_cfg.key()})
    fp32 = cache.get(key)
    if fp32 is not None:
        log(f"fp32: reusing checkpoint {cache.path(key)} (same data, architecture and settings)")
        return fp32, key
    log(f"fp32: training SeedCNN for {opts.epochs} epochs")
    fp32 = train(SeedCNN(mean=mean, std=std), data.x_train, data.y_train, fp32_cfg, log, "fp32")
    cache.put(key, fp32, {"stage": "fp32"})
    return fp32, key


def _pruned(seed: _Seed, fp32: torch.nn.Module, fp32_key: str) -> torch.nn.Module:
    opts, data, cache, log = seed.opts, seed.data, seed.cache, seed.log
    ft_cfg = TrainConfig(opts.finetune_epochs, opts.batch_size, opts.lr / 2, seed=opts.seed)
    key = _hash({"parent": fp32_key, "stage": "pruned", "ratio": opts.prune_ratio, **ft_cfg.key()})
    pruned = cache.get(key)
    if pruned is not None:
        log(f"pruned: reusing checkpoint {cache.path(key)}")
        return pruned
    log(
        f"pruned: removing {opts.prune_ratio:.0%} of filters/units by L1 norm, "
        f"fine-tuning {opts.finetune_epochs} epochs"
    )
    pruned = structured_prune(copy.deepcopy(fp32), opts.prune_ratio)
    pruned = train(pruned, data.x_train, data.y_train, ft_cfg, log, "finetune")
    cache.put(key, pruned, {"stage": "pruned"})
    return pruned


def _students(seed: _Seed, fp32: torch.nn.Module, fp32_key: str) -> dict[str, torch.nn.Module]:
    """The distilled students the options ask for (STUDENTS), each from the fp32 teacher."""
    opts, data, cache, log = seed.opts, seed.data, seed.cache, seed.log
    mean, std = seed.stats
    kd_cfg = TrainConfig(opts.distill_epochs, opts.batch_size, opts.lr, seed=opts.seed)
    students: dict[str, torch.nn.Module] = {}
    for name in (v for v in STUDENTS if v in opts.variants):
        spec = STUDENTS[name]
        key = _hash(
            {
                "parent": fp32_key,
                "stage": "distilled",
                "arch": "CompressedNet",
                "spec": spec,
                "T": opts.distill_temperature,
                "alpha": opts.distill_alpha,
                **kd_cfg.key(),
            }
        )
        student = cache.get(key)
        if student is not None:
            log(f"{name}: reusing checkpoint {cache.path(key)}")
        else:
            what = ", ".join(f"{k}={v}" for k, v in spec.items()) or "the article's widths"
            log(f"{name}: training CompressedNet ({what}) from the fp32 teacher for {opts.distill_epochs} epochs")
            student = distill(
                CompressedNet(mean=mean, std=std, **spec),
                fp32,
                data.x_train,
                data.y_train,
                kd_cfg,
                opts.distill_temperature,
                opts.distill_alpha,
                log,
            )
            cache.put(key, student, {"stage": name})
        students[name] = student
    return students


def _export(
    seed: _Seed, torch_models: dict[str, torch.nn.Module], art: Path, quantize_bias: bool = True
) -> tuple[dict[str, Path], dict[str, dict]]:
    """Every PyTorch variant to ONNX (checked against PyTorch), then fp16 and int8 from the fp32 graph (int8 in the
    Q/DQ form the target parses: ``quantize_bias``)."""
    opts, data, log = seed.opts, seed.data, seed.log
    fp32 = torch_models["fp32"]
    onnx_paths: dict[str, Path] = {}
    export_checks: dict[str, dict] = {}
    for name, model in torch_models.items():
        path = ox.export_onnx(model, art / f"{name}.onnx")
        check = ox.compare(predict_logits(model, data.x_test), ox.run_onnx(ox.session(path), data.x_test))
        _enforce_tolerance(name, "fp32", check)
        onnx_paths[name], export_checks[name] = path, check
        log(f"{name}: exported ONNX, max |onnx - torch| = {check['max_abs_err']:.2e}")
    if "fp16" in opts.variants:
        onnx_paths["fp16"] = ox.to_fp16(onnx_paths["fp32"], art / "fp16.onnx")
        check = ox.compare(predict_logits(fp32, data.x_test), ox.run_onnx(ox.session(onnx_paths["fp16"]), data.x_test))
        _enforce_tolerance("fp16", "fp16", check)
        export_checks["fp16"] = check
        log(f"fp16: converted (FP32 inputs/outputs), max rel error vs torch fp32 = {check['max_rel_err']:.2e}")
    if "int8" in opts.variants:
        rng = np.random.default_rng(opts.seed)
        n = min(opts.calibration_size, len(data.x_train))
        calib = data.x_train[rng.permutation(len(data.x_train))[:n]]
        onnx_paths["int8"] = ox.to_int8(
            onnx_paths["fp32"], art / "int8.onnx", calib, opts.calibration_method, quantize_bias=quantize_bias
        )
        export_checks["int8"] = ox.compare(
            predict_logits(fp32, data.x_test), ox.run_onnx(ox.session(onnx_paths["int8"]), data.x_test)
        )
        log(f"int8: quantized with {n} calibration images ({opts.calibration_method}), symmetric per-channel Q/DQ")
    return onnx_paths, export_checks


def _record(seed: _Seed, target, staging: Path, torch_models, onnx_paths, export_checks) -> dict[str, VariantRecord]:
    """Each variant measured on the held-out images, compiled for the target, and its manifest record."""
    opts, data, log = seed.opts, seed.data, seed.log
    fp32 = torch_models["fp32"]
    derived_from = {"fp32": None, "pruned": "fp32", "fp16": "fp32", "int8": "fp32"} | dict.fromkeys(
        STUDENTS, "fp32 (teacher)"
    )
    fp32_logits = ox.run_onnx(ox.session(onnx_paths["fp32"]), data.x_test)
    fp32_top1 = top1(fp32_logits, data.y_test)
    built_with = versions()
    records: dict[str, VariantRecord] = {}
    for name in [v for v in VARIANTS if v in opts.variants]:
        path = onnx_paths[name]
        sess = ox.session(path)
        logits = ox.run_onnx(sess, data.x_test)
        model = torch_models.get(name, fp32)
        acc = top1(logits, data.y_test)
        hits = logits.argmax(axis=1) == data.y_test  # per image: the paired comparison's input
        artifact = VariantArtifact(name, PRECISION[name], path, module=model)
        compiled = target.compile(artifact, opts.model_prefix + name, staging, opts.max_batch_size)
        entry = dict(
            model_name=compiled.model_name,
            variant=name,
            precision=PRECISION[name],
            architecture=type(model).__name__,
            arch_kwargs={k: v for k, v in model.arch_kwargs().items() if k not in ("mean", "std")},
            derived_from=derived_from[name],
            parameters=count_parameters(model),
            flops=count_flops(model),
            file_bytes=path.stat().st_size,
            sha256=compiled.artifact_sha256,
            top1=acc,
            top1_delta_vs_fp32_points=round((acc - fp32_top1) * 100, 3),
            correct=pack(hits),
            top1_ci95=[round(x, 4) for x in wilson(int(hits.sum()), len(hits))],
            error_vs_fp32=ox.compare(fp32_logits, logits),
            export_check_vs_torch=export_checks[name],
            latency_ms={f"batch_{b}": ox.latency_ms(sess, b, opts.latency_runs) for b in (1, 32)},
            target=target.name,
            backend=target.backend_description,
            built_with=built_with,
            dataset_fingerprint=data.fingerprint,
        )
        if name in ("pruned", "int8"):
            entry["accuracy_target_met"] = entry["top1_delta_vs_fp32_points"] >= -ACCURACY_TARGET_POINTS
            if not entry["accuracy_target_met"]:
                log(
                    f"warning: {name} top-1 is {-entry['top1_delta_vs_fp32_points']:.2f} points below fp32 "
                    f"(target {ACCURACY_TARGET_POINTS}); train longer or lower --prune-ratio"
                )
        records[name] = VariantRecord(**entry)
        log(
            f"{name}: top-1 {acc:.4f}, {entry['parameters']:,} params, {entry['flops'] / 1e6:.1f} MFLOPs, "
            f"{entry['file_bytes'] / 1e6:.2f} MB, {entry['latency_ms']['batch_32']:.2f} ms @32 "
            f"→ {compiled.model_name}"
        )
    return records


def _enforce_tolerance(name: str, kind: str, check: dict) -> None:
    metric, limit = EXPORT_TOLERANCE[kind]
    if check[metric] > limit:
        raise ExportError(
            f"{name}: ONNX output differs from PyTorch ({metric} {check[metric]:.3g} > {limit}); "
            "the exporter mistranslated an op — try another --opset or report it"
        )


def _merge_manifest(
    opts: BuildOptions,
    dataset: dict,
    variants: dict[str, VariantRecord],
    build_seconds: float,
    signature: Signature = SEED_SIGNATURE,
    numbers: dict[str, int] | None = None,
) -> Manifest:
    """Keep earlier entries for variants this build did not touch, if they came from the same data. ``numbers``:
    the public model's version of each variant (:func:`tritune.manifest.version_numbers` of this build's)."""
    merged = dict(variants)
    try:
        old = Manifest.read(opts.repository).variants
    except RepositoryError:
        old = {}  # none yet, or of another schema: this build's variants only
    for name, entry in old.items():
        if (
            name not in merged
            and entry.dataset_fingerprint == dataset["fingerprint"]
            and (opts.repository / entry.model_name).is_dir()
        ):
            merged[name] = entry
    return Manifest(
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        host=host_info(),
        dataset=dataset,
        public_model=opts.public_model,
        public_variant=opts.public_variant,
        public_versions=numbers if numbers is not None else version_numbers(variants),
        input={
            "name": signature.inputs[0].name,
            "datatype": INPUT_DATATYPE,
            "shape": [-1, *INPUT_SHAPE],
            "range": [0.0, 1.0],
        },
        output={
            "name": signature.outputs[0].name,
            "datatype": INPUT_DATATYPE,
            "shape": [-1, NUM_CLASSES],
            "meaning": "class logits",
        },
        accuracy_target_points=ACCURACY_TARGET_POINTS,
        options=options_view(opts),
        variants={k: merged[k] for k in VARIANTS if k in merged},
        build_seconds=build_seconds,
        signature=signature.to_dict(),
    )
