"""The model's interface as data: its inputs and outputs (names, datatypes, shapes, dynamic dimensions) and whether
the first dimension of every tensor is a batch.

One owner, read from the model and never assumed: from the ONNX graph at build time (:meth:`Signature.from_onnx`)
and from Triton's model config at run time (:meth:`Signature.from_config`), as perf_analyzer and Model Analyzer read
it from Triton's metadata. Builders, configs, clients and load generators build their tensors from it.

Shapes are per sample: without the batch dimension when ``batched``; ``-1`` marks a dynamic dimension.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritune.errors import DataError, ModelInputError

# Triton's wire datatypes (the KServe v2 protocol's names) and their numpy equivalents. BYTES is left out: no
# builder here makes string models, and random data for one has no meaning.
NUMPY_DTYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPE_OF: dict[np.dtype, str] = {v: k for k, v in NUMPY_DTYPE.items()}

# onnx.TensorProto's element types (the numbers are fixed by the ONNX spec) → Triton wire datatype.
_ONNX_ELEM = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
}

# Random request data (perf_analyzer's --input-data random, but finite): floats uniform in [0, 1), integers in
# [0, RANDOM_INT_HIGH) so that a token id is valid for any vocabulary of at least that size, booleans either way.
RANDOM_INT_HIGH = 16
# The size given to a dynamic non-batch dimension when neither the data nor the caller fixes it (perf_analyzer
# needs --shape for these; a default keeps the first try working and is said wherever it is used).
DEFAULT_DYNAMIC_DIM = 16


def datatype_of(dtype: np.dtype | type) -> str:
    """Triton's wire datatype of a numpy dtype."""
    try:
        return DATATYPE_OF[np.dtype(dtype)]
    except KeyError:
        raise ModelInputError(
            f"numpy {np.dtype(dtype)} has no Triton datatype; use one of "
            + ", ".join(str(d) for d in NUMPY_DTYPE.values())
        ) from None


