"""tritune beside the field's own tools, on one model and one machine, in one run. Prints JSON and writes
``docs/results/peers.json`` (docs/benchmarks.md#peers). Needs ``make peers`` (perf_analyzer, Model Analyzer,
HAProxy, nginx).

    python bench/peers.py --repeats 3

Every part serves the public model ``cnn`` at the manifest's most accurate variant from Tritons of its own, and
judges p99 against ``--slo-ms``.

1. generators: perf_analyzer and tritune's own generators on the same configs (the default; dynamic batching with
   one instance per core), at fixed request rates (open loop: ``loadtest/openloop.py``) and at fixed concurrency
   (closed loop: ``loadtest/measure.py``, what ``tritune sweep`` measures with). Both speak gRPC. Throughput and
   p99 of each, their ratio, and each generator's CPU (cores, and share of the machine: on 2 cores a client's own
   cost comes out of the server's).
2. front door: perf_analyzer at fixed rates (p50, p99) and at a saturating concurrency (throughput), direct and
   through each proxy: Caddy as tritune runs it, Caddy with ``GOMAXPROCS=1``, HAProxy 2.6 (h2 to the upstream) and
   nginx 1.22 (``grpc_pass``), with each proxy's CPU and Triton's.
3. search against search: Model Analyzer's quick and brute searches (remote mode, on a Triton of their own whose
   model-repository API is open on loopback: Model Analyzer cannot send the admin key), ``tritune sweep`` with the
   same caps, and ``tritune orchestrate`` live under a constant open-loop load at the highest rate Model Analyzer's
   best config holds. Per arm: wall time, configs measured, its best config; then every best config measured
   again by one perf_analyzer sweep over concurrency (one yardstick).

Arms of parts 1 and 2 alternate within each repeat, so drift of the shared machine falls on all of them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from bench.common import KEY, Bench, converged_after_s, median, meets_slo, search_below
from loadtest.measure import StabilityRule, measure
from loadtest.openloop import OpenLoopLoad, constant
from tritune.apply import model_config, serving_config
from tritune.client import InferenceClient
from tritune.frontdoor import FrontDoor, FrontDoorSettings, Upstream, find_caddy
from tritune.manifest import Manifest
from tritune.server import ServerOptions, TritonServer, free_ports
from tritune.serving import ServingConfig

ROOT = Path(__file__).resolve().parents[1]
MODEL = "cnn"
CORES = os.cpu_count() or 1


class PeersError(Exception):
    """A tool is missing or failed; the message says what to run."""


# -- the tools ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tools:
    perf_analyzer: Path
    model_analyzer: Path
    haproxy: Path | None
    nginx: Path | None

    @classmethod
    def find(cls, peers: Path) -> Tools:
        pa, ma = peers / "bin" / "perf_analyzer", peers / "bin" / "model-analyzer"
        missing = [str(p) for p in (pa, ma) if not os.access(p, os.X_OK)]
        if missing:
            raise PeersError(f"{', '.join(missing)} missing: run `make peers` (installs perf_analyzer, Model Analyzer)")

        def which(name: str) -> Path | None:
            found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
            return Path(found) if found else None

        return cls(pa, ma, which("haproxy"), which("nginx"))

    def versions(self) -> dict:
        def out(cmd: list[str]) -> str:
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
                return (r.stdout + r.stderr).strip().splitlines()[-1] if (r.stdout + r.stderr).strip() else ""
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"unknown ({exc})"

        return {
            "perf_analyzer": out([str(self.perf_analyzer), "--version"]),
            "model_analyzer": out([str(self.model_analyzer), "--version"]),
            "caddy": out([str(find_caddy()), "version"]).split()[0],
            "haproxy": _first_line([str(self.haproxy), "-v"]) if self.haproxy else None,
            "nginx": out([str(self.nginx), "-v"]) if self.nginx else None,
        }


def _first_line(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return (r.stdout + r.stderr).strip().splitlines()[0]


# -- CPU accounting -------------------------------------------------------------------------------------------------
def group_cpu_s(pgid: int) -> float:
    """CPU seconds of the live processes in a process group (a Triton and its Python-backend stubs, a proxy)."""
    total = 0.0
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                t = p.cpu_times()
                total += t.user + t.system
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return total


@contextlib.contextmanager
def cpu_meter(groups: dict[str, int]):
    """Cores used over the block by each named process group, and by this process (the in-process generators)."""
    before = {k: group_cpu_s(g) for k, g in groups.items()}
    own0, wall0 = time.process_time(), time.perf_counter()
    out: dict = {}
    yield out
    wall = max(time.perf_counter() - wall0, 1e-9)
    for k, g in groups.items():
        out[k] = round((group_cpu_s(g) - before[k]) / wall, 3)
    out["this_process"] = round((time.process_time() - own0) / wall, 3)


# -- perf_analyzer --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaSettings:
    measurement_interval_ms: int = 4000
    protocol: str = "grpc"


def perf_analyzer(
    tools: Tools,
    url: str,
    s: PaSettings,
    *,
    rate: float | None = None,
    concurrency: int | None = None,
    model: str = MODEL,
    extra: tuple[str, ...] = (),
) -> dict:
    """One perf_analyzer run at one load level: three windows of ``measurement_interval_ms`` taken as they come
    (``-s`` wide enough that the first three count, as our generators' fixed spans do). Returns throughput
    (infer/s), p50/p99 (ms), and perf_analyzer's own CPU (its wall time includes its start)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "pa.csv"
        cmd = [str(tools.perf_analyzer), "-m", model, "-u", url, "-i", s.protocol, "--measurement-interval",
               str(s.measurement_interval_ms), "-s", "1000", "-f", str(report), *extra]  # fmt: skip
        if rate is not None:
            cmd += ["--request-rate-range", f"{rate:g}"]
        elif concurrency is not None:
            cmd += ["--concurrency-range", str(concurrency)]
        ru0, wall0 = os.times(), time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        ru1, wall = os.times(), time.perf_counter() - wall0
        cpu = (ru1.children_user - ru0.children_user) + (ru1.children_system - ru0.children_system)
        if r.returncode != 0 or not report.exists():
            tail = " | ".join((r.stdout + r.stderr).strip().splitlines()[-4:])
            return {"ok": False, "error": f"perf_analyzer exit {r.returncode}: {tail[-400:]}", "command": _cmd(cmd)}
        rows = list(csv.DictReader(report.open()))
    row = rows[-1]
    us = lambda k: round(float(row[k]) / 1000, 3)  # noqa: E731 - perf_analyzer reports µs
    return {
        "ok": True,
        "throughput_per_s": round(float(row["Inferences/Second"]), 1),
        "p50_ms": us("p50 latency"),
        "p99_ms": us("p99 latency"),
        "generator_cores": round(cpu / wall, 3),
        "command": _cmd(cmd),
    }


def _cmd(cmd: list[str]) -> str:
    return " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd) if not c.endswith("pa.csv"))


# -- the served model -----------------------------------------------------------------------------------------------
def most_accurate(manifest: Manifest) -> str:
    order = list(manifest.variants)
    return max(order, key=lambda v: (float(manifest.variants[v].top1), -order.index(v)))


def install(server: TritonServer, config: ServingConfig, max_batch_size: int | None = None) -> None:
    """Serve ``config`` on the public model, with Model Analyzer's extra knob when given."""
    with InferenceClient(server.grpc_url, "grpc", admin_key=KEY, timeout_s=120) as client:
        base = client.model_config(MODEL)
        new = model_config(base, config)
        if max_batch_size is not None:
            new = replace(new, max_batch_size=max_batch_size)
            if new.dynamic_batching is not None and new.dynamic_batching.preferred_batch_size:
                kept = tuple(b for b in new.dynamic_batching.preferred_batch_size if b <= max_batch_size)
                new = replace(new, dynamic_batching=replace(new.dynamic_batching, preferred_batch_size=kept))
        client.load(MODEL, config=new)
        live = client.model_config(MODEL)
    if serving_config(live) != config or (max_batch_size is not None and live.max_batch_size != max_batch_size):
        raise PeersError(f"Triton serves {serving_config(live).describe()}, not {config.describe()}")


@contextlib.contextmanager
def server_for(bench: Bench, tag: str, config: ServingConfig, max_batch_size: int | None = None):
    """A fresh Triton serving ``config``; stopped on leaving."""
    with bench.server(tag) as server:
        install(server, config, max_batch_size)
        yield server


# -- part 1: our generators against perf_analyzer -------------------------------------------------------------------
def _url(server: TritonServer, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


def ours_open_loop(
    bench: Bench, server: TritonServer, protocol: str, rate: float, seconds: float, skip_s: float
) -> dict:
    """``loadtest/openloop.py`` at a constant rate. Its p99 runs from each request's scheduled time, so it counts the
    loop's own timer slack (asyncio sleeps to the millisecond epoll rounds up to); perf_analyzer times from its
    send, and so is the figure compared with it (``p99_ms``); the scheduled-time p99 is kept beside it."""
    load = OpenLoopLoad(_url(server, protocol), MODEL, bench.images, bench.labels, protocol=protocol)
    result = load.run(seconds, constant(rate))
    s = result.summary(skip_s=skip_s)
    return {
        "ok": s["failed"] == 0,
        "throughput_per_s": s["throughput_per_s"],
        "p50_ms": s["p50_from_send_ms"],
        "p99_ms": s["p99_from_send_ms"],
        "p50_from_schedule_ms": s["p50_ms"],
        "p99_from_schedule_ms": s["p99_ms"],
        "generator_cores": round(result.generator.cpu_core_share, 3) if result.generator else None,
        "send_lag_p50_ms": result.generator.send_lag_p50_ms if result.generator else None,
        "send_lag_p99_ms": result.generator.send_lag_p99_ms if result.generator else None,
        "invalid_because": result.generator.invalid_because if result.generator else None,
    }


def ours_closed_loop(bench: Bench, server: TritonServer, protocol: str, concurrency: int, window_s: float) -> dict:
    """``loadtest/measure.py`` (what ``tritune sweep`` measures with) at a fixed concurrency: three windows."""
    rule = StabilityRule(window_s=window_s, stable_windows=3, tolerance=10.0, max_windows=3, warmup_s=1.0)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    m = measure(_url(server, protocol), MODEL, bench.images, bench.labels, concurrency, rule=rule, protocol=protocol)
    cores = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
    return {
        "ok": m.failures == 0,
        "throughput_per_s": round(m.throughput_infer_per_s, 1),
        "p50_ms": round(m.p50_ms, 3),
        "p99_ms": round(m.p99_ms, 3),
        "generator_cores": round(cores, 3),
    }


def part_generators(bench: Bench, tools: Tools, args, variant: str, _so_far: dict) -> dict:
    """Both configs over HTTP (the transport the benchmarks and ``tritune sweep`` measure with), and the default
    config over gRPC too (Python's gRPC client is the costly one)."""
    configs = {
        "default": (ServingConfig(variant=variant), ("http", "grpc")),
        "batching": (
            ServingConfig(variant=variant, instances=CORES, dynamic_batching=True, max_queue_delay_us=1000),
            ("http",),
        ),
    }
    seconds = 3 * args.window_s + args.skip_s
    levels = [("rate", r) for r in args.rates] + [("concurrency", c) for c in args.concurrency]
    runs: dict[str, list] = {}
    for name, (config, protocols) in configs.items():
        with server_for(bench, f"gen-{name}", config) as server:
            ours_open_loop(bench, server, "http", args.rates[0], 3, 0)  # warm the sessions
            for rep in range(args.repeats):
                for protocol in protocols:
                    pa = PaSettings(measurement_interval_ms=int(args.window_s * 1000), protocol=protocol)
                    for kind, level in levels:
                        key = f"{name}/{protocol}/{kind}={level:g}"
                        groups = {"triton": server.proc.pid}
                        row = {}
                        for gen in ("perf_analyzer", "tritune") if rep % 2 == 0 else ("tritune", "perf_analyzer"):
                            with cpu_meter(groups) as cpu:
                                if gen == "perf_analyzer":
                                    kw = {"rate": level} if kind == "rate" else {"concurrency": int(level)}
                                    fig = perf_analyzer(tools, _url(server, protocol), pa, **kw)
                                elif kind == "rate":
                                    fig = ours_open_loop(bench, server, protocol, level, seconds, args.skip_s)
                                else:
                                    fig = ours_closed_loop(bench, server, protocol, int(level), args.window_s)
                            fig["triton_cores"] = cpu["triton"]
                            row[gen] = fig
                        runs.setdefault(key, []).append(row)
                        print(f"peers: generators {key} rep {rep}: " + json.dumps(_brief(row)), file=sys.stderr)
    return {
        "configs": {k: c.describe() for k, (c, _) in configs.items()},
        "points": _agreement(runs),
        "runs": runs,
    }


def _brief(row: dict) -> dict:
    return {
        g: {k: f.get(k) for k in ("throughput_per_s", "p99_ms", "generator_cores", "error")} for g, f in row.items()
    }


def _agreement(runs: dict[str, list]) -> dict:
    out = {}
    for key, rows in runs.items():
        med = {}
        for gen in ("perf_analyzer", "tritune"):
            figs = [r[gen] for r in rows if r[gen].get("ok")]
            med[gen] = {
                k: median([f.get(k) for f in figs])
                for k in (
                    "throughput_per_s",
                    "p50_ms",
                    "p99_ms",
                    "generator_cores",
                    "triton_cores",
                    "p99_from_schedule_ms",
                    "send_lag_p50_ms",
                )
            } | {"runs_ok": len(figs), "runs": len(rows)}
            p99s = [f["p99_ms"] for f in figs if f.get("p99_ms") is not None]
            med[gen]["p99_range_ms"] = [min(p99s), max(p99s)] if p99s else None
        ratio = {}
        for k in ("throughput_per_s", "p99_ms"):
            a, b = med["tritune"][k], med["perf_analyzer"][k]
            ratio[k] = round(a / b, 3) if a and b else None
        med["tritune_over_perf_analyzer"] = ratio
        med["within_10pct"] = all(r is not None and abs(r - 1) <= 0.10 for r in ratio.values())
        # A p99 of a few milliseconds from three 9-s runs moves by more than 10% between one tool's own repeats;
        # the tools disagree only where the ranges of their repeats do not overlap.
        ranges = med["tritune"]["p99_range_ms"], med["perf_analyzer"]["p99_range_ms"]
        overlap = None not in ranges and ranges[0][0] <= ranges[1][1] and ranges[1][0] <= ranges[0][1]
        t = ratio["throughput_per_s"]
        med["agree"] = t is not None and abs(t - 1) <= 0.10 and (med["within_10pct"] or overlap)
        out[key] = med
    return out


# -- part 2: the front door -----------------------------------------------------------------------------------------
class Proxy:
    """A proxy child in its own process group, from a generated config; ``grpc_url`` is where clients dial."""

    name = "proxy"

    def __init__(self, workdir: Path, binary: Path | None = None, upstream: str = ""):
        self.workdir, self.binary, self.upstream = workdir, binary, upstream
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.proc: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> Proxy:
        log = open(self.workdir / f"{self.name}.log", "w")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PeersError(
                    f"{self.name} exited at start: {(self.workdir / f'{self.name}.log').read_text()[-400:]}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return self
            time.sleep(0.1)
        raise PeersError(f"{self.name} did not listen on {self.port} within 20 s")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


class HAProxy(Proxy):
    name = "haproxy"

    def command(self) -> list[str]:
        # h2 on both sides: gRPC end to end, one multiplexed upstream connection pool; no logging.
        conf = textwrap.dedent(f"""\
            global
                nbthread {CORES}
            defaults
                mode http
                timeout connect 5s
                timeout client 120s
                timeout server 120s
            frontend grpc_in
                bind 127.0.0.1:{self.port} proto h2
                default_backend triton
            backend triton
                server replica {self.upstream} proto h2
            """)
        path = self.workdir / "haproxy.cfg"
        path.write_text(conf)
        return [str(self.binary), "-db", "-f", str(path)]


class Nginx(Proxy):
    name = "nginx"

    def command(self) -> list[str]:
        w = self.workdir
        conf = textwrap.dedent(f"""\
            daemon off;
            worker_processes {CORES};
            pid {w}/nginx.pid;
            error_log {w}/nginx-error.log warn;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                client_body_temp_path {w}/body;
                proxy_temp_path {w}/proxy;
                fastcgi_temp_path {w}/fastcgi;
                uwsgi_temp_path {w}/uwsgi;
                scgi_temp_path {w}/scgi;
                upstream triton {{ server {self.upstream}; keepalive 64; }}
                server {{
                    listen 127.0.0.1:{self.port} http2;
                    location / {{ grpc_pass grpc://triton; }}
                }}
            }}
            """)
        path = w / "nginx.conf"
        path.write_text(conf)
        return [str(self.binary), "-p", str(w), "-c", str(path)]


class CaddyProxy(Proxy):
    """tritune's own front door (tritune/frontdoor.py), optionally with Go runtime settings."""

    def __init__(self, workdir: Path, server: TritonServer, name: str, env: dict[str, str] | None = None):
        super().__init__(workdir)
        self.name, self.env = name, env or {}
        self.door = FrontDoor(
            upstreams=(Upstream("127.0.0.1", server.http_port, server.grpc_port),),
            settings=FrontDoorSettings(http_port=0, grpc_port=0, metrics_port=0, admin_port=0, health_model=MODEL),
            cache_dir=workdir,
        )

    @property
    def grpc_url(self) -> str:
        return self.door.grpc_url

    def __enter__(self) -> CaddyProxy:
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            self.door.start()
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        self.proc = self.door.proc
        return self

    def __exit__(self, *exc) -> None:
        self.door.stop()


def part_front_door(bench: Bench, tools: Tools, args, variant: str, _so_far: dict) -> dict:
    config = ServingConfig(variant=variant)
    pa = PaSettings(measurement_interval_ms=int(args.window_s * 1000))
    points = [("rate", r) for r in args.door_rates] + [("concurrency", args.door_concurrency)]
    runs: dict[str, dict[str, list]] = {}
    with server_for(bench, "door", config) as server:
        upstream = server.grpc_url
        work = bench.runs_dir / "proxies"
        arms: dict[str, contextlib.AbstractContextManager | None] = {
            "direct": None,
            "caddy": lambda: CaddyProxy(work / "caddy", server, "caddy"),
            "caddy_gomaxprocs1": lambda: CaddyProxy(work / "caddy1", server, "caddy_gomaxprocs1", {"GOMAXPROCS": "1"}),
        }
        if tools.haproxy:
            arms["haproxy"] = lambda: HAProxy(work / "haproxy", tools.haproxy, upstream)
        if tools.nginx:
            arms["nginx"] = lambda: Nginx(work / "nginx", tools.nginx, upstream)
        perf_analyzer(tools, upstream, PaSettings(measurement_interval_ms=2000), rate=args.door_rates[0])  # warm
        for rep in range(args.repeats):
            order = list(arms) if rep % 2 == 0 else list(reversed(arms))
            for arm in order:
                with contextlib.ExitStack() as stack:
                    proxy = stack.enter_context(arms[arm]()) if arms[arm] else None
                    url = proxy.grpc_url if proxy else upstream
                    groups = {"triton": server.proc.pid} | ({"proxy": proxy.proc.pid} if proxy else {})
                    perf_analyzer(tools, url, PaSettings(measurement_interval_ms=1000), rate=args.door_rates[0])
                    for kind, level in points:
                        with cpu_meter(groups) as cpu:
                            kw = {"rate": level} if kind == "rate" else {"concurrency": int(level)}
                            fig = perf_analyzer(tools, url, pa, **kw)
                        fig |= {"triton_cores": cpu["triton"], "proxy_cores": cpu.get("proxy")}
                        runs.setdefault(f"{kind}={level:g}", {}).setdefault(arm, []).append(fig)
                        print(f"peers: door {arm} {kind}={level:g} rep {rep}: {json.dumps(_brief({arm: fig}))}",
                              file=sys.stderr)  # fmt: skip
    return {"config": config.describe(), "points": _door_summary(runs, args), "runs": runs}


def _door_summary(runs: dict[str, dict[str, list]], args) -> dict:
    out = {}
    for point, arms in runs.items():
        row = {}
        for arm, figs in arms.items():
            ok = [f for f in figs if f.get("ok")]
            row[arm] = {
                k: median([f.get(k) for f in ok])
                for k in ("throughput_per_s", "p50_ms", "p99_ms", "generator_cores", "triton_cores", "proxy_cores")
            } | {"runs_ok": len(ok), "runs": len(figs)}
        d = row.get("direct", {})
        for arm, fig in row.items():
            if arm == "direct" or not d:
                continue
            if point.startswith("rate"):
                fig["added_p50_ms"] = _diff(fig["p50_ms"], d["p50_ms"])
                fig["added_p99_ms"] = _diff(fig["p99_ms"], d["p99_ms"])
            else:
                t, td = fig["throughput_per_s"], d["throughput_per_s"]
                fig["throughput_vs_direct"] = round(t / td, 3) if t and td else None
        out[point] = row
    return out


def _diff(a, b):
    return round(a - b, 3) if a is not None and b is not None else None


# -- part 3: search against search ----------------------------------------------------------------------------------
def model_analyzer(bench: Bench, tools: Tools, args, variant: str, mode: str) -> dict:
    """Model Analyzer's ``mode`` search on ``cnn_<variant>`` (the same ONNX as the public model's variant), remote
    mode, on a Triton of its own with the model-repository API open on loopback only."""
    work = bench.runs_dir / f"ma-{mode}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    private = f"cnn_{variant}"
    options = ServerOptions(repository=bench.repository, models=(private,), admin_key=None,
                            log_path=work / "tritonserver.log", cache_dir=bench.runs_dir / "cache")  # fmt: skip
    with TritonServer(options) as server:
        config = {
            "model_repository": str(bench.repository.resolve()),
            "profile_models": {private: {"cpu_only": True}},
            "constraints": {"perf_latency_p99": {"max": args.slo_ms}},
            "triton_launch_mode": "remote",
            "triton_grpc_endpoint": server.grpc_url,
            "triton_http_endpoint": server.http_url,
            "triton_metrics_url": server.metrics_url,
            "client_protocol": "grpc",
            "perf_analyzer_path": str(tools.perf_analyzer.resolve()),
            "run_config_search_mode": mode,
            "run_config_search_max_instance_count": args.max_instances,
            "run_config_search_max_model_batch_size": args.max_batch,
            "run_config_search_max_concurrency": args.max_concurrency,
            "output_model_repository_path": str(work / "output"),
            "override_output_model_repository": True,
            "export_path": str(work / "export"),
            "checkpoint_directory": str(work / "checkpoints"),
            "skip_summary_reports": True,
        }
        (work / "config.yaml").write_text(json.dumps(config, indent=2))  # JSON is YAML
        t0 = time.monotonic()
        with open(work / "model-analyzer.log", "w") as log:
            r = subprocess.run([str(tools.model_analyzer), "profile", "-f", str(work / "config.yaml")],
                               stdout=log, stderr=subprocess.STDOUT, timeout=args.ma_timeout_s)  # fmt: skip
        wall = time.monotonic() - t0
    if r.returncode != 0:
        tail = " | ".join((work / "model-analyzer.log").read_text(errors="replace").splitlines()[-5:])
        raise PeersError(f"model-analyzer profile ({mode}) exit {r.returncode}: {tail[-500:]}")
    return {"wall_s": round(wall, 1), **_ma_results(work, private, args.slo_ms)}


def _ma_results(work: Path, model: str, slo_ms: float) -> dict:
    """Every (config, concurrency) Model Analyzer measured, from its checkpoint (1.58's layout: results[model]
    [config name] = [run config, {perf_analyzer command: run-config measurement}]); its best within the SLO."""
    ckpt = sorted((work / "checkpoints").glob("*.ckpt"))[-1]
    data = json.loads(ckpt.read_text())
    points = []
    for name, entry in data["ResultManager.results"]["_results"][model].items():
        measurements = entry[1] if isinstance(entry, list) and len(entry) > 1 else {}
        for rcm in measurements.values():
            for mcm in rcm["_model_config_measurements"]:
                tags = mcm["_non_gpu_data_from_tag"]
                value = lambda t: tags[t][1]["_value"] if t in tags else None  # noqa: B023, E731
                params = mcm["_model_specific_pa_params"]
                points.append({
                    "config_name": name,
                    "concurrency": params.get("concurrency-range"),
                    "throughput_per_s": value("perf_throughput"),
                    "p99_ms": value("perf_latency_p99"),
                })  # fmt: skip
    configs = sorted({p["config_name"] for p in points})
    feasible = [p for p in points if p["p99_ms"] is not None and p["p99_ms"] <= slo_ms]
    best = dict(max(feasible, key=lambda p: (p["throughput_per_s"], -p["p99_ms"]))) if feasible else None
    if best:
        pbtxt = (work / "output" / best["config_name"] / "config.pbtxt").read_text()
        best["knobs"] = _knobs(pbtxt)
    default = [p for p in points if p["config_name"].endswith("_config_default") and p["p99_ms"] is not None
               and p["p99_ms"] <= slo_ms]  # fmt: skip
    return {
        "configs_measured": len(configs),
        "points_measured": len(points),
        "best": best,
        "default_best_throughput_per_s": max((p["throughput_per_s"] for p in default), default=None),
        "points": points,
    }


def _knobs(pbtxt: str) -> dict:
    def num(pattern: str):
        m = re.search(pattern, pbtxt)
        return int(m.group(1)) if m else None

    return {
        "max_batch_size": num(r"max_batch_size:\s*(\d+)"),
        "instances": num(r"instance_group\s*\{[^}]*count:\s*(\d+)") or 1,
        "dynamic_batching": "dynamic_batching" in pbtxt,
        "max_queue_delay_us": num(r"max_queue_delay_microseconds:\s*(\d+)") or 0,
    }


def tritune_sweep(bench: Bench, args, variant: str) -> dict:
    out = bench.runs_dir / "sweep"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "tritune"), "sweep", "--repository", str(bench.repository),
           "--variants", variant, "--instances", ",".join(str(i) for i in range(1, args.max_instances + 1)),
           "--concurrency", ",".join(str(c) for c in _powers(args.max_concurrency)),
           "--slo-p99-ms", f"{args.slo_ms:g}", "--out", str(out), "--run-name", "sweep"]  # fmt: skip
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.ma_timeout_s)
    wall = time.monotonic() - t0
    result = json.loads((out / "sweep" / "sweep.json").read_text()) if (out / "sweep" / "sweep.json").exists() else None
    if result is None:
        raise PeersError(f"tritune sweep failed (exit {r.returncode}): {r.stderr[-500:]}")
    points = result.get("points", [])
    return {
        "wall_s": round(wall, 1),
        "command": " ".join(["tritune", *cmd[1:]]),
        "configs_measured": len({json.dumps(p["config"], sort_keys=True) for p in points}),
        "points_measured": len(points),
        "best": result.get("best"),
    }


