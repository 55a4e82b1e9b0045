"""NVML readings → the guard's GPU inputs, with a stand-in ``pynvml`` module (the hardware library is the only
double); and the bound that matters: instances never ask for more GPU memory than is free."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from orchestrator.metrics import Window
from orchestrator.nvml import GpuReading, guard_inputs, read_gpus
from orchestrator.policy import (
    Context,
    GuardConfig,
    GuardState,
    Objective,
    Proposal,
    ServingConfig,
    VariantInfo,
    clamp,
    guard,
)

GB = 10**9
VARIANTS = {"fp32": VariantInfo("fp32", "cnn_fp32", 0.978, 28.0)}


class FakeNvml:
    """The slice of pynvml that orchestrator.nvml calls, over a fixed set of GPUs."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus: list[dict], init_error: str | None = None):
        self.gpus, self.init_error = gpus, init_error
        self.initialized = 0

    def nvmlInit(self):
        if self.init_error:
            raise self.NVMLError(self.init_error)
        self.initialized += 1

    def nvmlShutdown(self):
        self.initialized -= 1

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.gpus[i]

    def nvmlDeviceGetName(self, h):
        return h["name"].encode()  # older bindings return bytes

    def nvmlDeviceGetUUID(self, h):
        return h["uuid"]

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=h["used"], total=h["total"], free=h["total"] - h["used"])

    def nvmlDeviceGetUtilizationRates(self, h):
        if h.get("mig_parent") or h.get("migs"):  # NVML: NOT_SUPPORTED on a GPU in MIG mode and its instances
            raise self.NVMLError("Not Supported")
        return SimpleNamespace(gpu=h["util_pct"], memory=0)

    NVML_DEVICE_MIG_ENABLE = 1

    def nvmlDeviceGetMigMode(self, h):
        if "migs" not in h:
            raise self.NVMLError("Not Supported")  # a GPU without MIG
        return (1 if h["migs"] is not None else 0), 0

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, i):
        if i >= len(h["migs"]):
            raise self.NVMLError("Not Found")
        return h["migs"][i]

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        if h.get("procs") is None:
            raise self.NVMLError("Not Supported")
        return [SimpleNamespace(pid=pid, usedGpuMemory=mem) for pid, mem in h["procs"]]


def gpu(i: int, used: float, total: float = 80 * GB, util_pct: int = 50, procs=()) -> dict:
    return {"name": f"NVIDIA H100 #{i}", "uuid": f"GPU-{i}", "used": int(used), "total": int(total),
            "util_pct": util_pct, "procs": list(procs) if procs is not None else None}  # fmt: skip


def test_reads_utilization_memory_and_the_servers_process_memory():
    nvml = FakeNvml([gpu(0, 30 * GB, util_pct=75, procs=[(101, 12 * GB), (202, 5 * GB)])])
    readings, reason = read_gpus(pids={101}, nvml=nvml)
    assert reason == "ok" and nvml.initialized == 0  # the session is closed again
    [r] = readings
    assert (r.name, r.uuid, r.utilization) == ("NVIDIA H100 #0", "GPU-0", 0.75)
    assert (r.memory_used_bytes, r.memory_free_bytes) == (30 * GB, 50 * GB)
    assert r.process_memory_bytes == 12 * GB
    # no PID known: the GPU's largest process stands for one server, not the sum of every replica on the GPU
    assert read_gpus(nvml=nvml)[0][0].process_memory_bytes == 12 * GB


def test_unknown_process_memory_gives_no_per_instance_estimate():
    for procs in (None, [(101, None)]):  # not supported, not permitted
        readings, reason = read_gpus(pids={101}, nvml=FakeNvml([gpu(0, 10 * GB, procs=procs)]))
        assert readings[0].process_memory_bytes is None and "process memory" in reason
        est = guard_inputs(readings, instances=2)
        assert est.gpu_memory_per_instance_bytes is None and est.gpu_memory_free_bytes == 70 * GB
    # two GPUs, the server on GPU 1 only: GPU 0 holds none of its memory
    readings, _ = read_gpus(pids={101}, nvml=FakeNvml([gpu(0, GB, procs=[(999, GB)]), gpu(1, GB, procs=[(101, GB)])]))
    assert [r.process_memory_bytes for r in readings] == [None, GB]


