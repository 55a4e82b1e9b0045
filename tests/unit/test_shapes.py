"""Load shapes tick by tick: (users, spawn_rate) at each second, the end of each shape, and spec errors."""

from __future__ import annotations

import pytest

from loadtest.shapes import (
    ConstantShape,
    DiurnalShape,
    RampShape,
    ReplayShape,
    SpikeShape,
    StepShape,
    parse_shape,
)
from tritune.errors import ConfigError


def ticks(shape, seconds):
    return [shape.tick(t) for t in seconds]


def test_constant_holds_then_stops():
    s = parse_shape("constant:value=8,duration_s=3")
    assert s == ConstantShape(duration_s=3, value_=8)
    assert ticks(s, [0, 1, 2, 2.99, 3]) == [(8, 8.0)] * 4 + [None]


def test_ramp_rises_linearly():
    s = parse_shape("ramp:start=0,end=10,duration_s=10")
    assert isinstance(s, RampShape)
    assert [s.tick(t)[0] for t in range(10)] == list(range(10))
    assert s.tick(10) is None


def test_step_is_one_times_four_times_one_times():
    s = parse_shape("step:values=10/40/10,step_s=30")
    assert s == StepShape(duration_s=90, values=(10, 40, 10), step_s=30)
    assert [s.tick(t)[0] for t in (0, 29.9, 30, 59.9, 60, 89.9)] == [10, 10, 40, 40, 10, 10]
    assert s.tick(90) is None
    # spawn rate defaults to reaching the new count within a second; an explicit one is passed through
    assert s.tick(30) == (40, 40.0)
    assert s.tick(30, spawn_rate=5) == (40, 5.0)


def test_spike_only_inside_its_window():
    s = parse_shape("spike:base=5,peak=50,at_s=10,spike_s=5,duration_s=30")
    assert isinstance(s, SpikeShape)
    assert [s.tick(t)[0] for t in (0, 9.9, 10, 14.9, 15, 29)] == [5, 5, 50, 50, 5, 5]
    assert s.tick(30) is None


def test_diurnal_is_a_sine_between_low_and_high():
    s = parse_shape("diurnal:low=10,high=30,period_s=40,duration_s=80")
    assert isinstance(s, DiurnalShape)
    assert s.value(0) == pytest.approx(10)
    assert s.value(20) == pytest.approx(30)
    assert s.value(10) == pytest.approx(20)
    assert s.value(40) == pytest.approx(10)
    assert all(10 <= v <= 30 for _, v in s.timeline(0.5))
    assert s.tick(80) is None


def test_replay_reads_a_csv_trace_with_header_and_scales_it(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("t_s,value\n0,10\n5,40\n# a comment\n10,20\n")
    s = parse_shape(f"replay:path={trace},scale=2")
    assert isinstance(s, ReplayShape)
    assert s.duration_s == 15  # the last point holds for one more interval
    assert [s.tick(t)[0] for t in (0, 4.9, 5, 9.9, 10, 14.9)] == [20, 20, 80, 80, 40, 40]
    assert s.tick(15) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sawtooth:value=1", "unknown load shape 'sawtooth'"),
        ("constant:duration_s=10", "needs value="),
        ("constant:value=x", "is not a number"),
        ("constant:value=1,speed=3", "unknown key(s) speed"),
        ("step:values=1/a", "must be numbers joined by '/'"),
        ("ramp:end=5,duration_s=0", "duration_s must be > 0"),
        ("diurnal:low=1,high=2,period_s=0,duration_s=5", "period_s must be > 0"),
        ("replay:scale=2", "needs path="),
        ("replay:path=/nonexistent/trace.csv", "cannot read the replay trace"),
        ("constant:value", "is not key=value"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(ConfigError, match=None) as info:
        parse_shape(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_replay_rejects_times_that_do_not_increase(tmp_path):
    trace = tmp_path / "bad.csv"
    trace.write_text("0,10\n5,20\n5,30\n")
    with pytest.raises(ConfigError, match=r"bad.csv:3: times must increase"):
        parse_shape(f"replay:path={trace}")


def test_locust_shape_class_delegates_tick_to_the_shape():
    """The LoadTestShape in the locustfile, in a child process (importing Locust monkey-patches with gevent)."""
    import subprocess
    import sys

    code = (
        "import types\n"
        "from loadtest import locustfile as lf\n"
        "shape = lf.TrituneShape()\n"
        "opts = types.SimpleNamespace(load_shape='step:values=2/6,step_s=10', spawn_rate=0, num_users=None,"
        " open_loop=False, open_users=4)\n"
        "shape.runner = types.SimpleNamespace(environment=types.SimpleNamespace(parsed_options=opts))\n"
        "out = []\n"
        "for t in (0, 9.5, 10, 19.9, 20):\n"
        "    shape.get_run_time = lambda t=t: t\n"
        "    out.append(shape.tick())\n"
        "opts.open_loop = True\n"
        "shape.get_run_time = lambda: 12\n"
        "out.append(shape.tick())\n"
        "print(out)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[(2, 2.0), (2, 2.0), (6, 6.0), (6, 6.0), None, (4, 4.0)]"
