"""Load shapes as data: each maps seconds since the start to a target (users in closed loop, requests/s in open loop).

Pure Python, no Locust import (importing Locust monkey-patches the process with gevent), so the orchestrator,
the sweep and the tests can use the same shapes. ``loadtest/locustfile.py`` wraps the chosen shape in a Locust
``LoadTestShape`` whose ``tick()`` returns ``(users, spawn_rate)``; the open-loop load generator calls
:meth:`Shape.value` directly.

Shapes are chosen on the command line with a compact spec, ``KIND:key=value,...``::

    constant:value=20,duration_s=60
    ramp:start=1,end=40,duration_s=120
    step:values=10/40/10,step_s=30
    spike:base=10,peak=60,at_s=30,spike_s=10,duration_s=90
    diurnal:low=5,high=40,period_s=120,duration_s=240
    replay:path=trace.csv,scale=1.0         (CSV columns: t_s,value — a header row is allowed)
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, fields
from pathlib import Path

from tritune.errors import ConfigError


@dataclass(frozen=True)
class Shape:
    """Base: ``value(t_s)`` is the target at ``t_s``; ``None`` once the shape is over."""

    duration_s: float

    def value(self, t_s: float) -> float | None:
        raise NotImplementedError

    def tick(self, t_s: float, spawn_rate: float | None = None) -> tuple[int, float] | None:
        """Locust's contract: ``(users, spawn_rate)`` at ``t_s``, or ``None`` to stop the run.

        The spawn rate defaults to reaching the new user count within one second, so steps and spikes are steps.
        """
        v = self.value(t_s)
        if v is None:
            return None
        users = max(0, round(v))
        return users, float(spawn_rate) if spawn_rate else float(max(users, 1))

    def _check(self) -> None:
        if not self.duration_s > 0:
            raise ConfigError(f"{self.kind} shape: duration_s must be > 0, got {self.duration_s}")

    @property
    def kind(self) -> str:
        return type(self).__name__.removesuffix("Shape").lower()

    def describe(self) -> str:
        return f"{self.kind}(" + ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self)) + ")"

    def timeline(self, step_s: float = 1.0) -> list[tuple[float, float]]:
        """(t_s, value) every ``step_s`` over the whole shape: for plots and reports."""
        out, t = [], 0.0
        while t < self.duration_s:
            out.append((round(t, 6), float(self.value(t))))
            t += step_s
        return out


@dataclass(frozen=True)
class ConstantShape(Shape):
    value_: float = 1.0

    def value(self, t_s):
        return None if t_s >= self.duration_s else self.value_


@dataclass(frozen=True)
class RampShape(Shape):
    start: float = 1.0
    end: float = 10.0

    def value(self, t_s):
        if t_s >= self.duration_s:
            return None
        return self.start + (self.end - self.start) * t_s / self.duration_s


@dataclass(frozen=True)
class StepShape(Shape):
    """``values`` held ``step_s`` each, in order: a 1× → 4× → 1× step load is ``values=(10, 40, 10)``."""

    values: tuple[float, ...] = (1.0,)
    step_s: float = 30.0

    def value(self, t_s):
        if t_s >= self.duration_s or t_s < 0:
            return None
        return self.values[min(int(t_s // self.step_s), len(self.values) - 1)]


@dataclass(frozen=True)
class SpikeShape(Shape):
    base: float = 1.0
    peak: float = 10.0
    at_s: float = 30.0
    spike_s: float = 10.0

    def value(self, t_s):
        if t_s >= self.duration_s:
            return None
        return self.peak if self.at_s <= t_s < self.at_s + self.spike_s else self.base


@dataclass(frozen=True)
class DiurnalShape(Shape):
    """A day compressed into ``period_s``: a sine between ``low`` and ``high``, starting at ``low``."""

    low: float = 1.0
    high: float = 10.0
    period_s: float = 120.0

    def value(self, t_s):
        if t_s >= self.duration_s:
            return None
        phase = 2 * math.pi * t_s / self.period_s
        return self.low + (self.high - self.low) * (1 - math.cos(phase)) / 2


@dataclass(frozen=True)
class ReplayShape(Shape):
    """A recorded trace: piecewise constant between the CSV's ``t_s`` points, times ``scale``."""

    points: tuple[tuple[float, float], ...] = ()
    scale: float = 1.0

    def value(self, t_s):
        if t_s >= self.duration_s or not self.points:
            return None
        current = self.points[0][1]
        for t, v in self.points:
            if t > t_s:
                break
            current = v
        return current * self.scale


