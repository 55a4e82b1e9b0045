"""The other processes' CPU share from a fake /proc: machine busy time less the Triton process tree's."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.cpu import CpuSampler, find_triton

HZ = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def write(proc: Path, busy_ticks: int, total_ticks: int, tree: dict[int, tuple[int, int]]) -> None:
    idle = total_ticks - busy_ticks
    (proc / "stat").write_text(f"cpu  {busy_ticks} 0 0 {idle} 0 0 0 0 0 0\n")
    for pid, (ppid, ticks) in tree.items():
        d = proc / str(pid)
        d.mkdir(exist_ok=True)
        fields = ["S", str(ppid)] + ["0"] * 9 + [str(ticks), "0"] + ["0"] * 20
        (d / "stat").write_text(f"{pid} (x y) {' '.join(fields)}\n")
        cmd = [b"/x/tritonserver", b"--metrics-port=8002"] if pid == 10 else [b"stub"]
        (d / "cmdline").write_bytes(b"\0".join(cmd) + b"\0")


def test_other_cores_are_machine_busy_time_less_triton_and_its_stubs(tmp_path):
    write(tmp_path, 0, 0, {10: (1, 0), 11: (10, 0), 99: (1, 0)})
    assert find_triton(8002, tmp_path) == 10
    s = CpuSampler(metrics_port=8002, proc=tmp_path)
    assert s.sample() is None  # the first sample only primes
    second = CORES * HZ  # one second of wall time on every core
    # the server and one stub took 0.5 s each, an unrelated process (99) a whole core-second
    write(tmp_path, 2 * HZ, second, {10: (1, HZ // 2), 11: (10, HZ // 2), 99: (1, HZ)})
    share = s.sample()
    assert abs(share.other_cores - 1.0) < 0.05 and abs(share.triton_cores - 1.0) < 0.05
    assert share.machine_cores == CORES


def test_no_local_triton_means_not_measured(tmp_path):
    write(tmp_path, 0, 0, {99: (1, 0)})
    s = CpuSampler(metrics_port=8002, proc=tmp_path)
    assert s.sample() is None and s.sample() is None
