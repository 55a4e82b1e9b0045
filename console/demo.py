"""``tritune demo``: the main job in one command, on the embedded default (CPU, local Triton, bundled data).

build (if the repository has no manifest) → serve (behind the front door) → [sweep] → orchestrate under a Locust
step load, with the end-to-end p99 from the front door → report.

Everything it starts (Triton and its stubs, Locust and its workers, the orchestrator) is stopped at the end, on
an error and on Ctrl-C. The run folder keeps the Triton log, the decision log, Locust's CSV/HTML/JSON, the sweep
and ``report.html``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

from builders.build import QUICK_BUILD, BuildOptions
from loadtest.report import write_report
from loadtest.run import LoadTestOptions, answers, new_run_dir, run_locust
from loadtest.sweep_cli import SweepOptions
from orchestrator.cli import OrchestrateOptions
from tritune.compare import variant_ladder
from tritune.errors import ConfigError, RepositoryError, ServerError
from tritune.frontdoor import FrontDoor, FrontDoorSettings, Upstream
from tritune.manifest import Manifest
from tritune.server import ServerOptions, TritonServer, admin_key
from tritune.serving import ServingConfig

# Open loop, batch-8 requests/s: a base the most accurate level holds, a step beyond its capacity (the controller
# must step down the accuracy ladder) and a long base again (it must come back: Triton's p99 summaries lag by up to
# a minute, then the down delay). Batch 8 puts the load in the models' compute, where the ladder's rungs differ,
# at request rates Locust itself can send on two shared cores. The rates come from this machine: the capacity of
# the top level and of the fastest lower one, measured before the load (calibrated_shape), as the scenario
# benchmarks size their loads; fixed rates chosen on one machine were held by the top level on a faster one.
FULL_STEP_S, QUICK_STEP_S = 50, 15
BASE_SHARE = 0.4  # of the top level's capacity: held with room to spare (Locust and Caddy take CPU the probe did not)
STEP_FACTOR, STEP_BELOW = 1.6, 0.8  # the step: 1.6× the top level's capacity, at most 0.8× the fastest lower level's
DEMO_BATCH = 8
PROBE_S = 4.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="tiny build, 45 s of load, no sweep (CI, first look)")
    p.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="model repository; built here if it has no manifest (default: model_repository, "
        "or .cache/tritune/quick-repository with --quick)",
    )
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/tritune"), help="(default: %(default)s)")
    p.add_argument("--slo-p99-ms", type=float, default=50.0, help="p99 SLO the orchestrator keeps (default: 50)")
    p.add_argument(
        "--accuracy-floor",
        type=float,
        default=-1.0,
        help="lowest top-1 a served variant may have; -1: the whole accuracy ladder (the least accurate variant's "
        "top-1), so the controller may trade accuracy for capacity under load (default)",
    )
    p.add_argument("--batch-size", type=int, default=DEMO_BATCH, help="images per request (default: %(default)s)")
    p.add_argument(
        "--shape",
        default="",
        help="open-loop load shape in req/s (default: a step from 0.4× the top level's measured capacity to 1.6× it, "
        "at most 0.8× the fastest lower level's, and back)",
    )
    p.add_argument("--protocol", default="grpc", choices=("http", "grpc", "both"), help="(default: %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="Locust workers (0: one process) (default: 0)")
    p.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run a small sweep first (default: on, off with --quick)",
    )
    p.add_argument("--interval-s", type=float, default=0.5, help="orchestrator tick (default: %(default)s)")
    p.add_argument(
        "--front-door",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Locust through Caddy, whose histogram gives the orchestrator the end-to-end p99 (default: on)",
    )
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent of the run folder (default: %(default)s)")


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt  # SIGTERM gets the same orderly shutdown as Ctrl-C


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_repository(repository: Path, quick: bool, cache_dir: Path) -> Manifest:
    try:
        return Manifest.read(repository)
    except RepositoryError:
        pass
    from builders.build import build

    opts = replace(QUICK_BUILD if quick else BuildOptions(), repository=repository, cache_dir=cache_dir)
    _say(f"building the model repository {repository} ({'quick' if quick else 'full'}; checkpoints are cached)")
    return build(opts, log=lambda m: print(f"    {m}", flush=True))


# The demo's sweep: small enough for a first look, wide enough to show a frontier: each accuracy level's cheapest
# variant (what the policy would serve of it) × batching off/on, at two concurrencies, after the baseline.
DEMO_SWEEP = SweepOptions(variants="", instances="2", queue_delays_us="off,2000", concurrency="4,16")


def calibrated_shape(
    server: TritonServer,
    key: str,
    manifest: Manifest,
    floor: float,
    slo_ms: float,
    load: LoadTestOptions,
    run_dir: Path,
    quick: bool,
) -> tuple[str, dict]:
    """A step load from this machine's capacities, as Locust sends ``load`` (through the front door when it is
    on): the top level's and the fastest lower level's capacity within ``slo_ms`` (batching, one instance per
    core), then the served config put back. Returns the shape and what was measured."""
    from loadtest.capacity import Capacity, LocustProbe, capacity
    from tritune.apply import Applier
    from tritune.client import InferenceClient

    levels = variant_ladder(manifest.variants, floor)
    if len(levels) < 2:
        raise ConfigError(
            f"the accuracy floor {floor:.4f} leaves one accuracy level ({levels[0].cheapest if levels else 'none'}): "
            "there is no ladder to step down; lower --accuracy-floor or pass --shape"
        )
    top, fastest = levels[0], min(levels[1:], key=lambda lv: lv.cost)
    cores = os.cpu_count() or 1
    measured: dict[str, float] = {}
    with InferenceClient(server.grpc_url, "grpc", admin_key=key, timeout_s=120) as client:
        applier = Applier(client, manifest.public_model)
        _, served = applier.current()
        try:
            start = 200.0 / load.batch_size
            for lv in (top, fastest):
                config = ServingConfig(lv.cheapest, instances=cores, dynamic_batching=True, max_queue_delay_us=2000)
                result = applier.apply(config)
                if not result.ok:
                    raise ServerError(f"could not serve {lv.cheapest} to measure it: {result.error}")
                probe = LocustProbe(
                    load,
                    run_dir / f"capacity-{lv.cheapest}",
                    slo_ms,
                    seconds=PROBE_S / (2 if quick else 1),
                    tag=f"    capacity {lv.cheapest}: ",
                    log=lambda m: print(m, flush=True),
                )
                measured[lv.cheapest], _ = capacity(probe, slo_ms, start=start, max_rate=20000.0 / load.batch_size)
                start = max(start, measured[lv.cheapest])  # the next level down holds at least about as much
        finally:
            applier.apply(served)
    cap = Capacity((max(measured[top.cheapest], 1.0), max(measured[fastest.cheapest], 1.0)))
    base = round(BASE_SHARE * cap.level(0))
    step = round(cap.beyond_top(STEP_FACTOR, STEP_BELOW))
    note = ""
    if step <= cap.level(0):
        note = f"; {fastest.cheapest} holds no more than {top.cheapest} here, so the step needs no step down"
    values = f"{base}/{step}/{base}" if quick else f"{base}/{step}/{base}/{base}"
    shape = f"step:values={values},step_s={QUICK_STEP_S if quick else FULL_STEP_S}"
    return shape, {"capacity_req_per_s": measured, "base_req_per_s": base, "step_req_per_s": step, "note": note}


def ladder_variants(manifest: Manifest, floor: float) -> str:
    """The cheapest variant of each accuracy level at or above ``floor``, comma-separated."""
    return ",".join(lv.cheapest for lv in variant_ladder(manifest.variants, floor))


def run(args: argparse.Namespace) -> int:
    from orchestrator import cli as ocli

    if args.slo_p99_ms <= 0:
        raise ConfigError(f"--slo-p99-ms must be > 0, got {args.slo_p99_ms}")
    repository = args.repository or (args.cache_dir / "quick-repository" if args.quick else Path("model_repository"))
    shape = args.shape
    do_sweep = (not args.quick) if args.sweep is None else args.sweep
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    run_dir = new_run_dir(args.out, "demo-quick" if args.quick else "demo")
    _say(f"tritune demo → {run_dir}")
    server = orch = thread = door = None
    key_file = run_dir / "admin.key"
    try:
        manifest = ensure_repository(repository, args.quick, args.cache_dir)
        lowest = min((v.top1 for v in manifest.variants.values()), default=0.0)
        floor = lowest if args.accuracy_floor < 0 else args.accuracy_floor
        public = manifest.public_model
        _say(f"starting Triton on {repository} (model {public!r}, admin API restricted by a key)")
        server = TritonServer(
            ServerOptions(
                repository=repository,
                models=(public,),
                admin_key=admin_key(key_file),
                cache_dir=args.cache_dir,
                log_path=run_dir / "tritonserver.log",
            )
        ).start()
        _say(f"Triton ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics {server.metrics_url}")
        if args.front_door:
            door = FrontDoor(
                (Upstream("127.0.0.1", server.http_port, server.grpc_port),),
                FrontDoorSettings(http_port=0, grpc_port=0, metrics_port=0, admin_port=0),
                cache_dir=run_dir,
            ).start()
            _say(f"front door (Caddy) ready: HTTP {door.http_url}, gRPC {door.grpc_url}, metrics {door.metrics_url}")
        public_http, public_grpc = (door.http_url, door.grpc_url) if door else (server.http_url, server.grpc_url)
        sweep_result = None
        if do_sweep:
            from loadtest.sweep_cli import sweep

            _say("sweep: the default config first, then a small grid (offline search, Model Analyzer style)")
            sweep_result = sweep(
                replace(
                    DEMO_SWEEP,
                    repository=repository,
                    url=server.grpc_url,
                    http_url=server.http_url,
                    variants=ladder_variants(manifest, floor),
                    admin_key_file=key_file,
                    slo_p99_ms=args.slo_p99_ms,
                    accuracy_floor=floor,
                ),
                run_dir,
                progress=lambda m: print(f"    {m}", flush=True),
            )
        load = LoadTestOptions(
            http_url=public_http,
            grpc_url=public_grpc,
            protocol=args.protocol,
            model=public,
            batch_size=args.batch_size,
            shape=shape,
            open_loop=True,
            workers=args.workers,
            repository=repository,
        )
        if not shape:
            _say(
                f"measuring what this machine holds: Locust at batch {args.batch_size}"
                + (" through the front door" if door else "")
                + f", p99 ≤ {args.slo_p99_ms:g} ms"
            )
            shape, calibration = calibrated_shape(
                server, admin_key(key_file), manifest, floor, args.slo_p99_ms, load, run_dir, args.quick
            )
            load = replace(load, shape=shape)
            (run_dir / "calibration.json").write_text(json.dumps({**calibration, "shape": shape}, indent=2))
            _say(
                "capacities (req/s): "
                + ", ".join(f"{k} {v:.0f}" for k, v in calibration["capacity_req_per_s"].items())
                + f" → base {calibration['base_req_per_s']}, step {calibration['step_req_per_s']}{calibration['note']}"
            )
        decisions = run_dir / "decisions.jsonl"
        orch = ocli.build(
            OrchestrateOptions(
                repository=repository,
                url=server.grpc_url,
                metrics_url=server.metrics_url,
                admin_key_file=key_file,
                slo_p99_ms=args.slo_p99_ms,
                accuracy_floor=floor,
                interval_s=args.interval_s,
                decision_log=decisions,
                metrics_port=0,
                front_door_metrics_url=door.metrics_url if door else "",
                status_interval_s=0,  # the demo prints its own progress
            )
        )
        thread = threading.Thread(target=orch.run, name="orchestrator", daemon=True)
        thread.start()
        _say(f"orchestrator running: p99 ≤ {args.slo_p99_ms:g} ms, top-1 ≥ {floor:.4f}; decisions → {decisions}")
        _say(f"Locust ({args.protocol}, open loop, batch {args.batch_size}): {shape}")
        seen = {"n": 0}

        def progress(msg: str) -> None:
            acts = [r for r in orch.history if r["event"] in ("action", "apply-failed")]
            for a in acts[seen["n"] :]:
                print(f"    orchestrator: {a['event']} {a.get('rule')}: {a.get('reason')}", flush=True)
            seen["n"] = len(acts)
            cur = orch.current.describe() if orch.current else {}
            cfg = (
                f"{cur.get('variant')} ×{cur.get('instances')}, "
                + (f"batching {cur.get('max_queue_delay_us')} µs" if cur.get("dynamic_batching") else "no batching")
                if cur
                else "?"
            )
            print(f"    {msg}; serving {cfg}", flush=True)
            if server.proc is None or server.proc.poll() is not None:
                raise ServerError(f"tritonserver exited during the demo; see {server.log_path}")
            if door is not None and (door.proc is None or door.proc.poll() is not None):
                raise ServerError(f"the front door (caddy) exited during the demo; see {door.log_path}")

        result = run_locust(load, run_dir=run_dir, progress=progress)
    except KeyboardInterrupt:
        _say("interrupted: stopping everything")
        return 130
    finally:
        if orch:
            orch.stop()
        if thread:
            thread.join(10)
        if door:
            door.stop()
        if server:
            server.stop()
            _say("Triton stopped" + (" (and the front door)" if door else ""))
    report = write_report(
        run_dir,
        title=f"tritune demo: {public} under a step load, p99 SLO {args.slo_p99_ms:g} ms",
        slo_p99_ms=args.slo_p99_ms,
        decision_log=decisions,
        repository=repository,
        sweep=sweep_result,
        extra={"accuracy floor (top-1)": f"{floor:.4f}", "demo wall time": f"{time.monotonic() - started:.0f} s"},
    )
    windows = json.loads((run_dir / "windows.json").read_text())
    met = sum(1 for w in windows if w["slo_met"])
    s = result.summary
    summary = {
        "run_dir": str(run_dir),
        "report": str(report),
        "requests": s["requests"],
        "failures": s["failures"],
        "wrong_answers": s["wrong_answers"],
        "client_p99_ms": s.get("client_p99_ms"),
        "windows_meeting_slo": f"{met}/{len(windows)}",
        "actions": orch.state.actions,
        "rollbacks": orch.state.rollbacks,
        "final_config": orch.current.describe() if orch.current else None,
        "valid": result.valid,
        "wall_s": round(time.monotonic() - started, 1),
    }
    (run_dir / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    _say(
        f"done: {s['requests']} requests, {s['failures']} failed, {answers(s)}; "
        f"{met}/{len(windows)} 5-s windows met p99 ≤ {args.slo_p99_ms:g} ms; {orch.state.actions} actions, "
        f"{orch.state.rollbacks} rollbacks"
    )
    if not result.valid:
        _say(f"note: {result.invalid_reason}")
    _say(f"report: {report}")
    return 0 if s["failures"] == 0 else 1
