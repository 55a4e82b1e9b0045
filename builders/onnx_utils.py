"""ONNX export, conversion (FP16, INT8 with Q/DQ) and ONNX Runtime sessions."""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from tritune.errors import BuildError, ExportError, ModelInputError
from tritune.signature import Signature

# Largest batch the exported graph is declared for; the served max_batch_size must not exceed it.
MAX_EXPORT_BATCH = 1024


@contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress and deprecation chatter; keep the build log readable."""
    # The root logger too: ONNX Runtime's quantizer warns through it (per-channel axes of 1-D weights it skips).
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    loggers.append(logging.getLogger())
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    model: nn.Module,
    path: Path,
    example: tuple[torch.Tensor, ...] | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_shapes: tuple | None = None,
    opset: int = 18,
) -> Path:
    """Export to one self-contained file (no external ``.onnx.data``) with the dynamo exporter.

    ``example`` is one tensor per input; by default the seed CNN's (one image batch, its names). Without
    ``dynamic_shapes``, the first dimension of every input is a dynamic batch of 1..MAX_EXPORT_BATCH.
    """
    model = model.eval()
    if example is None:
        from builders.models import seed_export_args

        example, input_names, output_names = seed_export_args()
    if dynamic_shapes is None:
        batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
        dynamic_shapes = tuple({0: batch} for _ in example)
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        tmp_path = Path(tmp) / "model.onnx"
        try:
            program = torch.onnx.export(
                model,
                example,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            program.save(str(tmp_path), external_data=False)
        except Exception as exc:
            raise ExportError(f"ONNX export of {type(model).__name__} failed: {str(exc).splitlines()[0]}") from exc
        # Re-save through onnx to fold any external data into the single file.
        proto = onnx.load(str(tmp_path), load_external_data=True)
    save_single_file(proto, path)
    return path


def save_single_file(proto: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    check_onnx(path)


def check_onnx(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(
            f"{path} fails the ONNX checker: {str(exc).splitlines()[0]}; fix the model or report the exporter bug"
        ) from exc
    leftovers = [p.name for p in path.parent.glob(path.name + ".data")]
    if leftovers:
        raise ExportError(f"{path} left external data files {leftovers}; re-save it as one file")


def session(path: Path | str | bytes, threads: int | None = None) -> ort.InferenceSession:
    """Session tuned as in serving: ``intra_op`` threads, one inter-op thread, sequential execution."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    src = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run_onnx(sess: ort.InferenceSession, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The first output for the one input ``x`` (samples on axis 0), in batches."""
    inp, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    return np.concatenate([sess.run([out], {inp: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)])


_ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
}


def session_signature(sess: ort.InferenceSession) -> Signature:
    """The signature ONNX Runtime reports for a loaded model (same rules as :meth:`Signature.from_onnx`)."""

    def read(items) -> list[tuple[str, str, list[int]]]:
        out = []
        for v in items:
            if v.type not in _ORT_TYPES:
                raise ModelInputError(f"{v.name!r} has type {v.type}, which tritune cannot serve")
            out.append((v.name, _ORT_TYPES[v.type], [d if isinstance(d, int) and d > 0 else -1 for d in v.shape]))
        return out

    return Signature.from_full_shapes(read(sess.get_inputs()), read(sess.get_outputs()))


