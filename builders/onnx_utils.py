"""ONNX export, conversion (FP16, INT8 with Q/DQ) and ONNX Runtime sessions."""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from tritune.errors import BuildError, ExportError
from tritune.model_io import INPUT_NAME, INPUT_SHAPE, OUTPUT_NAME

# Largest batch the exported graph is declared for; the served max_batch_size must not exceed it.
MAX_EXPORT_BATCH = 1024


@contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress and deprecation chatter; keep the build log readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
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


def export_onnx(model: nn.Module, path: Path, opset: int = 18) -> Path:
    """Export with a dynamic batch dimension to one self-contained file (no external ``.onnx.data``)."""
    model = model.eval()
    example = (torch.rand(2, *INPUT_SHAPE),)
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        tmp_path = Path(tmp) / "model.onnx"
        try:
            program = torch.onnx.export(
                model,
                example,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
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
    return np.concatenate(
        [sess.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    )


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
    """ONNX Runtime CalibrationDataReader over a fixed array of training images."""

    def __init__(self, images: np.ndarray, batch_size: int = 32):
        self._batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self._batches):
            return None
        self._pos += 1
        return {INPUT_NAME: self._batches[self._pos - 1]}

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
    src: Path, dst: Path, calibration_images: np.ndarray, method: str = "minmax", keep_edge_layers_fp32: bool = True
) -> Path:
    """Static post-training quantization in the form TensorRT accepts: explicit QuantizeLinear/DequantizeLinear
    pairs, INT8, symmetric (zero-point 0) activations and weights, per-channel weight scales."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration_images) == 0:
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
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            _Calibration(calibration_images.astype(np.float32)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_exclude=_edge_layers(pre) if keep_edge_layers_fp32 else [],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
        save_single_file(onnx.load(str(out)), dst)
    return dst


def latency_ms(sess: ort.InferenceSession, batch: int, runs: int = 5, min_time_s: float = 0.2) -> float:
    """Median over ``runs`` of the mean time of one call at ``batch`` (each run lasts at least ``min_time_s``)."""
    x = np.random.default_rng(0).random((batch, *INPUT_SHAPE), dtype=np.float32)
    for _ in range(3):
        sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    samples = []
    for _ in range(runs):
        n, start = 0, time.perf_counter()
        while True:
            sess.run([OUTPUT_NAME], {INPUT_NAME: x})
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time_s:
                break
        samples.append(elapsed / n * 1000)
    return float(np.median(samples))
