"""Bring your own ONNX file: ``tritune build --onnx model.onnx`` → fp32 / fp16 / int8 variants, each measured on the
user's data, in a Triton model repository with a manifest.

The model's interface comes from its graph (:class:`~tritune.signature.Signature`); the data is checked against it
before any work starts; what counts as a right answer is an :class:`~tritune.accuracy.Evaluator` (top-1 against
labels, or agreement with fp32 without them). Every step says what it does, and a failure leaves the repository as
it was (the models are staged and moved into place only when all of them are built).
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from builders import onnx_utils as ox
from builders.repository import MANIFEST, StagedRepository
from builders.targets import VariantArtifact, get_target
from tritune.accuracy import Evaluator, choose
from tritune.compare import pack, wilson
from tritune.errors import BuildError, ConfigError, ModelInputError
from tritune.manifest import Manifest, VariantRecord, version_numbers
from tritune.samples import Samples, load_samples, synthesize
from tritune.signature import Signature

ONNX_VARIANTS = ("fp32", "fp16", "int8")
SYNTHESIZED_SAMPLES = 256  # evaluated (and calibrated on) when the user gives no data
PROGRESS_AFTER_S = 5.0  # an evaluation reports its progress once it has run this long


@dataclass
class Imported:
    """A user's model, ready for the variants every graph can have: its fp32 ONNX graph, its signature, and the
    variants only its source could make (a PyTorch module's pruned or distilled copies, already exported)."""

    name: str  # the model names' stem
    source: str  # where it came from, in words: "onnx:<file>" or "torch:<module:factory>"
    proto: onnx.ModelProto
    signature: Signature
    extra: dict[str, Path] = field(default_factory=dict)  # variant → its exported ONNX
    derived_from: dict[str, str] = field(default_factory=dict)  # variant → how it was made
    architecture: str = ""
    notes: list[str] = field(default_factory=list)


def model_names(opts, stem: str) -> tuple[str, str]:
    """The public model name and the per-variant prefix: from the model's name unless the user chose them."""
    from builders.build import BuildOptions

    defaults = BuildOptions()
    stem = re.sub(r"[^A-Za-z0-9_]", "_", stem) or "model"
    public = stem if opts.public_model == defaults.public_model else opts.public_model
    prefix = f"{stem}_" if opts.model_prefix == defaults.model_prefix else opts.model_prefix
    return public, prefix


def requested_variants(opts, possible: tuple[str, ...], source: str) -> tuple[str, ...]:
    """The variants to build: all that ``source`` can give when the user left the seed's default list, else the
    ones named, each checked to be possible."""
    from builders.build import VARIANTS

    if set(opts.variants) == set(VARIANTS):
        return possible
    other = [v for v in opts.variants if v not in possible]
    if other:
        raise ConfigError(
            f"variant(s) {', '.join(other)} cannot be built from {source}; it gives {', '.join(possible)}: "
            "pass --variants with those"
        )
    if "fp32" not in opts.variants:
        raise ConfigError("fp32 is the reference the others are measured against: include it in --variants")
    return tuple(v for v in possible if v in opts.variants)


def check_target(opts, flag: str) -> None:
    if not 1 <= opts.max_batch_size <= ox.MAX_EXPORT_BATCH:
        raise ConfigError(f"--max-batch-size must be in 1..{ox.MAX_EXPORT_BATCH}, got {opts.max_batch_size}")
    if opts.target == "gpu" and opts.compiler == "torch-tensorrt":
        raise ConfigError(
            f"{flag} builds TensorRT plans with the ONNX parser: leave out --compiler torch-tensorrt (it compiles "
            "the seed CNN's PyTorch modules)"
        )
    get_target(opts.target, opts.compiler, opts.cache_dir, opts.trt_profile)  # a missing toolchain fails first


def evaluation_data(opts, signature: Signature, log) -> Samples:
    """The samples every variant is measured on, read and checked against the model before any work starts."""
    if opts.eval_data:
        data = load_samples(opts.eval_data, signature, "--eval-data").head(opts.eval_size)
    else:
        data = synthesize(signature, opts.eval_size or SYNTHESIZED_SAMPLES, opts.seed)
    log(f"evaluation data: {data.source}; {len(data)} samples, {'labels' if data.labels is not None else 'no labels'}")
    return data


def load_model(path: Path) -> tuple[onnx.ModelProto, Signature]:
    """The user's model, loaded by ONNX Runtime as Triton's would load it, and its signature; one line if not."""
    if not path.is_file():
        raise BuildError(f"--onnx {path} does not exist; pass the path of an .onnx file")
    try:
        proto = onnx.load(str(path), load_external_data=True)
        ox.session(proto.SerializeToString(), threads=1)
    except Exception as exc:  # onnx and ONNX Runtime raise their own exception types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BuildError(
            f"ONNX Runtime cannot load {path} ({first[:300]}); export it again or check it with onnx.checker"
        ) from exc
    try:
        signature = Signature.from_onnx(proto)
        signature.tensor_specs()
        return proto, signature
    except ModelInputError as exc:
        raise BuildError(f"{path}: {exc}") from exc


