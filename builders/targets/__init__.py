"""Compile targets: how a variant's ONNX becomes a servable Triton model.

A target turns one :class:`VariantArtifact` into a model folder (artifacts + ``config.pbtxt``). ``cpu`` serves the
ONNX through the Python backend and ONNX Runtime. A GPU target (TensorRT plans, ``tensorrt_plan`` platform) plugs in
here by registering another :class:`Target`; nothing else in the builders changes.
"""

from __future__ import annotations

from builders.targets.base import CompiledModel, Target, VariantArtifact
from builders.targets.cpu import CpuTarget
from tritune.errors import BuildError

TARGETS: dict[str, type[Target]] = {"cpu": CpuTarget}


def get_target(name: str) -> Target:
    try:
        target = TARGETS[name]()
    except KeyError:
        raise BuildError(f"unknown target {name!r}; available here: {', '.join(sorted(TARGETS))}") from None
    target.check_available()
    return target


__all__ = ["TARGETS", "CompiledModel", "Target", "VariantArtifact", "get_target"]