def _powers(top: int) -> list[int]:
    out, c = [], 1
    while c <= top:
        out.append(c)
        c *= 4
    return out if out[-1] == top else [*out, top]


def yardstick(bench: Bench, tools: Tools, args, tag: str, config: ServingConfig, max_batch_size: int | None) -> dict:
    """One perf_analyzer sweep over concurrency 1, 2, 4, … up to the cap, stopped at the first level whose p99
    misses the SLO: the highest throughput within it, and where."""
    pa = PaSettings(measurement_interval_ms=int(args.window_s * 1000))
    levels = []
    with server_for(bench, f"yard-{tag}", config, max_batch_size) as server:
        perf_analyzer(tools, server.grpc_url, PaSettings(measurement_interval_ms=1000), concurrency=1)  # warm
        c = 1
        while c <= args.max_concurrency:
            fig = perf_analyzer(tools, server.grpc_url, pa, concurrency=c)
            levels.append({"concurrency": c, **{k: fig.get(k) for k in ("throughput_per_s", "p99_ms", "error")}})
            if not fig.get("ok") or fig["p99_ms"] > args.slo_ms:
                break
            c *= 2
    ok = [lv for lv in levels if lv.get("p99_ms") is not None and lv["p99_ms"] <= args.slo_ms]
    best = max(ok, key=lambda lv: lv["throughput_per_s"]) if ok else None
    return {"config": config.describe(), "max_batch_size": max_batch_size, "best": best, "levels": levels}