def test_two_replicas_on_one_gpu_seen_from_another_pid_namespace():
    """The orchestrator in its own container: NVML lists host PIDs, none of them the server's PID as the
    orchestrator knows it. Each replica's memory is one server's, not the sum of both."""
    replicas = [(40101, 9 * GB), (40202, 9 * GB)]  # --scale triton=2, 3 instances each
    readings, reason = read_gpus(pids={7}, nvml=FakeNvml([gpu(0, 20 * GB, procs=replicas)]))
    assert readings[0].process_memory_bytes == 9 * GB and "another PID namespace" in reason
    assert guard_inputs(readings, instances=3).gpu_memory_per_instance_bytes == 3 * GB
    readings, _ = read_gpus(nvml=FakeNvml([gpu(0, 20 * GB, procs=replicas)]))
    assert guard_inputs(readings, instances=3).gpu_memory_per_instance_bytes == 3 * GB


def test_mig_keeps_each_instances_memory_and_says_utilization_is_unknown():
    """A GPU in MIG mode: utilization is NOT_SUPPORTED, and the reading is each MIG instance's own memory (the
    parent's would show the whole GPU's memory free to a 10 GB slice)."""
    slices = [gpu(0, 4 * GB, total=10 * GB, procs=[(101, 3 * GB)]), gpu(0, 9 * GB, total=10 * GB, procs=[])]
    for sl in slices:
        sl["mig_parent"] = True
    parent = gpu(0, 13 * GB, procs=[]) | {"migs": slices}
    readings, reason = read_gpus(pids={101}, nvml=FakeNvml([parent]))
    assert [(r.memory_free_bytes, r.utilization) for r in readings] == [(6 * GB, None), (1 * GB, None)]
    assert readings[0].process_memory_bytes == 3 * GB
    assert "not reported for a MIG instance" in reason
    est = guard_inputs(readings[:1], instances=1)
    assert (est.gpu_memory_free_bytes, est.gpu_memory_per_instance_bytes, est.gpu_utilization) == (6 * GB, 3 * GB, None)
    # MIG mode off on a MIG-capable GPU: the GPU itself, with its utilization
    readings, reason = read_gpus(nvml=FakeNvml([gpu(0, GB, util_pct=40) | {"migs": None}]))
    assert (len(readings), readings[0].utilization, reason) == (1, 0.4, "ok")


def test_utilization_not_supported_keeps_the_memory_reading():
    class NoUtilization(FakeNvml):
        def nvmlDeviceGetUtilizationRates(self, h):
            raise self.NVMLError("Not Supported")

    readings, reason = read_gpus(pids={101}, nvml=NoUtilization([gpu(0, 30 * GB, procs=[(101, 12 * GB)])]))
    assert readings[0].utilization is None and readings[0].memory_free_bytes == 50 * GB
    assert readings[0].process_memory_bytes == 12 * GB and reason == "GPU 0: utilization: Not Supported"


def test_no_driver_or_no_package_returns_none_with_the_reason(monkeypatch):
    readings, reason = read_gpus(nvml=FakeNvml([], init_error="Driver Not Loaded"))
    assert readings is None and "Driver Not Loaded" in reason
    readings, reason = read_gpus(nvml=FakeNvml([]))
    assert readings is None and "no GPU" in reason
    monkeypatch.setitem(sys.modules, "pynvml", None)  # as where nvidia-ml-py is not installed
    readings, reason = read_gpus()
    assert readings is None and "pip install '.[gpu]'" in reason


def test_real_pynvml_reads_or_says_why_not():
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed (optional: pip install '.[gpu]')")
    readings, reason = read_gpus(nvml=pynvml)
    if readings is None:
        assert "NVML" in reason
    else:  # a machine with a GPU and driver
        assert all(r.memory_total_bytes > 0 for r in readings)


def test_guard_inputs_take_the_tightest_gpu():
    readings = (
        GpuReading(0, "a", "GPU-0", 0.2, 20 * GB, 80 * GB, 8 * GB),
        GpuReading(1, "b", "GPU-1", 0.9, 70 * GB, 80 * GB, 9 * GB),
    )
    est = guard_inputs(readings, instances=3)
    # A KIND_GPU count is per GPU: the next instance must fit on the fullest GPU, at the largest share.
    assert est.gpu_memory_free_bytes == 10 * GB
    assert est.gpu_memory_per_instance_bytes == 3 * GB
    assert est.gpu_utilization == 0.9
    assert guard_inputs(readings, instances=3, gpu_indices={0}).gpu_memory_free_bytes == 60 * GB
    assert guard_inputs(readings, instances=0).gpu_memory_per_instance_bytes is None
    with pytest.raises(ValueError, match="none of GPUs"):
        guard_inputs(readings, instances=1, gpu_indices={7})


