"""Compile targets: how a variant's ONNX becomes a servable Triton model.

A target turns one :class:`VariantArtifact` into a model folder (artifacts + ``config.pbtxt``). ``cpu`` serves the
ONNX through the Python backend and ONNX Runtime; ``gpu`` builds TensorRT plans (``tensorrt_plan`` platform) with one
of its ``compilers``.
"""

from __future__ import annotations

from pathlib import Path

from builders.targets.base import CompiledModel, Target, VariantArtifact
from builders.targets.cpu import CpuTarget
from builders.targets.tensorrt import TensorRTTarget
from tritune.errors import BuildError

TARGETS: dict[str, type[Target]] = {"cpu": CpuTarget, "gpu": TensorRTTarget}


def get_target(
    name: str, compiler: str | None = None, cache_dir: Path | None = None, profiles: str | None = None
) -> Target:
    """The target, checked to be usable here. ``compiler``, ``cache_dir`` and ``profiles`` (TensorRT optimization
    profiles, ``--trt-profile``) apply to targets with ``compilers``."""
    try:
        cls = TARGETS[name]
    except KeyError:
        raise BuildError(f"unknown target {name!r}; available here: {', '.join(sorted(TARGETS))}") from None
    compilers: tuple[str, ...] = getattr(cls, "compilers", ())
    if compiler and compiler not in compilers:
        choice = f"choose from {', '.join(compilers)}" if compilers else "leave --compiler out"
        raise BuildError(f"--compiler {compiler} does not apply to --target {name}; {choice}")
    if profiles and not compilers:
        raise BuildError(f"--trt-profile applies to --target gpu, not {name}; leave it out")
    target = cls(compiler=compiler or compilers[0], cache_dir=cache_dir, profiles=profiles) if compilers else cls()
    target.check_available()
    return target


__all__ = ["TARGETS", "CompiledModel", "Target", "VariantArtifact", "get_target"]