def highest_held_rate(bench: Bench, config: ServingConfig, max_batch_size: int | None, top: float, args) -> dict:
    """The highest open-loop rate up to ``top`` this static config holds (p99 within the SLO, nothing failed)."""
    with server_for(bench, "held", config, max_batch_size) as server:
        bench.load(server, 3, constant(50))

        def probe(rate: float):
            result = bench.load(server, args.probe_s, constant(rate))
            bench.settle(server)
            return meets_slo(result, bench.slo_ms, skip_s=2.0)

        rate, trail = search_below(probe, 0.6 * top, top, bisect_steps=3)
    return {"rate_per_s": rate, "trail": trail}


def _live(result, rate: float, args, slo_ms: float) -> dict:
    windows = result.windows(5.0, slo_ms)
    after = [w for w in windows if w["start_s"] >= 60]
    return {
        "rate_per_s": rate,
        "seconds": args.live_s,
        "converged_after_s": converged_after_s(windows),
        "windows_met_after_60s": f"{sum(w['slo_met'] for w in after)}/{len(after)}",
        "served_rate_after_60s": median([w["rate_per_s"] for w in after if w["slo_met"]]),
        "summary": result.summary(slo_ms, skip_s=60.0),
        "generator": result.generator.report() if result.generator else None,
    }


