"""Triton Python-backend model: one ONNX Runtime session per instance, inputs validated before inference.

Copied verbatim into every ``<model>/<version>/`` folder of the repository. Config parameters read here:
``intra_op_num_threads`` ("auto" = cores ÷ instances, so instances × threads never oversubscribe the CPU) and
``onnx_file`` (default ``model.onnx``). Every other parameter (variant, artifact hash) is informational.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _error(message, code=None):
    # TritonError grew a status-code argument in later releases; fall back to the message-only form.
    try:
        return pb_utils.TritonError(message, code if code is not None else pb_utils.TritonError.INVALID_ARG)
    except (AttributeError, TypeError):
        return pb_utils.TritonError(message)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.model_name = config["name"]
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.input_name = config["input"][0]["name"]
        self.input_dims = tuple(int(d) for d in config["input"][0]["dims"])
        self.output_name = config["output"][0]["name"]

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
        self.ort_input = self.session.get_inputs()[0].name
        self.ort_output = self.session.get_outputs()[0].name

    def _validate(self, request):
        shape = f"[N,{','.join(map(str, self.input_dims))}]"
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            return (
                None,
                f"{self.model_name}: missing input {self.input_name!r}; send FP32 {shape}",
            )
        array = tensor.as_numpy()
        if array.dtype != np.float32:
            return (
                None,
                f"{self.model_name}: input {self.input_name!r} must be FP32, got {array.dtype}; "
                "convert the images to float32 in [0, 1]",
            )
        if array.ndim != len(self.input_dims) + 1 or tuple(array.shape[1:]) != self.input_dims:
            return (
                None,
                f"{self.model_name}: input {self.input_name!r} has shape {list(array.shape)}, expected {shape}",
            )
        if not 1 <= array.shape[0] <= max(self.max_batch_size, 1):
            return (
                None,
                f"{self.model_name}: batch of {array.shape[0]} is outside 1..{self.max_batch_size}; split the request",
            )
        if not np.isfinite(array).all():
            return None, f"{self.model_name}: input {self.input_name!r} holds NaN or infinity; send finite pixel values"
        return array, None

    def execute(self, requests):
        responses = [None] * len(requests)
        arrays, owners = [], []
        for i, request in enumerate(requests):
            array, message = self._validate(request)
            if message is not None:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_error(message))
            else:
                arrays.append(array)
                owners.append(i)
        if arrays:
            # Dynamic batching hands several requests at once: one ONNX Runtime call for all of them.
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            try:
                logits = self.session.run([self.ort_output], {self.ort_input: batch})[0]
            except Exception as exc:  # keep the stub alive whatever ONNX Runtime says
                message = f"{self.model_name}: inference failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                for i in owners:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=_error(message, getattr(pb_utils.TritonError, "INTERNAL", None))
                    )
                return responses
            start = 0
            for i, array in zip(owners, arrays, strict=True):
                stop = start + array.shape[0]
                out = pb_utils.Tensor(self.output_name, np.ascontiguousarray(logits[start:stop], dtype=np.float32))
                responses[i] = pb_utils.InferenceResponse(output_tensors=[out])
                start = stop
        return responses

    def finalize(self):
        self.session = None
