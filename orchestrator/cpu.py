"""How much CPU the machine's other processes take: machine busy time (/proc/stat) less Triton's own (its server
process and every descendant, i.e. the Python backend stubs, from /proc/<pid>/stat).

Triton's ``nv_cpu_utilization`` is machine-wide: it cannot tell Triton's own use from a neighbour's, and the cores
a neighbour keeps busy are not Triton's to give instances. Linux only, and only for a Triton on this host (found by
its ``--metrics-port``, or given by pid); elsewhere :meth:`CpuSampler.sample` returns None and the policy assumes
every configured core is Triton's.
"""

from __future__ import annotations

import os
import statistics
from collections import deque
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def machine_busy_s(proc: Path = PROC) -> tuple[float, float] | None:
    """(busy, total) CPU seconds since boot over all cores; busy excludes idle and iowait."""
    try:
        fields = (proc / "stat").read_text().splitlines()[0].split()
        ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, IndexError, ValueError):
        return None
    if len(ticks) < 8:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    total = sum(ticks)
    return (total - ticks[3] - ticks[4]) / hz, total / hz


def _stat(pid: int, proc: Path, reaped: bool = False) -> tuple[int, float] | None:
    """(ppid, CPU seconds) of one process: utime + stime, plus, with ``reaped``, the CPU time of its children it
    has already waited for (cutime + cstime: a stub that exited moves its time there). None for a process that
    vanished or a torn read."""
    try:
        text = (proc / str(pid) / "stat").read_text()
        rest = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        ticks = int(rest[11]) + int(rest[12]) + ((int(rest[13]) + int(rest[14])) if reaped else 0)
        return int(rest[1]), ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def find_triton(metrics_port: int, proc: Path = PROC) -> int | None:
    """The pid of the local tritonserver serving metrics on ``metrics_port``."""
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"tritonserver") and f"--metrics-port={metrics_port}".encode() in args:
            return int(d.name)
    return None


def tree_cpu_s(root: int, proc: Path = PROC) -> dict[int, float]:
    """CPU seconds of ``root`` and each of its descendants, by pid."""
    stats: dict[int, tuple[int, float]] = {}
    for d in proc.iterdir():
        if d.name.isdigit() and (s := _stat(int(d.name), proc, reaped=int(d.name) == root)) is not None:
            stats[int(d.name)] = s
    out, frontier = {}, {root}
    while frontier:
        out.update({p: stats[p][1] for p in frontier if p in stats})
        frontier = {p for p, (ppid, _) in stats.items() if ppid in frontier and p not in out}
    return out


@dataclass(frozen=True)
class CpuShare:
    """Cores used over one window: by everything else on the machine, and by Triton's server and stubs."""

    other_cores: float  # the median of the last few windows (see CpuSampler)
    triton_cores: float  # this window's
    machine_cores: int  # the machine's: other_cores is a share of these, not of --cores


class CpuSampler:
    """Cores the other processes took between two samples, as the median of the last ``keep`` windows (one
    window alone is noisy, and one right after a reload misses the CPU of the stubs that exited in it), and the
    cores Triton itself used in this window."""

    def __init__(self, metrics_port: int | None = None, pid: int | None = None, keep: int = 5, proc: Path = PROC):
        self.metrics_port, self.pid, self.proc = metrics_port, pid, proc
        self._prev: tuple[float, float, dict[int, float]] | None = None
        self._recent: deque[float] = deque(maxlen=keep)

    def sample(self) -> CpuShare | None:
        machine = machine_busy_s(self.proc)
        if machine is None:
            return None
        if self.pid is None or not (self.proc / str(self.pid)).exists():
            self.pid = find_triton(self.metrics_port, self.proc) if self.metrics_port else None
            self._prev = None
            if self.pid is None:
                return None
        tree = tree_cpu_s(self.pid, self.proc)
        prev, self._prev = self._prev, (*machine, tree)
        if prev is None:
            return None
        busy0, total0, tree0 = prev
        wall_cores_s = machine[1] - total0  # core-seconds elapsed (all cores)
        if wall_cores_s <= 0:
            return None
        # Triton's own time: the growth of each process seen twice, and all of one that started in between.
        triton = sum(t - tree0.get(p, 0.0) for p, t in tree.items())
        wall_s = wall_cores_s / (os.cpu_count() or 1)
        other = max(0.0, (machine[0] - busy0) - triton) / wall_s
        self._recent.append(other)
        return CpuShare(
            other_cores=statistics.median(self._recent),
            triton_cores=max(0.0, triton) / wall_s,
            machine_cores=os.cpu_count() or 1,
        )