def run_all(
    sess: ort.InferenceSession,
    inputs: dict[str, np.ndarray],
    batched: bool,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Every output for samples ``inputs`` (one array per input, samples on axis 0), stacked on axis 0.

    A batched model runs ``batch_size`` samples a call; one without a batch dimension runs each sample alone.
    ``progress(done, total)`` is called after each call.
    """
    names = [o.name for o in sess.get_outputs()]
    total = len(next(iter(inputs.values())))
    step = batch_size if batched else 1
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, total, step):
        if batched:
            feed = {k: v[start : start + step] for k, v in inputs.items()}
        else:
            feed = {k: v[start] for k, v in inputs.items()}
        try:
            results = sess.run(names, feed)
        except Exception as exc:  # ONNX Runtime raises its own exception types, one per failure kind
            raise BuildError(
                f"ONNX Runtime failed on samples {start}..{start + step - 1}: {str(exc).splitlines()[0]}; "
                "check that the data fits the model"
            ) from exc
        for part, r in zip(parts, results, strict=True):
            part.append(r if batched else r[None])
        if progress is not None:
            progress(min(start + step, total), total)
    return {n: np.concatenate(p) for n, p in zip(names, parts, strict=True)}


def compare(reference: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Max absolute and max relative error (relative to the largest reference magnitude per row)."""
    diff = np.abs(reference.astype(np.float64) - actual.astype(np.float64))
    scale = np.maximum(np.abs(reference).max(axis=1, keepdims=True), 1e-6)
    return {
        "max_abs_err": float(diff.max()),
        "max_rel_err": float((diff / scale).max()),
        "top1_agreement": float((reference.argmax(1) == actual.argmax(1)).mean()),
    }


def to_fp16(src: Path, dst: Path) -> Path:
    """Half-precision weights and compute, FP32 inputs/outputs (Cast at the edges) so clients never change."""
    from onnxconverter_common import float16

    with _quiet():  # it warns for every weight below FP16's smallest subnormal that it clamps
        proto = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    save_single_file(proto, dst)
    return dst


class _Calibration:
    """ONNX Runtime CalibrationDataReader over fixed samples (one array per input, samples on axis 0)."""

    def __init__(self, inputs: dict[str, np.ndarray], batched: bool, batch_size: int = 32):
        n = len(next(iter(inputs.values())))
        if batched:
            self._batches = [{k: v[i : i + batch_size] for k, v in inputs.items()} for i in range(0, n, batch_size)]
        else:
            self._batches = [{k: v[i] for k, v in inputs.items()} for i in range(n)]
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self._batches):
            return None
        self._pos += 1
        return self._batches[self._pos - 1]

    def rewind(self) -> None:
        self._pos = 0


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def _edge_layers(path: Path) -> list[str]:
    """The first convolution and the last fully connected layer: kept in FP32, as is usual for PTQ.

    With symmetric activations the first conv's output (pre-ReLU, mostly negative) gets so few positive levels
    that top-1 dropped 3 points on the digits set; it is 1% of the FLOPs, so keeping it exact costs nothing.
    """
    nodes = onnx.load(str(path)).graph.node
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    fcs = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    return convs[:1] + fcs[-1:]


def to_int8(
    src: Path,
    dst: Path,
    calibration: np.ndarray | dict[str, np.ndarray],
    method: str = "minmax",
    keep_edge_layers_fp32: bool = True,
    quantize_bias: bool = True,
) -> Path:
    """Static post-training quantization: explicit QuantizeLinear/DequantizeLinear pairs, INT8, symmetric
    (zero-point 0) activations and weights, per-channel weight scales.

    ``quantize_bias``: each Conv/Gemm bias as an INT32 initializer behind a DequantizeLinear (scale = input scale ×
    weight scale), which ONNX Runtime's CPU kernels fold into one QLinearConv. TensorRT's ONNX parser takes only
    INT8/FP8/INT4/FP4 into a DequantizeLinear, so a target that builds TensorRT plans asks for float biases
    (``Target.int8_quantize_bias``); TensorRT fuses those itself.

    ``calibration`` is samples for every input (one array per input name, samples on axis 0), or one array for a
    model with one input. A failure inside ONNX Runtime's quantizer (an operator it cannot calibrate) is a
    BuildError that says to leave int8 out."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    sig = session_signature(session(src, threads=1))
    if isinstance(calibration, np.ndarray):
        calibration = {sig.inputs[0].name: calibration}
    if not len(next(iter(calibration.values()), ())):
        raise BuildError("calibration set is empty; pass --calibration-size of at least 1 (256 is a good default)")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise BuildError(f"unknown calibration method {method!r}; choose one of {', '.join(methods)}")
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre),
                str(out),
                _Calibration(calibration, sig.batched),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                nodes_to_exclude=_edge_layers(pre) if keep_edge_layers_fp32 else [],
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QuantizeBias": quantize_bias,
                },
            )
        except Exception as exc:  # the quantizer raises whatever its operator handlers raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise BuildError(
                f"int8 calibration failed ({type(exc).__name__}: {first}); leave int8 out (--variants fp32,fp16) "
                "or report the operator to ONNX Runtime"
            ) from exc
        save_single_file(onnx.load(str(out)), dst)
    return dst


def latency_ms(
    sess: ort.InferenceSession,
    batch: int,
    runs: int = 5,
    min_time_s: float = 0.2,
    feeds: dict[str, np.ndarray] | None = None,
) -> float:
    """Median over ``runs`` of the mean time of one call at ``batch`` (each run lasts at least ``min_time_s``), on
    ``feeds`` or on random inputs of the model's signature (dynamic dims at their default size)."""
    if feeds is None:
        feeds = session_signature(sess).random_inputs(batch, np.random.default_rng(0))
    outputs = [o.name for o in sess.get_outputs()]
    for _ in range(3):
        sess.run(outputs, feeds)
    samples = []
    for _ in range(runs):
        n, start = 0, time.perf_counter()
        while True:
            sess.run(outputs, feeds)
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time_s:
                break
        samples.append(elapsed / n * 1000)
    return float(np.median(samples))