def read_trace(path: Path | str) -> tuple[tuple[float, float], ...]:
    """``t_s,value`` rows (a non-numeric first row is taken as a header), times strictly increasing, values >= 0."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the replay trace {path}: {exc.strerror}; pass path=<CSV with t_s,value>"
        ) from None
    points: list[tuple[float, float]] = []
    for n, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        try:
            t, v = float(row[0]), float(row[1])
        except (ValueError, IndexError):
            if not points and n == 1:
                continue  # header
            raise ConfigError(f"{path}:{n}: expected 't_s,value' numbers, got {','.join(row)!r}") from None
        if v < 0 or (points and t <= points[-1][0]):
            raise ConfigError(f"{path}:{n}: times must increase and values be >= 0 (got t={t}, value={v})")
        points.append((t, v))
    if not points:
        raise ConfigError(f"{path} holds no 't_s,value' rows; a replay trace needs at least one")
    return tuple(points)


_KINDS = ("constant", "ramp", "step", "spike", "diurnal", "replay")


def parse_shape(spec: str) -> Shape:
    """Build a shape from ``KIND:key=value,...`` (see the module docstring); errors say what is accepted."""
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in _KINDS:
        raise ConfigError(f"unknown load shape {kind!r} in {spec!r}; choose one of {', '.join(_KINDS)}")
    kv: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, val = part.partition("=")
        if not eq:
            raise ConfigError(f"load shape {spec!r}: {part!r} is not key=value")
        kv[key.strip()] = val.strip()

    def num(key: str, default: float | None = None) -> float:
        if key not in kv:
            if default is None:
                raise ConfigError(f"load shape {kind!r} needs {key}=…; e.g. {_EXAMPLES[kind]}")
            return default
        raw = kv.pop(key)
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"load shape {kind!r}: {key}={raw!r} is not a number") from None

    if kind == "constant":
        shape: Shape = ConstantShape(duration_s=num("duration_s", 60), value_=num("value"))
    elif kind == "ramp":
        shape = RampShape(duration_s=num("duration_s", 60), start=num("start", 1), end=num("end"))
    elif kind == "step":
        raw = kv.pop("values", "")
        try:
            values = tuple(float(x) for x in raw.split("/") if x)
        except ValueError:
            raise ConfigError(
                f"load shape 'step': values={raw!r} must be numbers joined by '/', e.g. 10/40/10"
            ) from None
        if not values:
            raise ConfigError(f"load shape 'step' needs values=…; e.g. {_EXAMPLES['step']}")
        step_s = num("step_s", 30)
        shape = StepShape(duration_s=num("duration_s", step_s * len(values)), values=values, step_s=step_s)
    elif kind == "spike":
        shape = SpikeShape(
            duration_s=num("duration_s", 90),
            base=num("base"),
            peak=num("peak"),
            at_s=num("at_s", 30),
            spike_s=num("spike_s", 10),
        )
    elif kind == "diurnal":
        period = num("period_s", 120)
        shape = DiurnalShape(duration_s=num("duration_s", period), low=num("low"), high=num("high"), period_s=period)
    else:
        if "path" not in kv:
            raise ConfigError(f"load shape 'replay' needs path=…; e.g. {_EXAMPLES['replay']}")
        points = read_trace(kv.pop("path"))
        last_t = points[-1][0]
        # The last point holds for one more interval (or 1 s for a single point) unless a duration is given.
        tail = last_t - points[-2][0] if len(points) > 1 else 1.0
        shape = ReplayShape(duration_s=num("duration_s", last_t + tail), points=points, scale=num("scale", 1.0))
    if kv:
        raise ConfigError(f"load shape {kind!r}: unknown key(s) {', '.join(sorted(kv))}; e.g. {_EXAMPLES[kind]}")
    shape._check()
    for name in ("step_s", "period_s", "spike_s"):
        if hasattr(shape, name) and not getattr(shape, name) > 0:
            raise ConfigError(f"load shape {kind!r}: {name} must be > 0")
    return shape


_EXAMPLES = {
    "constant": "constant:value=20,duration_s=60",
    "ramp": "ramp:start=1,end=40,duration_s=120",
    "step": "step:values=10/40/10,step_s=30",
    "spike": "spike:base=10,peak=60,at_s=30,spike_s=10,duration_s=90",
    "diurnal": "diurnal:low=5,high=40,period_s=120,duration_s=240",
    "replay": "replay:path=trace.csv,scale=1.0",
}