def build_from_onnx(opts, log: Callable[[str], None] = print) -> Manifest:
    src = Path(opts.onnx)
    variants = requested_variants(opts, ONNX_VARIANTS, "an ONNX file")
    check_target(opts, "--onnx")
    proto, signature = load_model(src)
    log(f"model: {src} — {signature.describe()}")
    data = evaluation_data(opts, signature, log)
    imported = Imported(src.stem, f"onnx:{src}", proto, signature, architecture=f"onnx:{proto.graph.name or src.stem}")
    return build_imported(opts, imported, data, variants, log)


def build_imported(
    opts, imported: Imported, data: Samples, variants: tuple[str, ...], log: Callable[[str], None] = print
) -> Manifest:
    """fp16 and int8 from the fp32 graph, the imported extra variants as they are; each measured on ``data`` by
    the same evaluator, compiled for the target, and written with the public model and the manifest."""
    from builders.build import PRECISION, versions

    started = time.perf_counter()
    signature, proto = imported.signature, imported.proto
    signature.tensor_specs()  # a tensor Triton's config cannot declare is refused before any work
    public_model, prefix = model_names(opts, imported.name)
    public_variant = opts.public_variant if opts.public_variant in variants else "fp32"
    target = get_target(opts.target, opts.compiler, opts.cache_dir, opts.trt_profile)
    if opts.target == "gpu":  # the optimization profiles must fit the model before anything is converted
        from builders.targets.tensorrt import BatchProfile, parse_profiles, shape_profiles

        shape_profiles(signature, BatchProfile.for_max(opts.max_batch_size), parse_profiles(opts.trt_profile))
    calibration = _calibration_set(opts, signature, data, variants, log)

    with (
        tempfile.TemporaryDirectory(prefix="tritune-import-") as tmp,
        StagedRepository(opts.repository) as staging,
    ):
        art = Path(tmp)
        paths = {"fp32": art / "fp32.onnx"} | {v: p for v, p in imported.extra.items() if v in variants}
        onnx.save_model(proto, str(paths["fp32"]), save_as_external_data=False)
        for name, path in paths.items():
            # The public model serves every variant as a version of one config: one interface for all.
            if name != "fp32" and (theirs := Signature.from_onnx(path)) != signature:
                raise BuildError(
                    f"{name} has interface {theirs.describe()}, fp32 has {signature.describe()}; a variant must take "
                    "and give the same tensors"
                )
        if "fp16" in variants:
            log("fp16: converting weights and compute to half precision (inputs and outputs keep their types)")
            paths["fp16"] = _step("fp16", lambda: ox.to_fp16(paths["fp32"], art / "fp16.onnx"))
        if "int8" in variants:
            n = len(calibration)
            log(f"int8: calibrating on {n} samples ({opts.calibration_method}), symmetric per-channel Q/DQ …")
            t = time.perf_counter()
            paths["int8"] = ox.to_int8(
                paths["fp32"],
                art / "int8.onnx",
                calibration.inputs,
                opts.calibration_method,
                quantize_bias=target.int8_quantize_bias,
            )
            log(f"int8: calibrated and quantized in {time.perf_counter() - t:.1f} s")

        outputs = {v: _evaluate(v, paths[v], data, signature, log) for v in variants}
        evaluator = choose(signature, data.labels, outputs["fp32"], opts.output)
        log(f"accuracy: {evaluator.metric.words}" + (f" on output {evaluator.output!r}" if evaluator.output else ""))
        judged = evaluator.output or next((t.name for t in signature.outputs if t.is_float), signature.outputs[0].name)
        feeds = _latency_feeds(data, signature)
        built_with = versions()
        records: dict[str, VariantRecord] = {}
        fp32_acc = None
        for name in variants:
            hits = evaluator.correct(outputs[name])
            acc = float(hits.mean())
            fp32_acc = acc if name == "fp32" else fp32_acc
            sess = ox.session(paths[name])
            latency = {f"batch_{b}": _latency(sess, feeds, b, signature, opts.latency_runs) for b in (1, 32)}
            compiled = target.compile(
                VariantArtifact(name, PRECISION[name], paths[name]), prefix + name, staging, opts.max_batch_size
            )
            records[name] = VariantRecord(
                model_name=compiled.model_name,
                variant=name,
                precision=PRECISION[name],
                architecture=imported.architecture,
                arch_kwargs={},
                derived_from=None if name == "fp32" else imported.derived_from.get(name, "fp32"),
                parameters=_parameters(onnx.load(str(paths[name]))),
                flops=None,
                file_bytes=paths[name].stat().st_size,
                sha256=compiled.artifact_sha256,
                top1=acc,
                top1_delta_vs_fp32_points=round((acc - fp32_acc) * 100, 3),
                error_vs_fp32=_compare(outputs["fp32"][judged], outputs[name][judged]),
                export_check_vs_torch={},
                latency_ms=latency,
                target=target.name,
                backend=target.backend_description,
                built_with=built_with,
                dataset_fingerprint=data.fingerprint,
                correct=pack(hits),
                top1_ci95=[round(x, 4) for x in wilson(int(hits.sum()), len(hits))],
            )
            lo, hi = records[name].top1_ci95
            log(
                f"{name}: {evaluator.metric} {acc:.4f} [{lo:.3f}, {hi:.3f}], {records[name].file_bytes / 1e6:.2f} MB, "
                f"{latency['batch_1']:.2f} ms @1, {latency['batch_32']:.2f} ms @32 → {compiled.model_name}"
            )
        numbers = version_numbers(records)
        target.compile_public(
            {numbers[v]: VariantArtifact(v, PRECISION[v], paths[v]) for v in variants},
            numbers[public_variant],
            public_model,
            staging,
            opts.max_batch_size,
        )
        manifest = _manifest(opts, imported, data, evaluator, records, public_model, public_variant, started)
        manifest.write(staging / MANIFEST)
    log(
        f"wrote {len(records)} variant(s) + public model {public_model!r} to {opts.repository} "
        f"in {manifest.build_seconds} s"
    )
    return manifest