def orchestrated_live(bench: Bench, variant: str, rate: float, args) -> dict:
    """``tritune orchestrate`` from the default config under a constant open-loop ``rate`` for ``--live-s``."""
    with server_for(bench, "live", ServingConfig(variant=variant)) as server:
        result, run = bench.orchestrated(server, args.live_s, constant(rate), log=bench.runs_dir / "live.jsonl",
                                         lead_in_s=2.0)  # fmt: skip
    return _live(result, rate, args, bench.slo_ms) | {
        "final_config": run.current.describe() if run.current else None,
        "actions": [h for h in run.history if h.get("event") == "action"][:20],
    }


def static_live(bench: Bench, config: ServingConfig, max_batch_size: int | None, rate: float, args) -> dict:
    """A static config under the same load for as long: the orchestrator's run judged beside it, not beside a
    12-s probe."""
    with server_for(bench, "live-static", config, max_batch_size) as server:
        bench.load(server, 3, constant(50))
        result = bench.load(server, args.live_s, constant(rate))
    return _live(result, rate, args, bench.slo_ms) | {"config": {**config.describe(), "max_batch_size": max_batch_size}}


def part_search(bench: Bench, tools: Tools, args, variant: str, _so_far: dict) -> dict:
    out: dict = {"caps": {"max_instances": args.max_instances, "max_batch_size": args.max_batch,
                          "max_concurrency": args.max_concurrency, "slo_p99_ms": args.slo_ms}}  # fmt: skip
    reused = json.loads(args.reuse_ma.read_text())["search"] if args.reuse_ma else None
    for mode in args.ma_modes:
        if reused and f"model_analyzer_{mode}" in reused:  # its searches took minutes; the rest is re-measured
            out[f"model_analyzer_{mode}"] = reused[f"model_analyzer_{mode}"] | {"reused_from": str(args.reuse_ma)}
            continue
        print(f"peers: Model Analyzer {mode} search", file=sys.stderr)
        try:
            out[f"model_analyzer_{mode}"] = model_analyzer(bench, tools, args, variant, mode)
        except (PeersError, subprocess.TimeoutExpired) as exc:  # the other arms still run; the note says why
            out[f"model_analyzer_{mode}"] = {"error": str(exc)[-600:], "best": None}
    print("peers: tritune sweep", file=sys.stderr)
    out["tritune_sweep"] = tritune_sweep(bench, args, variant)
    # One yardstick for every arm's best config.
    yard = {}
    for mode in args.ma_modes:
        best = out[f"model_analyzer_{mode}"].get("best")
        if best:
            k = best["knobs"]
            cfg = ServingConfig(variant=variant, instances=k["instances"], dynamic_batching=k["dynamic_batching"],
                                max_queue_delay_us=k["max_queue_delay_us"])  # fmt: skip
            yard[f"model_analyzer_{mode}"] = yardstick(bench, tools, args, mode, cfg, k["max_batch_size"])
    sweep_best = out["tritune_sweep"]["best"]
    if sweep_best:
        yard["tritune_sweep"] = yardstick(
            bench, tools, args, "sweep", ServingConfig.from_dict(sweep_best["config"]), None
        )
    out["yardstick"] = yard
    anchor = next(
        (yard[k] for k in ("model_analyzer_quick", "model_analyzer_brute") if k in yard and yard[k]["best"]), None
    )
    if anchor:
        cfg = ServingConfig.from_dict(anchor["config"])
        held = highest_held_rate(bench, cfg, anchor["max_batch_size"], anchor["best"]["throughput_per_s"], args)
        out["model_analyzer_best_held_rate"] = held
        if held["rate_per_s"]:
            print(f"peers: orchestrator live at {held['rate_per_s']:.0f} req/s", file=sys.stderr)
            live = orchestrated_live(bench, variant, held["rate_per_s"], args)
            out["tritune_orchestrate"] = live
            out["model_analyzer_live"] = static_live(bench, cfg, anchor["max_batch_size"], held["rate_per_s"], args)
            if live["final_config"]:
                yard["tritune_orchestrate"] = yardstick(
                    bench, tools, args, "orchestrate", ServingConfig.from_dict(live["final_config"]), None
                )
    return out


