"""The orchestrator against a real Triton under real open-loop load on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from loadtest.capacity import retry_blips
from loadtest.measure import StabilityRule, measure
from loadtest.openloop import OpenLoopLoad, constant
from orchestrator.loop import LoopOptions, Orchestrator
from orchestrator.metrics import Window
from orchestrator.policy import (
    FREE_VARIANT_SPEEDUP,
    Context,
    ControllerConfig,
    GuardConfig,
    Objective,
    VariantInfo,
    usable_cores,
    variants_from_manifest,
)
from tests.integration.conftest import ADMIN_KEY, start_server, triton_abort_is_inconclusive
from tritune.apply import Applier
from tritune.client import InferenceClient
from tritune.manifest import Manifest
from tritune.server import ServerOptions, TritonServer, free_port
from tritune.serving import ServingConfig

SLO_MS = 100.0
# The overload is set from the machine, not fixed: what the default config (1 instance, no batching) holds varies
# with the machine and with what else runs on it, and a fixed rate far above that leaves a backlog so deep that no
# config drains it within the test (every reload under it also risks Triton 2.51's abort). 1.1 × the default's
# closed-loop throughput at concurrency 8 is a first guess; on a busy machine the closed-loop clients themselves are
# slowed and the guess can fall below what the default holds open loop, so it is checked open loop and raised until
# the default misses the SLO clearly (p99 over 1.5 × the SLO): at the edge of the default's capacity one window
# misses and the next holds, and the test's premise — the default cannot hold this load — must be measured, not
# assumed. The guess can be several times too low (measured while another job held both cores, checked after it
# let go), so the raises reach ~5× it; they stop at the first clear miss, so from a low guess the load found is at
# most one raise (25%) beyond the default's edge.
OVERLOAD_FACTOR = 1.1
OVERLOAD_RAISE = 1.25
OVERLOAD_TRIES = 8
CLEAR_MISS = 1.5
LOAD_S, LOAD_AFTER_ACTION_S, LOAD_MAX_S = 40.0, 20.0, 90.0  # see load_until_acted_on


def overload_per_s(server: TritonServer, held_out) -> float:
    """A batch-1 rate the default config cannot hold on this machine now (checked open loop for 4 s)."""
    m = measure(
        server.grpc_url,
        "cnn",
        held_out[0],
        held_out[1],
        8,
        rule=StabilityRule(window_s=1.0, stable_windows=2, max_windows=4, warmup_s=0.5),
    )
    assert m.failures == 0 and m.throughput_infer_per_s > 0, m
    rate = OVERLOAD_FACTOR * m.throughput_infer_per_s
    for _ in range(OVERLOAD_TRIES):
        probe = OpenLoopLoad(server.grpc_url, "cnn", held_out[0], held_out[1]).run(4, constant(rate))
        OpenLoopLoad(server.grpc_url, "cnn", held_out[0]).run(3, constant(2))  # let what it queued drain
        w = probe.windows(4.0, SLO_MS)[0]
        if w["failures"] or (w["p99_ms"] or 0.0) > CLEAR_MISS * SLO_MS:
            return round(rate)
        rate *= OVERLOAD_RAISE
    raise AssertionError(f"the default config held {rate / OVERLOAD_RAISE:.0f}/s: no overload found to test with")


def load_until_acted_on(gen: OpenLoopLoad, rate_per_s: float, orch: Orchestrator):
    """Open-loop load at ``rate_per_s`` for ``LOAD_S``, and on until the orchestrator's first action has been in
    place for ``LOAD_AFTER_ACTION_S`` (``LOAD_MAX_S`` at most); the load's result and its start (monotonic s).

    The orchestrator logs an action once Triton has loaded it. A load is a Python-backend stub start and an ONNX
    Runtime session, and on a core another process keeps busy, beside the overloaded copy that serves until the
    switch, it took from 2 to 39 s. The test is about the controller's decisions: the time Triton takes to load
    what it chose must not eat the windows that judge them.
    """
    out = {}
    runner = threading.Thread(target=lambda: out.update(load=gen.run(LOAD_MAX_S, constant(rate_per_s))))
    start = time.monotonic()
    runner.start()
    acted_s = None
    while runner.is_alive():
        now = time.monotonic()
        if acted_s is None and any(r["event"] == "action" for r in orch.history):
            acted_s = now
        if now - start >= LOAD_S and acted_s is not None and now - acted_s >= LOAD_AFTER_ACTION_S:
            gen.stop()
        runner.join(timeout=0.2)
    return out["load"], start


def stalled(orchestrators: list[Orchestrator]):
    """For triton_abort_is_inconclusive: did an orchestrator of this test see Triton stop completing requests?"""
    return lambda: any(r["event"] == "triton-stalled" for o in orchestrators for r in o.history)


def make_orchestrator(server: TritonServer, repository, log_path, registry: list | None = None) -> Orchestrator:
    variants = variants_from_manifest(Manifest.read(repository))
    # Headroom off: from Triton's default the ladder itself must reach a config that holds the overload.
    ctx = Context(objective=Objective(SLO_MS, 0.0), variants=variants, cores=2, max_batch_size=64, headroom=False)
    options = LoopOptions(
        model="cnn",
        metrics_url=server.metrics_url,
        interval_s=0.5,
        max_backoff_s=2.0,
        decision_log=log_path,
        controller=ControllerConfig(guards=GuardConfig(upscale_delay_s=2, downscale_delay_s=120, cooldown_s=3)),
    )
    # gRPC: the orchestrator runs in its own thread and tritonclient.http (gevent) is bound to its creating thread.
    client = InferenceClient(server.grpc_url, "grpc", admin_key=ADMIN_KEY, timeout_s=120)
    orch = Orchestrator(Applier(client, "cnn"), ctx, options)
    if registry is not None:
        registry.append(orch)
    return orch


@pytest.fixture
def fresh_server(quick_repository, server_cache):
    srv = start_server(quick_repository, server_cache, ("cnn",))
    yield srv
    srv.stop()


@pytest.mark.flaky(reruns=5, only_rerun=["TritonAborted"])
def test_reaches_a_config_that_holds_the_slo_where_the_default_could_not(
    fresh_server, quick_repository, held_out, tmp_path
):
    orchestrators: list[Orchestrator] = []
    with triton_abort_is_inconclusive(fresh_server, stalled=stalled(orchestrators)):
        reaches_a_config_that_holds_the_slo(fresh_server, quick_repository, held_out, tmp_path, orchestrators)


def reaches_a_config_that_holds_the_slo(server, quick_repository, held_out, tmp_path, registry):
    orch = make_orchestrator(server, quick_repository, tmp_path / "decisions.jsonl", registry)
    assert orch.applier.current()[1] == ServingConfig("fp32")  # Triton's default: 1 instance, no batching
    overload = overload_per_s(server, held_out)
    loop = threading.Thread(target=orch.run, args=(LOAD_MAX_S + 5,))
    loop.start()
    load, load_start_s = load_until_acted_on(
        OpenLoopLoad(server.grpc_url, "cnn", held_out[0], held_out[1]), overload, orch
    )
    orch.stop()
    loop.join(timeout=30)

    windows = load.windows(5.0, SLO_MS)
    # The premise, the default config cannot hold this load, is measured open loop by overload_per_s. The load's
    # first 5-s window confirms it only where the default served all of it: an action is logged once its load has
    # returned (the new copy serves from then on), and at a 0.5-s tick the first can serve within that window (its
    # first windows may also read Triton's p99 summary, which still holds the probe's overload).
    first_served_s = min((r["t_s"] for r in orch.history if r["event"] == "action"), default=float("inf"))
    if first_served_s - load_start_s >= 5.0:
        assert windows[0]["slo_met"] is False, (overload, windows[0])
    rules = [r["rule"] for r in orch.history if r["event"] == "action"]
    p99s = [w["p99_ms"] for w in windows]
    assert any(w["slo_met"] for w in windows[1:]), (overload, rules, p99s)  # it got there under the load

    # The config it reached holds the same load on its own, the orchestrator stopped: judged inside the run above,
    # an action taken in its last seconds would be judged by its own reload. One 5-s window of three may miss: on
    # two shared cores the machine itself stalls ~300 ms now and then, static configs included (p99 counts every
    # request). Beside a busy neighbour the config reached can run its one free core 90-100% busy (the controller
    # holds `at-limit`), and a stall then tips a whole check over; a check that fails like a stall is run once more
    # by the capacity probes' rule (`loadtest.capacity.retry_blips`). A config that cannot hold the load fails both.
    def check_holds(rate_per_s: float):
        OpenLoopLoad(server.grpc_url, "cnn", held_out[0]).run(3, constant(2))  # drain what the run left queued
        check = OpenLoopLoad(server.grpc_url, "cnn", held_out[0], held_out[1]).run(15, constant(rate_per_s))
        windows = check.windows(5.0, SLO_MS)
        failed, held = check.summary()["failed"], sum(w["slo_met"] for w in windows)
        window_p99s = [w["p99_ms"] for w in windows]
        info = {"failed": failed, "held": held, "p99_ms": max(p or 0.0 for p in window_p99s), "p99s": window_p99s}
        return failed == 0 and held >= 2, info

    _, check = retry_blips(check_holds, SLO_MS)(overload)
    assert check["failed"] == 0, check
    assert check["held"] >= 2, (overload, rules, p99s, check)
    assert load.summary()["failed"] == 0
    records = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    actions = [r for r in records if r["event"] == "action"]
    # the first rung: a cheaper variant at no accuracy cost when the build has one, else dynamic batching
    assert actions and actions[0]["rule"] in (
        "free-faster-variant",
        "enable-dynamic-batching",
        "batch-and-add-instance",
    )
    for a in actions:  # every action says why, from which window, what changed
        window = a["window"]  # triggered by completed requests or by a backlog that completes none (a stall)
        assert a["before"] != a["after"] and (window["requests"] > 0 or window["pending_requests"] > 0)
        assert a["reason"]
    assert any(r["event"] == "verified" for r in records)
    live = Applier(orch.applier.client, "cnn").current()[1]
    assert live == orch.current and (live.dynamic_batching or live.variant != "fp32")


@pytest.mark.flaky(reruns=5, only_rerun=["TritonAborted"])
def test_survives_a_triton_restart_and_reapplies_the_last_good_config(
    quick_repository, server_cache, held_out, tmp_path
):
    servers: list[TritonServer] = []
    orchestrators: list[Orchestrator] = []
    with triton_abort_is_inconclusive(servers, stalled=stalled(orchestrators)):
        survives_a_triton_restart(servers, quick_repository, server_cache, held_out, tmp_path, orchestrators)


def survives_a_triton_restart(servers, quick_repository, server_cache, held_out, tmp_path, registry):
    srv = start_server(quick_repository, server_cache, ("cnn",))
    servers.append(srv)
    ports = {"http_port": srv.http_port, "grpc_port": srv.grpc_port, "metrics_port": srv.metrics_port}
    orch = make_orchestrator(srv, quick_repository, tmp_path / "decisions.jsonl", registry)
    overload = overload_per_s(srv, held_out)
    loop = threading.Thread(target=orch.run, args=(60,))
    loop.start()
    replacement = None
    try:
        OpenLoopLoad(srv.grpc_url, "cnn", held_out[0]).run(14, constant(overload))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            orch.state.pending is None and orch.state.last_good not in (None, ServingConfig("fp32"))
        ):
            time.sleep(0.5)
        good = orch.state.last_good
        assert good not in (None, ServingConfig("fp32")), [(r["event"], r.get("rule")) for r in orch.history]

        srv.stop()  # Triton dies mid-run ...
        time.sleep(3)
        replacement = TritonServer(
            ServerOptions(
                repository=quick_repository, models=("cnn",), admin_key=ADMIN_KEY, cache_dir=server_cache, **ports
            )
        )
        servers.append(replacement)
        replacement.start()  # ... and comes back with Triton's default config
        # The orchestrator polls every half second and may re-apply before this read (its log records the action only
        # once the apply returned), so the last good config is accepted too; the re-apply record is checked below.
        came_back_as = Applier(InferenceClient(replacement.http_url), "cnn").current()[1]
        assert came_back_as in (ServingConfig("fp32"), good), came_back_as
        OpenLoopLoad(replacement.grpc_url, "cnn", held_out[0]).run(6, constant(100))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            r["event"] == "action" and r["action"] == "reapply" for r in orch.history
        ):
            time.sleep(0.5)
    finally:
        orch.stop()
        loop.join(timeout=30)
        if replacement is not None:
            live = Applier(InferenceClient(replacement.http_url), "cnn").current()[1]
            replacement.stop()
        srv.stop()
    events = [r["event"] for r in orch.history]
    story = [(r["event"], r.get("rule"), r.get("error"), r.get("t_s")) for r in orch.history]
    # The outage shows as failed scrapes, or, when a load was in flight as Triton died (a change's, or the
    # standby's at a steady window), as that load failing and the replacement serving neither the old config nor
    # the new one.
    saw_outage = "triton-unreachable" in events and "triton-reachable-again" in events
    assert saw_outage or "apply-failed" in events or "standby-failed" in events, story
    reapply = next(r for r in orch.history if r["event"] == "action" and r["action"] == "reapply")
    assert reapply["rule"] == "triton-restarted" and reapply["after"] == good.describe()
    assert live == good and orch.state.restarts >= 1


def test_orchestrate_command_serves_its_metrics_and_logs_decisions(fresh_server, quick_repository, tmp_path):
    port = free_port()
    cores = os.cpu_count() or 1
    log = tmp_path / "decisions.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "console",
        "orchestrate",
        "--url",
        fresh_server.grpc_url,
        "--metrics-url",
        fresh_server.metrics_url,
        "--repository",
        str(quick_repository),
        "--slo-p99-ms",
        "80",
        "--interval-s",
        "0.5",
        "--duration-s",
        "6",
        "--metrics-port",
        str(port),
        "--decision-log",
        str(log),
    ]
    env = {**os.environ, "TRITUNE_ADMIN_KEY": ADMIN_KEY}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        text = ""
        deadline = time.monotonic() + 30
        # the SLO gauge is set at start, the config gauges once the first tick has read Triton's config
        while time.monotonic() < deadline and "tritune_config_instances " not in text:
            time.sleep(0.5)
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
        # With no traffic at all it takes one action: headroom (batching, one instance per core) and, in the same
        # reload, a switch to a variant that dominates fp32 (not significantly less accurate in the paired test,
        # ≥ 1.5× cheaper by the manifest) if the build has one: the quick build's int8 usually is.
        variants = variants_from_manifest(Manifest.read(quick_repository))
        fp32 = variants["fp32"]
        dominating = sorted(
            (v.latency_ms_b32, n)
            for n, v in variants.items()
            if v.not_worse_than(fp32) and v.latency_ms_b32 < fp32.latency_ms_b32 / FREE_VARIANT_SPEEDUP
        )
        served = [dominating[0][1]] if dominating else []
        assert "tritune_slo_p99_latency_ms 80.0" in text
        assert "tritune_config_instances 1.0" in text or "tritune_config_instances 2.0" in text, text
        assert any(f'tritune_config_variant{{variant="{v}"}} 1.0' in text for v in ["fp32", *served]), text
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped: 1 actions" in out, out
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0]["event"] == "start" and records[-1]["event"] == "stop"
    actions = [r for r in records if r["event"] == "action"]
    rule = "free-faster-variant" if served else "provision-headroom"
    assert [(a["rule"], a["after"]["variant"]) for a in actions] == [(rule, (served or ["fp32"])[0])]
    after = actions[0]["after"]
    # one instance per core the machine left Triton when it acted (all of them unless a neighbour keeps one busy)
    window = Window(start_s=0.0, end_s=1.0, cpu_other_cores=actions[0]["window"]["cpu_other_cores"])
    usable = usable_cores(Context(Objective(80.0), {"fp32": VariantInfo("fp32", "cnn_fp32", 1.0, 1.0)}, cores), window)
    assert after["dynamic_batching"] and after["instances"] == min(usable, 4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slo-p99-ms", "0"], "--slo-p99-ms must be > 0"),
        (["--accuracy-floor", "1.0"], "no variant reaches"),
        (["--interval-s", "-1"], "--interval-s must be > 0"),
    ],
)
def test_orchestrate_rejects_bad_options_in_one_line(fresh_server, quick_repository, args, message):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "console",
            "orchestrate",
            "--url",
            fresh_server.grpc_url,
            "--repository",
            str(quick_repository),
            "--metrics-port",
            "0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TRITUNE_ADMIN_KEY": ADMIN_KEY},
        check=False,
    )
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.strip().count("\n") == 0
