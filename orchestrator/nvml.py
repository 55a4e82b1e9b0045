"""GPU readings straight from the driver (NVML, through ``nvidia-ml-py``), for the guard's GPU memory bound.

Triton's own ``nv_gpu_*`` metrics give device-wide utilization and memory; NVML adds what they lack: the memory of
the server process itself, from which :func:`guard_inputs` estimates what one more model instance will take.
Everything is optional: without the package, a driver or a GPU, :func:`read_gpus` returns ``None`` and the reason,
and the orchestrator carries on with Triton's metrics alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass
from types import ModuleType

__all__ = ["GpuReading", "GuardInputs", "NvmlReader", "guard_inputs", "read_gpus"]


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    uuid: str
    utilization: float  # 0..1, share of the last sample period a kernel ran
    memory_used_bytes: int
    memory_total_bytes: int
    # Memory of the server's processes on this GPU; with no PID given, of every compute process on it. None when
    # the driver does not tell (e.g. no permission).
    process_memory_bytes: int | None = None

    @property
    def memory_free_bytes(self) -> int:
        return max(0, self.memory_total_bytes - self.memory_used_bytes)


@dataclass(frozen=True)
class GuardInputs:
    """What :func:`orchestrator.policy.clamp` needs for a GPU: ``Window.gpu_memory_free_bytes`` and
    ``Context.gpu_memory_per_instance_bytes``."""

    gpu_memory_free_bytes: float
    gpu_memory_per_instance_bytes: float | None  # None: unknown (no process memory or no instance yet)
    gpu_utilization: float


class NvmlReader:
    """An initialized NVML session; :meth:`open` returns ``(None, reason)`` where there is none to be had."""

    def __init__(self, nvml: ModuleType):
        self._nvml = nvml

    @classmethod
    def open(cls, nvml: ModuleType | None = None) -> tuple[NvmlReader | None, str]:
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError:
                return None, "nvidia-ml-py is not installed (pip install '.[gpu]'); GPU memory comes from Triton only"
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:  # no driver, no library, no permission
            return None, f"NVML unavailable ({exc}); GPU memory comes from Triton's metrics only"
        return cls(nvml), "ok"

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):  # a session the driver already dropped
            self._nvml.nvmlShutdown()

    def __enter__(self) -> NvmlReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, pids: Collection[int] | None = None) -> tuple[GpuReading, ...]:
        """Every visible GPU. ``pids``: the server's processes (tritonserver and any backend stubs); None counts every
        compute process on the GPU, right for a GPU dedicated to Triton and for containers, where NVML reports PIDs
        of the host's namespace."""
        n = self._nvml
        readings = []
        for index in range(n.nvmlDeviceGetCount()):
            handle = n.nvmlDeviceGetHandleByIndex(index)
            memory = n.nvmlDeviceGetMemoryInfo(handle)
            readings.append(
                GpuReading(
                    index=index,
                    name=_text(n.nvmlDeviceGetName(handle)),
                    uuid=_text(n.nvmlDeviceGetUUID(handle)),
                    utilization=n.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
                    memory_used_bytes=int(memory.used),
                    memory_total_bytes=int(memory.total),
                    process_memory_bytes=self._process_memory(handle, pids),
                )
            )
        return tuple(readings)

    def _process_memory(self, handle, pids: Collection[int] | None) -> int | None:
        n = self._nvml
        try:
            procs = n.nvmlDeviceGetComputeRunningProcesses(handle)
        except n.NVMLError:
            return None
        mine = [p for p in procs if pids is None or p.pid in pids]
        used = [getattr(p, "usedGpuMemory", None) for p in mine]
        if not mine or any(u is None for u in used):  # NVML reports None where it may not tell
            return None
        return int(sum(used))


def read_gpus(
    pids: Collection[int] | None = None, nvml: ModuleType | None = None
) -> tuple[tuple[GpuReading, ...] | None, str]:
    """One reading of every GPU, or ``(None, reason)`` when NVML is absent or fails."""
    reader, reason = NvmlReader.open(nvml)
    if reader is None:
        return None, reason
    with reader:
        try:
            readings = reader.read(pids)
        except reader._nvml.NVMLError as exc:
            return None, f"NVML read failed ({exc}); GPU memory comes from Triton's metrics only"
    if not readings:
        return None, "NVML sees no GPU; GPU memory comes from Triton's metrics only"
    return readings, "ok"


def guard_inputs(
    readings: tuple[GpuReading, ...], instances: int, gpu_indices: Collection[int] | None = None
) -> GuardInputs:
    """Free memory and a per-instance estimate from one reading.

    A KIND_GPU group's count is per GPU (Triton starts ``count`` instances on each GPU of the group), so one more
    instance must fit on every GPU: free memory is the least on any of them, and the per-instance estimate the most
    of any, the server's memory on that GPU ÷ ``instances``. That memory also holds the CUDA context and other
    models, so the estimate errs high and the guard adds an instance only while such a share still fits.
    """
    chosen = [r for r in readings if gpu_indices is None or r.index in gpu_indices]
    if not chosen:
        raise ValueError(f"none of GPUs {sorted(gpu_indices or ())} is among those NVML reports")
    free = float(min(r.memory_free_bytes for r in chosen))
    process = [r.process_memory_bytes for r in chosen]
    per_instance = None
    if instances >= 1 and all(p is not None and p > 0 for p in process):
        per_instance = float(max(p for p in process if p is not None)) / instances
    return GuardInputs(free, per_instance, max(r.utilization for r in chosen))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