# -- part 4: what Model Analyzer cannot do --------------------------------------------------------------------------
def part_tradeoff(bench: Bench, tools: Tools, args, variant: str, so_far: dict) -> dict:
    """bench/scenarios.py's tradeoff_step (calibrated on this machine), served by Model Analyzer's best static
    config and by the orchestrator with the whole ladder: windows met and served top-1, and whether either
    dominates."""
    from bench.scenarios import SCENARIOS, calibrate, frontier, levels_of, run_arm, summarize
    from loadtest.capacity import Capacity

    search = so_far.get("search") or (json.loads(args.search_from.read_text())["search"] if args.search_from else {})
    anchor = next((search["yardstick"][k] for k in ("model_analyzer_quick", "model_analyzer_brute")
                   if k in search.get("yardstick", {})), None)  # fmt: skip
    if anchor is None:
        raise PeersError("the tradeoff part needs Model Analyzer's best config: run the search part first (or give "
                         "--search-from a peers.json that has it)")  # fmt: skip
    ma_config, ma_mbs = ServingConfig.from_dict(anchor["config"]), anchor["max_batch_size"]
    scenario = SCENARIOS["tradeoff_step"]
    floor = min(float(v.top1) for v in bench.ctx.variants.values())  # the whole ladder, as the scenario runs it
    sb = Bench(args.repository, bench.runs_dir / scenario.name, scenario.slo_ms, floor, headroom=scenario.headroom,
               batch=scenario.batch)  # fmt: skip
    levels = levels_of(sb)
    cal = calibrate(sb, scenario, levels, bench.runs_dir)
    shape = scenario.shape(Capacity(tuple(max(lv["rate_per_s"], 1.0) for lv in cal["levels"])))
    runs = []
    for i in range(args.tradeoff_repeats):
        rate = lambda t: shape.value(t) or shape.value(shape.duration_s - 1e-6)  # noqa: E731
        with server_for(sb, f"r{i}-model-analyzer", ma_config, ma_mbs) as server:
            sb.settle(server, 2.0)
            result = sb.load(server, shape.duration_s, rate)
        ma = summarize(sb, scenario, shape, result, "model_analyzer", ma_config, [], [], None)
        orch = run_arm(sb, scenario, shape, "orchestrator", None, f"r{i}-orchestrator")
        runs.append({"model_analyzer": ma, "orchestrator": orch})
    fields = ("share_meeting_slo", "served_top1_time_weighted", "failed_requests")
    med = {
        arm: {f: median([r[arm].get(f) for r in runs]) for f in fields} for arm in ("model_analyzer", "orchestrator")
    }
    front, dominated_by = frontier(
        {a: (m["share_meeting_slo"] or 0.0, m["served_top1_time_weighted"] or 0.0) for a, m in med.items()}
    )
    return {
        "scenario": scenario.name,
        "load": shape.describe(),
        "calibration": cal,
        "model_analyzer_config": {**ma_config.describe(), "max_batch_size": ma_mbs},
        "median": med,
        "frontier": front,
        "dominated_by": dominated_by,
        "orchestrator_not_dominated": not dominated_by["orchestrator"],
        "runs": runs,
    }