def _ctx(per_instance_bytes: float) -> Context:
    return Context(
        objective=Objective(50.0), variants=VARIANTS, cores=2, kind="gpu", max_instances=16,
        gpu_memory_per_instance_bytes=per_instance_bytes,
    )  # fmt: skip


def _window(free_bytes: float) -> Window:
    return Window(start_s=0.0, end_s=2.0, requests=100, gpu_memory_free_bytes=free_bytes)


@pytest.mark.parametrize("used_gb", [10, 40, 60, 68, 71, 74, 79.5])
@pytest.mark.parametrize("instances", [1, 2, 4])
def test_instances_never_ask_for_more_gpu_memory_than_is_free(used_gb, instances):
    server_gb = 6.0 * instances  # the server's memory grows with its instances
    readings, _ = read_gpus(pids={7}, nvml=FakeNvml([gpu(0, used_gb * GB, procs=[(7, server_gb * GB), (8, GB)])]))
    est = guard_inputs(readings, instances)
    ctx, w = _ctx(est.gpu_memory_per_instance_bytes), _window(est.gpu_memory_free_bytes)
    current = ServingConfig("fp32", instances)
    generous = GuardConfig(max_instance_step=16)  # let the step limit not hide the memory bound
    for wanted in range(instances, 17):
        got = clamp(ServingConfig("fp32", wanted), current, w, ctx, generous).instances
        assert instances <= got <= wanted
        assert (got - instances) * est.gpu_memory_per_instance_bytes <= est.gpu_memory_free_bytes
    # and with room for exactly one more, one more is what the guard allows
    room = _window(est.gpu_memory_per_instance_bytes * 1.5)
    assert clamp(ServingConfig("fp32", instances + 4), current, room, ctx, generous).instances == instances + 1


def test_guard_holds_an_instance_that_does_not_fit():
    est = guard_inputs((GpuReading(0, "a", "GPU-0", 0.95, 78 * GB, 80 * GB, 6 * GB),), instances=2)
    up = Proposal(ServingConfig("fp32", 3), "up", "add-instance", "p99 over the SLO")
    state = GuardState(direction="up", since_s=0.0)
    decision, _ = guard(
        up, ServingConfig("fp32", 2), _window(est.gpu_memory_free_bytes), _ctx(est.gpu_memory_per_instance_bytes),
        GuardConfig(), state, now_s=100.0,
    )  # fmt: skip
    assert decision.action == "hold" and decision.rule == "at-limit"


def test_the_live_loop_feeds_nvml_into_the_window_and_the_per_instance_estimate(monkeypatch, tmp_path):
    """Orchestrator (kind gpu) with the stand-in NVML: the window gets the tighter free memory, and the context
    the server's memory ÷ instances, but only while no action is being verified (a reload holds two copies)."""
    from dataclasses import replace

    from orchestrator import loop
    from orchestrator.nvml import NvmlReader

    nvml = FakeNvml([gpu(0, 70 * GB, procs=[(101, 24 * GB)])])
    real_open = NvmlReader.open.__func__
    monkeypatch.setattr(loop.NvmlReader, "open", classmethod(lambda cls, m=None: real_open(cls, nvml)))
    ctx = Context(objective=Objective(50.0), variants=VARIANTS, cores=2, kind="gpu", max_instances=8)
    orch = loop.Orchestrator(None, ctx, loop.LoopOptions(server_pids=(101,), decision_log=tmp_path / "d.jsonl"))
    orch.current = ServingConfig("fp32", instances=2)
    w = Window(start_s=0, end_s=2, gpu_memory_free_bytes=15 * GB)
    out = orch._with_nvml(w, now=100.0)
    assert out.gpu_memory_free_bytes == 10 * GB  # NVML's 80 - 70 GB is tighter than Triton's 15 GB
    assert orch.ctx.gpu_memory_per_instance_bytes == 12 * GB  # 24 GB over 2 instances
    nvml.gpus[0]["procs"] = [(101, 48 * GB)]  # mid-reload: both copies resident
    orch.state = replace(orch.state, guard=replace(orch.state.guard, last_action_s=99.0))
    orch._with_nvml(w, now=100.0)
    assert orch.ctx.gpu_memory_per_instance_bytes == 12 * GB  # not taken while the action settles
    orch.close()
    assert nvml.initialized == 0
