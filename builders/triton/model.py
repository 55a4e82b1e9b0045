"""Triton Python-backend model: one ONNX Runtime session per instance serving any ONNX model by its config.

Copied verbatim into every ``<model>/<version>/`` folder of the repository. The inputs and outputs (names,
datatypes, dims, -1 for dynamic) and ``max_batch_size`` are read from the model config, so one file serves every
model tritune builds. Each request is checked against the config before inference, and a bad one gets its own
error while the others in the batch are served. Values are not checked: NaN or infinity in a float input is
computed on, as every Triton backend does (perf_analyzer's default random data holds them; a pass over every
request's data to refuse them would cost each request and break the field's standard tool).

Config parameters read here: ``intra_op_num_threads`` ("auto" =
cores ÷ instances, so instances × threads never oversubscribe the CPU) and ``onnx_file`` (default ``model.onnx``).
Every other parameter (variant, artifact hash) is informational.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_DTYPES = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
}


def _error(message, code=None):
    # TritonError grew a status-code argument in later releases; fall back to the message-only form.
    try:
        return pb_utils.TritonError(message, code if code is not None else pb_utils.TritonError.INVALID_ARG)
    except (AttributeError, TypeError):
        return pb_utils.TritonError(message)


class _Tensor:
    def __init__(self, spec):
        self.name = spec["name"]
        self.config_type = spec["data_type"]
        self.dtype = np.dtype(_DTYPES[self.config_type])
        self.dims = tuple(int(d) for d in spec.get("dims", []))

    def describe(self, batched):
        dims = ",".join("?" if d < 0 else str(d) for d in self.dims)
        return f"{self.config_type.removeprefix('TYPE_')} [{'N,' if batched else ''}{dims}]"

    def fits(self, shape):
        return len(shape) == len(self.dims) and all(d < 0 or d == s for d, s in zip(self.dims, shape, strict=True))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.model_name = config["name"]
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.batched = self.max_batch_size > 0
        self.inputs = [_Tensor(t) for t in config["input"]]
        self.outputs = [_Tensor(t) for t in config["output"]]

        threads = params.get("intra_op_num_threads", "auto") or "auto"
        if threads == "auto":
            instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
            threads = max(1, (os.cpu_count() or 1) // instances)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file") or "model.onnx")
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.ort_outputs = [t.name for t in self.outputs]

    def _validate(self, request):
        """The request's arrays by input name, or the one-line reason it cannot be served."""
        arrays = {}
        batch = None
        for t in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, t.name)
            if tensor is None:
                expected = ", ".join(f"{x.name} {x.describe(self.batched)}" for x in self.inputs)
                return None, f"{self.model_name}: missing input {t.name!r}; send {expected}"
            array = tensor.as_numpy()
            if array.dtype != t.dtype:
                return None, (
                    f"{self.model_name}: input {t.name!r} must be {t.describe(self.batched)}, got {array.dtype}; "
                    f"convert it to {t.dtype}"
                )
            shape = tuple(array.shape[1:]) if self.batched else tuple(array.shape)
            if (self.batched and array.ndim < 1) or not t.fits(shape):
                return None, (
                    f"{self.model_name}: input {t.name!r} has shape {list(array.shape)}, "
                    f"expected {t.describe(self.batched)}"
                )
            if self.batched:
                if not 1 <= array.shape[0] <= self.max_batch_size:
                    return None, (
                        f"{self.model_name}: batch of {array.shape[0]} is outside 1..{self.max_batch_size}; "
                        "split the request"
                    )
                if batch is not None and array.shape[0] != batch:
                    return None, f"{self.model_name}: the inputs' batch sizes differ; give each the same"
                batch = array.shape[0]
            arrays[t.name] = array
        return arrays, None

    def _fail(self, owners, responses, exc):
        message = f"{self.model_name}: inference failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        error = _error(message, getattr(pb_utils.TritonError, "INTERNAL", None))
        for i in owners:
            responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=error)

    def _respond(self, results, responses, owner, rows=None):
        tensors = []
        for t, value in zip(self.outputs, results, strict=True):
            part = value if rows is None else value[rows[0] : rows[1]]
            tensors.append(pb_utils.Tensor(t.name, np.ascontiguousarray(part, dtype=t.dtype)))
        responses[owner] = pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}  # per-sample shapes of every input → [(request index, arrays)]
        for i, request in enumerate(requests):
            arrays, message = self._validate(request)
            if message is not None:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_error(message))
                continue
            key = tuple(tuple(arrays[t.name].shape[1:]) for t in self.inputs) if self.batched else i
            groups.setdefault(key, []).append((i, arrays))
        for members in groups.values():
            owners = [i for i, _ in members]
            try:
                if not self.batched:
                    i, arrays = members[0]
                    self._respond(self.session.run(self.ort_outputs, arrays), responses, i)
                    continue
                # Dynamic batching hands several requests at once: one ONNX Runtime call for those whose
                # per-sample shapes agree (a dynamic dimension may differ between requests).
                feed = {
                    t.name: members[0][1][t.name]
                    if len(members) == 1
                    else np.concatenate([arrays[t.name] for _, arrays in members])
                    for t in self.inputs
                }
                results = self.session.run(self.ort_outputs, feed)
            except Exception as exc:  # keep the stub alive whatever ONNX Runtime says
                self._fail(owners, responses, exc)
                continue
            rows = sum(arrays[self.inputs[0].name].shape[0] for _, arrays in members)
            bad = [t.name for t, value in zip(self.outputs, results, strict=True) if value.shape[:1] != (rows,)]
            if bad:
                # The config says the first dimension is the batch; an output that does not follow it cannot be
                # split between the requests that made it.
                self._fail(owners, responses, ValueError(f"outputs {bad} do not have the batch's {rows} rows"))
                continue
            start = 0
            for i, arrays in members:
                stop = start + arrays[self.inputs[0].name].shape[0]
                self._respond(results, responses, i, (start, stop))
                start = stop
        return responses

    def finalize(self):
        self.session = None
