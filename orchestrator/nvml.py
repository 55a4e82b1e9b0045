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
from typing import Any

__all__ = ["GpuReading", "GuardInputs", "NvmlReader", "describe_notes", "guard_inputs", "read_gpus"]


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    uuid: str
    utilization: float | None  # 0..1, share of the last sample period a kernel ran; None where NVML cannot tell (MIG)
    memory_used_bytes: int
    memory_total_bytes: int
    # Memory of the server's processes on this GPU (the PIDs given), else of its largest compute process (see
    # NvmlReader.read). None when the driver does not tell (e.g. no permission) or the server is not on this GPU.
    process_memory_bytes: int | None = None
    # What could not be read, in words, e.g. "utilization: not supported on a MIG instance".
    notes: tuple[str, ...] = ()

    @property
    def memory_free_bytes(self) -> int:
        return max(0, self.memory_total_bytes - self.memory_used_bytes)


@dataclass(frozen=True)
class GuardInputs:
    """What :func:`orchestrator.policy.clamp` needs for a GPU: ``Window.gpu_memory_free_bytes`` and
    ``Context.gpu_memory_per_instance_bytes``."""

    gpu_memory_free_bytes: float
    gpu_memory_per_instance_bytes: float | None  # None: unknown (no process memory or no instance yet)
    gpu_utilization: float | None  # None: no GPU of the group reports it (MIG instances)


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
        """Every visible GPU, or on a GPU in MIG mode every MIG instance this process may see (each its own memory;
        NVML has no utilization for them). A field NVML cannot give is None with a note; the rest is kept.

        ``pids``: the server's processes (tritonserver and any backend stubs), whose memory is added up on each GPU.
        Where none of them is on any GPU, NVML is reporting PIDs of another PID namespace (the orchestrator in its
        own container: nvidia-docker#1483), and where no PIDs are given, each GPU's largest compute process stands
        for one server. Adding up every process instead would count every replica sharing the GPU
        (``--scale triton=2``) as this server's memory and overestimate it by as many times.
        """
        n = self._nvml
        devices: list[tuple[int, Any, tuple[str, ...]]] = []
        for index in range(n.nvmlDeviceGetCount()):
            handle = n.nvmlDeviceGetHandleByIndex(index)
            migs = self._mig_devices(handle)
            devices += [(index, mig, ("utilization: not reported for a MIG instance",)) for mig in migs] or [
                (index, handle, ())
            ]
        procs = [self._processes(handle) for _, handle, _ in devices]
        wanted = set(pids) if pids is not None else None
        if wanted is not None and not any(p.pid in wanted for ps in procs if ps for p in ps):
            seen = any(ps for ps in procs)
            wanted = None
            scope = (
                "process memory: the server's PIDs are not among NVML's (another PID namespace); its largest process"
                if seen
                else None
            )
        else:
            scope = None
        readings = []
        for (index, handle, notes), ps in zip(devices, procs, strict=True):
            memory = n.nvmlDeviceGetMemoryInfo(handle)
            utilization, note = self._utilization(handle)
            notes = notes or ((note,) if note else ())
            memory_of, why = _process_memory(ps, wanted)
            notes += tuple(x for x in (scope if ps else None, why) if x)
            readings.append(
                GpuReading(
                    index=index,
                    name=_text(n.nvmlDeviceGetName(handle)),
                    uuid=_text(n.nvmlDeviceGetUUID(handle)),
                    utilization=utilization,
                    memory_used_bytes=int(memory.used),
                    memory_total_bytes=int(memory.total),
                    process_memory_bytes=memory_of,
                    notes=notes,
                )
            )
        return tuple(readings)

    def _mig_devices(self, handle) -> list[Any]:
        """The MIG instances of a GPU in MIG mode that NVML lets this process see; [] for a GPU not in MIG mode."""
        n = self._nvml
        try:
            current, _pending = n.nvmlDeviceGetMigMode(handle)
        except (n.NVMLError, AttributeError):  # no MIG support on this GPU or in these bindings
            return []
        if current != getattr(n, "NVML_DEVICE_MIG_ENABLE", 1):
            return []
        found = []
        for i in range(n.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                found.append(n.nvmlDeviceGetMigDeviceHandleByIndex(handle, i))
            except n.NVMLError:  # an empty slot, or one another container owns
                continue
        return found

    def _utilization(self, handle) -> tuple[float | None, str | None]:
        n = self._nvml
        try:
            return n.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0, None
        except n.NVMLError as exc:  # NotSupported on MIG and some vGPU profiles
            return None, f"utilization: {exc}"

    def _processes(self, handle) -> list[Any] | None:
        n = self._nvml
        try:
            return list(n.nvmlDeviceGetComputeRunningProcesses(handle))
        except n.NVMLError:
            return None


def _process_memory(procs: list[Any] | None, pids: Collection[int] | None) -> tuple[int | None, str | None]:
    """The server's memory on one GPU: its processes' sum, or with ``pids`` None the largest process's."""
    if procs is None:
        return None, "process memory: NVML does not list this GPU's processes"
    mine = [p for p in procs if pids is None or p.pid in pids]
    used = [getattr(p, "usedGpuMemory", None) for p in mine]
    if any(u is None for u in used):  # NVML reports None where it may not tell
        return None, "process memory: not permitted to read it"
    if not used:
        return None, None
    return int(sum(used) if pids is not None else max(used)), None


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
    return readings, describe_notes(readings)


def describe_notes(readings: tuple[GpuReading, ...]) -> str:
    """``ok``, or what NVML could not give, once per kind (``GPU 0: utilization: …``)."""
    notes = dict.fromkeys(f"GPU {r.index}: {note}" for r in readings for note in r.notes)
    return "; ".join(notes) if notes else "ok"


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
    known = [r.utilization for r in chosen if r.utilization is not None]
    return GuardInputs(free, per_instance, max(known) if known else None)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