# -- the tables docs/benchmarks.md#peers shows ---------------------------------------------------------------------
def _f(v, digits: int = 1) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def _held_from(seconds: float | None) -> str:
    return "no point of the run" if seconds is None else f"{seconds:g} s"


def _cell(f: dict) -> str:
    return f"{_f(f['throughput_per_s'])}/s, p99 {_f(f['p99_ms'], 2)}, CPU {_f(f['generator_cores'], 2)}"


def render(r: dict) -> str:
    measured = "; ".join(f"{part}: `{m['commit']}`, {m['date']}, `{m['command']}`" for part, m in
                         r.get("measured", {}).items())  # fmt: skip
    out = [
        f"{r['machine']}; SLO p99 ≤ {r['slo_p99_ms']:g} ms; "
        f"`{r['model']['public']}` at its most accurate variant, {r['model']['variant']} (top-1 {r['model']['top1']}). "
        f"Tools: {r['tools']['perf_analyzer']}; Model Analyzer {r['tools']['model_analyzer']}; Caddy "
        f"{r['tools']['caddy']}; {r['tools']['haproxy']}; {r['tools']['nginx']}. Medians of {r['repeats']}.",
        "",
    ]
    if measured:
        out += [f"Measured: {measured}.", ""]
    if "generators" in r:
        out += ["**Our generators against perf_analyzer** (the same protocol each; infer/s, p99 ms from the send, "
                "the generator's CPU in cores; open loop: tritune's p99 from its schedule in brackets)", "",
                "| config / protocol / load | perf_analyzer | tritune | tritune ÷ perf_analyzer (infer/s, p99) "
                "| p99 of the 3 repeats: perf_analyzer / tritune | agree |",
                "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for key, p in r["generators"]["points"].items():
            pa, us, ratio = p["perf_analyzer"], p["tritune"], p["tritune_over_perf_analyzer"]
            sched = f" [{_f(us.get('p99_from_schedule_ms'), 2)}]" if us.get("p99_from_schedule_ms") else ""
            spread = " / ".join(
                "–" if not f.get("p99_range_ms") else f"{f['p99_range_ms'][0]:.2f}–{f['p99_range_ms'][1]:.2f}"
                for f in (pa, us)
            )
            verdict = "yes" if p.get("agree", p["within_10pct"]) else "no"
            out.append(f"| {key} | {_cell(pa)} | {_cell(us)}{sched} | {ratio['throughput_per_s']} / "
                       f"{ratio['p99_ms']} | {spread} | {verdict} |")  # fmt: skip
        out.append("")
    if "front_door" in r:
        points = r["front_door"]["points"]
        arms = list(next(iter(points.values())))
        out += ["**The front door, by perf_analyzer** (gRPC, the default config; p50 / p99 ms at fixed rates, "
                "infer/s at a saturating concurrency; the proxy's CPU in cores)", "",
                "| arm | " + " | ".join(points) + " | proxy CPU at the last |",
                "| --- | " + " | ".join("---" for _ in points) + " | --- |"]  # fmt: skip
        for arm in arms:
            cells = []
            for point, row in points.items():
                f = row[arm]
                if point.startswith("rate"):
                    add = (
                        f" (+{_f(f.get('added_p50_ms'), 2)} / +{_f(f.get('added_p99_ms'), 2)})"
                        if arm != "direct"
                        else ""
                    )
                    cells.append(f"{_f(f['p50_ms'], 2)} / {_f(f['p99_ms'], 2)}{add}")
                else:
                    rel = f" ({f['throughput_vs_direct']}×)" if arm != "direct" else ""
                    cells.append(f"{_f(f['throughput_per_s'])}{rel}")
            last = list(points.values())[-1][arm].get("proxy_cores")
            out.append(f"| {arm} | " + " | ".join(cells) + f" | {_f(last, 2)} |")
        out.append("")
    if "search" in r:
        s = r["search"]
        caps = s["caps"]
        out += [f"**Search against search** (caps: ≤ {caps['max_instances']} instances, "
                f"batch ≤ {caps['max_batch_size']}, concurrency ≤ {caps['max_concurrency']}; "
                f"p99 ≤ {caps['slo_p99_ms']:g} ms). Each arm's best, then "
                "measured again by one perf_analyzer sweep over concurrency (the yardstick)", "",
                "| arm | wall s | configs | its best | its figure | yardstick: infer/s at p99 (concurrency) |",
                "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for arm in ("model_analyzer_quick", "model_analyzer_brute", "tritune_sweep", "tritune_orchestrate"):
            a = s.get(arm)
            if not a:
                continue
            y = (s.get("yardstick", {}).get(arm) or {}).get("best")
            ystr = f"{_f(y['throughput_per_s'])} at {_f(y['p99_ms'], 1)} ms (c={y['concurrency']})" if y else "–"
            if arm == "tritune_orchestrate":
                out.append(f"| {arm} | live {a['seconds']:g} s at {_f(a['rate_per_s'])}/s | – | "
                           f"`{json.dumps(a['final_config'])}` | p99 within the SLO in every window from "
                           f"{_held_from(a['converged_after_s'])}; after 60 s "
                           f"{a['windows_met_after_60s']} windows met, "
                           f"{_f(a['served_rate_after_60s'])}/s | {ystr} |")  # fmt: skip
                continue
            if a.get("error"):
                out.append(f"| {arm} | – | – | failed: {a['error'][:160]} | – | – |")
                continue
            b = a.get("best") or {}
            knobs = b.get("knobs") or b.get("config")
            fig = (f"{_f(b.get('throughput_per_s') or (b.get('measurement') or {}).get('throughput_infer_per_s'))}/s, "
                   f"p99 {_f(b.get('p99_ms') or (b.get('measurement') or {}).get('p99_ms'), 1)} ms "
                   f"(c={b.get('concurrency')})")  # fmt: skip
            out.append(
                f"| {arm} | {a['wall_s']:g} | {a['configs_measured']} | `{json.dumps(knobs)}` | {fig} | {ystr} |"
            )
        out.append("")
    if "search" in r and "model_analyzer_live" in r["search"]:
        s = r["search"]
        o, m = s["tritune_orchestrate"], s["model_analyzer_live"]
        out += [f"**Live at the rate Model Analyzer's best config holds** ({_f(o['rate_per_s'])} req/s open loop over "
                f"HTTP for {o['seconds']:g} s; the orchestrator from Triton's default, Model Analyzer's config static)",
                "", "| arm | 5-s windows met after 60 s | p99 after 60 s (ms) | failed | generator CPU (cores) |",
                "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for arm, a in (("tritune orchestrate", o), ("Model Analyzer's config", m)):
            gen = (a.get("generator") or {}).get("cpu_core_share")
            out.append(f"| {arm} | {a['windows_met_after_60s']} | {_f(a['summary']['p99_ms'], 1)} | "
                       f"{a['summary']['failed']} | {_f(gen, 2)} |")  # fmt: skip
        out.append("")
    if "tradeoff" in r:
        t = r["tradeoff"]
        out += [f"**What Model Analyzer cannot do**: {t['scenario']} ({t['load']}), Model Analyzer's best static "
                f"config `{json.dumps(t['model_analyzer_config'])}` beside the orchestrator with the ladder", "",
                "| arm | windows met | served top-1 | failed |", "| --- | --- | --- | --- |"]  # fmt: skip
        for arm, m in t["median"].items():
            share = _f(100 * (m["share_meeting_slo"] or 0), 0)
            out.append(f"| {arm} | {share}% | {_f(m['served_top1_time_weighted'], 3)} | {m['failed_requests']} |")
        out.append(f"\nFrontier: {', '.join(t['frontier'])}; the orchestrator "
                   f"{'is not' if t['orchestrator_not_dominated'] else 'is'} dominated.")  # fmt: skip
    return "\n".join(out) + "\n"


# -- main -----------------------------------------------------------------------------------------------------------
def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--peers", type=Path, default=ROOT / ".peers", help="where `make peers` installed the tools")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "peers")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "peers.json")
    ap.add_argument("--parts", default="generators,front_door,search,tradeoff")
    ap.add_argument(
        "--search-from", type=Path, help="a peers.json whose search part gives the tradeoff part its config"
    )
    ap.add_argument("--tradeoff-repeats", type=int, default=1)
    ap.add_argument("--slo-ms", type=float, default=50.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--window-s", type=float, default=4.0, help="each measurement: 3 windows of this (both tools)")
    ap.add_argument("--skip-s", type=float, default=2.0, help="our open-loop runs' warm-up, excluded")
    ap.add_argument("--rates", type=_floats, default=[100.0, 400.0])
    ap.add_argument("--concurrency", type=_floats, default=[1.0, 4.0])
    ap.add_argument("--door-rates", type=_floats, default=[100.0, 400.0])
    ap.add_argument("--door-concurrency", type=int, default=8)
    ap.add_argument("--max-instances", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-concurrency", type=int, default=64)
    ap.add_argument("--ma-modes", type=lambda s: s.split(","), default=["quick", "brute"])
    ap.add_argument("--ma-timeout-s", type=float, default=3600)
    ap.add_argument("--reuse-ma", type=Path, help="a peers.json whose Model Analyzer searches the search part reuses")
    ap.add_argument("--probe-s", type=float, default=12.0)
    ap.add_argument("--live-s", type=float, default=120.0)
    ap.add_argument("--render", type=Path, help="print the markdown tables of a peers.json and exit")
    args = ap.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())), end="")
        return 0
    try:
        tools = Tools.find(args.peers)
    except PeersError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest = Manifest.read(args.repository)
    variant = most_accurate(manifest)
    bench = Bench(args.repository, args.runs_dir, args.slo_ms, float(manifest.variants[variant].top1))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    result: dict = {
        "benchmark": "peers",
        "commit": commit.strip(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {CORES} cores, {platform.platform()}",
        "command": "python bench/peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "tools": tools.versions(),
        "model": {
            "public": MODEL,
            "variant": variant,
            "top1": float(manifest.variants[variant].top1),
            "dataset": manifest.dataset.get("name"),
        },
        "slo_p99_ms": args.slo_ms,
        "repeats": args.repeats,
    }
    parts = {
        "generators": part_generators,
        "front_door": part_front_door,
        "search": part_search,
        "tradeoff": part_tradeoff,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The parts this run measures replace theirs in --out; the others stay, each with its own commit and date in
    # ``measured`` (a part's figures say when they were taken, not when the file was last written).
    kept = json.loads(args.out.read_text()) if args.out.exists() else {}
    result = {**kept, **result, "measured": dict(kept.get("measured", {}))}
    for name in args.parts.split(","):
        t0 = time.monotonic()
        result[name] = parts[name](bench, tools, args, variant, result)
        result[name]["wall_s"] = round(time.monotonic() - t0, 1)
        result["measured"][name] = {k: result[k] for k in ("commit", "date", "command")}
        args.out.write_text(json.dumps(result, indent=2) + "\n")  # a later part's failure keeps the earlier ones
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