def _step(name: str, fn):
    try:
        return fn()
    except BuildError:
        raise
    except Exception as exc:  # a converter's own exception types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BuildError(f"{name} conversion failed ({first[:300]}); leave {name} out of --variants") from exc


def _calibration_set(opts, signature: Signature, data: Samples, variants, log) -> Samples:
    if "int8" not in variants:
        return data
    if opts.calibration_size < 1:
        raise ConfigError(f"--calibration-size must be at least 1, got {opts.calibration_size}")
    if opts.train_data:
        pool = load_samples(opts.train_data, signature, "--train-data")
        where = f"--train-data {opts.train_data}"
    else:
        pool = data
        where = "the evaluation samples (pass --train-data for a separate calibration set)"
        data.notes.append("int8 was calibrated on evaluation samples: its accuracy may read a little high")
    rng = np.random.default_rng(opts.seed)
    idx = np.sort(rng.permutation(len(pool))[: min(opts.calibration_size, len(pool))])
    log(f"int8 calibration samples: {len(idx)} from {where}")
    return pool.take(idx)


def _evaluate(name: str, path: Path, data: Samples, signature: Signature, log) -> dict[str, np.ndarray]:
    sess = ox.session(path)
    started, marks = time.perf_counter(), set()

    def progress(done: int, total: int) -> None:
        quarter = done * 4 // total
        # Only a long evaluation reports as it goes (a quick one would print four lines a second).
        if quarter not in marks and quarter in (1, 2, 3) and time.perf_counter() - started > PROGRESS_AFTER_S:
            marks.add(quarter)
            log(f"{name}: evaluated {done}/{total} samples ({time.perf_counter() - started:.0f} s)")

    out = ox.run_all(sess, data.inputs, signature.batched, batch_size=32, progress=progress)
    log(f"{name}: evaluated {len(data)} samples in {time.perf_counter() - started:.1f} s")
    return out


def _latency_feeds(data: Samples, signature: Signature) -> dict[str, np.ndarray]:
    """32 samples of the user's data (cycled if fewer), so dynamic dims take the data's real sizes."""
    idx = np.arange(32) % len(data)
    return {k: v[idx] for k, v in data.inputs.items()}


def _latency(sess, feeds, batch: int, signature: Signature, runs: int) -> float:
    """In-process latency of one call at ``batch``; a model without a batch dimension runs ``batch`` calls."""
    if signature.batched:
        return ox.latency_ms(sess, batch, runs, feeds={k: v[:batch] for k, v in feeds.items()})
    return ox.latency_ms(sess, 1, runs, feeds={k: v[0] for k, v in feeds.items()}) * batch


def _compare(reference: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    act = actual.reshape(len(actual), -1).astype(np.float64)
    return ox.compare(ref, act)


def _parameters(proto: onnx.ModelProto) -> int:
    return int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer))


def _manifest(opts, imported: Imported, data, evaluator: Evaluator, records, public_model, public_variant, started):
    from datetime import UTC, datetime

    from builders.build import ACCURACY_TARGET_POINTS, host_info, options_view

    signature = imported.signature
    dataset = {"name": imported.name, **data.describe(), "held_out_images": len(data)}
    dataset["notes"] = [*dataset["notes"], *imported.notes]
    return Manifest(
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        host=host_info(),
        dataset=dataset,
        public_model=public_model,
        public_variant=public_variant,
        public_versions=version_numbers(records),
        input=signature.to_dict()["inputs"][0],
        output=signature.to_dict()["outputs"][0],
        accuracy_target_points=ACCURACY_TARGET_POINTS,
        options=options_view(replace(opts, public_model=public_model)),
        variants=records,
        build_seconds=round(time.perf_counter() - started, 1),
        signature=signature.to_dict(),
        accuracy=evaluator.describe() | {"labels": data.labels is not None},
        source=imported.source,
    )


__all__ = ["ONNX_VARIANTS", "build_from_onnx", "load_model"]