@dataclass(frozen=True)
class Tensor:
    """One input or output. ``shape`` is per sample (no batch dimension when the model batches); -1 is dynamic."""

    name: str
    datatype: str  # Triton wire datatype: FP32, INT64, BOOL, ...
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in NUMPY_DTYPE:
            raise ModelInputError(
                f"tensor {self.name!r} has datatype {self.datatype!r}, which tritune cannot serve; "
                f"use one of {', '.join(NUMPY_DTYPE)}"
            )

    @property
    def dtype(self) -> np.dtype:
        return NUMPY_DTYPE[self.datatype]

    @property
    def config_type(self) -> str:
        """The ``data_type`` name of Triton's model config (``TYPE_FP32``)."""
        return "TYPE_BOOL" if self.datatype == "BOOL" else f"TYPE_{self.datatype}"

    @property
    def is_float(self) -> bool:
        return self.datatype.startswith("FP")

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.shape)

    def concrete(self, dims: Mapping[str, tuple[int, ...]] | None = None) -> tuple[int, ...]:
        """A fixed per-sample shape: ``dims[name]`` if given, else each dynamic dimension as DEFAULT_DYNAMIC_DIM."""
        if dims and self.name in dims:
            shape = tuple(int(d) for d in dims[self.name])
            if not self.accepts(shape):
                raise ModelInputError(f"shape {list(shape)} for {self.name!r} does not fit {self.describe()}")
            return shape
        return tuple(DEFAULT_DYNAMIC_DIM if d < 0 else d for d in self.shape)

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(w < 0 or w == s for w, s in zip(self.shape, shape, strict=True))

    def describe(self) -> str:
        dims = ",".join("?" if d < 0 else str(d) for d in self.shape)
        return f"{self.datatype}[{dims}]"

    def random(self, leading: tuple[int, ...], shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        full = (*leading, *shape)
        if self.datatype == "BOOL":
            return rng.integers(0, 2, full).astype(bool)
        if self.is_float:
            return rng.random(full, dtype=np.float32).astype(self.dtype)
        return rng.integers(0, RANDOM_INT_HIGH, full).astype(self.dtype)


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    batched: bool  # the first dimension of every tensor is the batch (Triton's max_batch_size > 0)

    def __post_init__(self) -> None:
        if not self.inputs or not self.outputs:
            raise ModelInputError("the model has no inputs or no outputs; tritune serves models with both")
        names = [t.name for t in (*self.inputs, *self.outputs)]
        if len(set(names)) != len(names):
            raise ModelInputError(f"tensor names repeat in {names}; give every input and output its own name")

    # -- readers -------------------------------------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, model: Any) -> Signature:
        """From an ONNX file (path) or ``onnx.ModelProto``: graph inputs that are not initializers, and outputs.

        The model batches when the first dimension of every input and output is dynamic (a named or unset dim);
        a fixed first dimension anywhere means Triton serves it with ``max_batch_size: 0`` and full shapes.
        """
        import onnx

        proto = onnx.load(str(model), load_external_data=False) if isinstance(model, str | Path) else model
        graph = proto.graph
        initializers = {i.name for i in graph.initializer}

        def read(values) -> list[tuple[str, str, list[int]]]:
            out = []
            for v in values:
                if v.name in initializers:
                    continue
                kind = v.type.WhichOneof("value")
                if kind != "tensor_type":
                    raise ModelInputError(
                        f"{v.name!r} is a {kind}, not a tensor; tritune serves models whose inputs and outputs are "
                        "tensors"
                    )
                elem = v.type.tensor_type.elem_type
                if elem not in _ONNX_ELEM:
                    name = onnx.TensorProto.DataType.Name(elem)
                    raise ModelInputError(f"{v.name!r} has ONNX type {name}, which tritune cannot serve")
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
                out.append((v.name, _ONNX_ELEM[elem], dims))
            return out

        return cls.from_full_shapes(read(graph.input), read(graph.output))

    @classmethod
    def from_full_shapes(
        cls, inputs: list[tuple[str, str, list[int]]], outputs: list[tuple[str, str, list[int]]]
    ) -> Signature:
        """From (name, datatype, full shape) of every tensor, as a graph declares them: the model batches when the
        first dimension of every input and output is dynamic, and the per-sample shapes drop it then."""
        batched = all(len(d) >= 1 and d[0] < 0 for _, _, d in (*inputs, *outputs))
        cut = 1 if batched else 0
        return cls(
            tuple(Tensor(n, t, tuple(d[cut:])) for n, t, d in inputs),
            tuple(Tensor(n, t, tuple(d[cut:])) for n, t, d in outputs),
            batched,
        )

    @classmethod
    def from_config(cls, config) -> Signature:
        """From Triton's model config (:class:`tritune.model_config.ModelConfig`): ``dims`` exclude the batch."""

        def tensor(spec) -> Tensor:
            return Tensor(spec.name, spec.data_type.removeprefix("TYPE_"), tuple(spec.dims))

        return cls(
            tuple(tensor(s) for s in config.inputs), tuple(tensor(s) for s in config.outputs), config.max_batch_size > 0
        )

    @classmethod
    def from_metadata(cls, metadata: dict, max_batch_size: int) -> Signature:
        """From Triton's model metadata (``/v2/models/<m>``): its shapes include the batch dimension (-1)."""
        cut = 1 if max_batch_size > 0 else 0

        def tensors(items) -> tuple[Tensor, ...]:
            return tuple(Tensor(t["name"], t["datatype"], tuple(int(d) for d in t["shape"])[cut:]) for t in items)

        return cls(tensors(metadata["inputs"]), tensors(metadata["outputs"]), max_batch_size > 0)

    # -- forms ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def tensors(items) -> list[dict]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

        return {"batched": self.batched, "inputs": tensors(self.inputs), "outputs": tensors(self.outputs)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Signature:
        def tensors(items) -> tuple[Tensor, ...]:
            return tuple(Tensor(t["name"], t["datatype"], tuple(t["shape"])) for t in items)

        return cls(tensors(d["inputs"]), tensors(d["outputs"]), bool(d["batched"]))

    def tensor_specs(self):
        """Inputs and outputs as :class:`tritune.model_config.TensorSpec` for a Triton config."""
        from tritune.model_config import TensorSpec

        bare = [t.name for t in (*self.inputs, *self.outputs) if self.batched and not t.shape]
        if bare:
            raise ModelInputError(
                f"{bare} have no dimension besides the batch, which a Triton config cannot declare (its dims must "
                "not be empty): export them with a trailing dimension of 1 (e.g. unsqueeze(-1))"
            )
        return (
            tuple(TensorSpec(t.name, t.config_type, t.shape) for t in self.inputs),
            tuple(TensorSpec(t.name, t.config_type, t.shape) for t in self.outputs),
        )

    def describe(self) -> str:
        def side(items) -> str:
            return ", ".join(f"{t.name} {t.describe()}" for t in items)

        batch = "batched" if self.batched else "no batch dimension"
        return f"inputs {side(self.inputs)} → outputs {side(self.outputs)} ({batch})"

    # -- lookups -------------------------------------------------------------------------------------------------
    def input(self, name: str) -> Tensor:
        for t in self.inputs:
            if t.name == name:
                return t
        raise ModelInputError(f"the model has no input {name!r}; its inputs are {self.input_names}")

    def output(self, name: str) -> Tensor:
        for t in self.outputs:
            if t.name == name:
                return t
        raise ModelInputError(f"the model has no output {name!r}; its outputs are {[t.name for t in self.outputs]}")

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def classifier_output(self) -> Tensor | None:
        """The output read as class scores: the first floating-point output of one dimension of 2+ classes."""
        for t in self.outputs:
            if t.is_float and len(t.shape) == 1 and t.shape[0] != 1:
                return t
        return None

    # -- data ----------------------------------------------------------------------------------------------------
    def random_inputs(
        self, batch: int, rng: np.random.Generator | None = None, dims: Mapping[str, tuple[int, ...]] | None = None
    ) -> dict[str, np.ndarray]:
        """One request's random inputs: ``batch`` samples (ignored without a batch dimension)."""
        rng = rng or np.random.default_rng(0)
        leading = (batch,) if self.batched else ()
        return {t.name: t.random(leading, t.concrete(dims), rng) for t in self.inputs}

    def check_inputs(self, arrays: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
        """Samples for this model, one array per input with the samples on axis 0; cast within a kind (float64 →
        float32, int32 → int64), never across kinds. Raises DataError, one line, naming what to fix."""
        missing = [n for n in self.input_names if n not in arrays]
        if missing:
            raise DataError(
                f"{what} has no array for input(s) {missing} (it has {sorted(arrays)}); "
                f"name one array per model input: {self.input_names}"
            )
        out: dict[str, np.ndarray] = {}
        for t in self.inputs:
            a = np.asarray(arrays[t.name])
            if not (
                a.dtype == t.dtype
                or (t.datatype == "BOOL" and a.dtype == np.bool_)
                or (t.datatype != "BOOL" and a.dtype != np.bool_ and np.can_cast(a.dtype, t.dtype, "same_kind"))
            ):
                raise DataError(
                    f"{what}: {t.name!r} holds {a.dtype}, the model takes {t.datatype}; convert the array to {t.dtype}"
                )
            if a.ndim < 1 or not t.accepts(tuple(a.shape[1:])):
                raise DataError(
                    f"{what}: {t.name!r} has shape {list(a.shape)}, the model takes samples of {t.describe()} "
                    "(axis 0 counts the samples)"
                )
            out[t.name] = np.ascontiguousarray(a, dtype=t.dtype)
        counts = {n: len(a) for n, a in out.items()}
        if len(set(counts.values())) != 1:
            raise DataError(f"{what}: the inputs hold different numbers of samples {counts}; give each the same")
        if not next(iter(counts.values())):
            raise DataError(f"{what} holds no samples; give at least one")
        return out
