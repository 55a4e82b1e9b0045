"""The fleet behind the front door: what Caddy costs, how it balances, rolling changes, a killed replica, and how
well its histogram tells the p99 clients see. Prints JSON (docs/benchmarks.md, results in docs/results/).

    python bench/fleet.py --repeats 3

1. overhead: one replica, open-loop gRPC at ``--rate``, direct and through Caddy in alternating arms of
   ``--arm-s`` (medians of ``--repeats``): p50 and p99 of each and their difference.
2. balance: 2 replicas, ``--calls`` sequential calls on one gRPC channel and on one HTTP connection.
3. rolling: 2 replicas under open-loop load, ``--changes`` rolling reconfigurations (each replica: load, READY,
   judged over 1 s, then the next); failed requests.
4. kill: 2 replicas under open-loop load, replica-1 SIGKILLed and restarted after 5 s, the orchestrator's fleet
   loop (orchestrator/fleet.py) reconciling every 0.5 s: failed requests, the seconds from the kill to the last
   failed request, and from the restarted replica's READY to the fleet config back on it.
5. agreement: closed-loop clients timing each call from its send, against the histogram's p99 over the same 5-s
   windows: the bucket index of each.

Every figure comes with the load generator's own CPU (this process's CPU seconds over the wall seconds: it runs
the generator and, at most, a scrape every 0.5 s) on a machine with ``cores``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bench.common import median
from builders.models import INPUT_DATATYPE, INPUT_NAME, INPUT_SHAPE
from loadtest.openloop import OpenLoopLoad, constant
from orchestrator.fleet import Fleet, FrontDoorLatency, StaticReplicas
from orchestrator.loop import scrape
from orchestrator.metrics import parse_metrics
from tritune.apply import Applier
from tritune.client import InferenceClient
from tritune.fleet import ReplicaEndpoints
from tritune.frontdoor import CADDY_BUCKETS_S, FrontDoor, FrontDoorSettings, Upstream
from tritune.server import ServerOptions, TritonServer

KEY = "bench-key"
MODEL = "cnn"
BOUNDS_MS = [b * 1000 for b in CADDY_BUCKETS_S] + [float("inf")]


class Cpu:
    """This process's CPU over a stretch of wall time, in cores."""

    def __enter__(self):
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cores = (time.process_time() - self.cpu0) / max(time.perf_counter() - self.wall0, 1e-9)

    def report(self) -> dict:
        return {"cores": round(self.cores, 3), "share_of_machine": round(self.cores / (os.cpu_count() or 1), 3)}


def start_server(args, tag: str) -> TritonServer:
    return TritonServer(
        ServerOptions(
            repository=args.repository,
            models=(MODEL,),
            admin_key=KEY,
            cache_dir=args.runs_dir / "cache",
            log_path=args.runs_dir / f"triton-{tag}.log",
        )
    ).start()


def start_door(args, servers) -> FrontDoor:
    return FrontDoor(
        tuple(Upstream("127.0.0.1", s.http_port, s.grpc_port) for s in servers),
        FrontDoorSettings(http_port=0, grpc_port=0, metrics_port=0, admin_port=0),
        cache_dir=args.runs_dir / "cache",
    ).start()


def images(n: int = 256) -> np.ndarray:
    return np.random.default_rng(0).random((n, *INPUT_SHAPE), dtype=np.float32)


def successes(server) -> float:
    return parse_metrics(scrape(server.metrics_url), 0).models[MODEL].success


def fleet_of(servers, judge_s: float = 1.0, log=None) -> Fleet:
    eps = tuple(ReplicaEndpoints(f"replica-{i}", s.grpc_url, s.metrics_url) for i, s in enumerate(servers))
    fleet = Fleet(StaticReplicas(eps), MODEL, KEY, scrape=scrape, log=log or (lambda *a, **k: None), judge_s=judge_s)
    fleet.refresh()
    fleet.current()
    fleet.scrape(time.monotonic())
    return fleet


def overhead(args) -> dict:
    server = start_server(args, "overhead")
    door = start_door(args, [server])
    x = images()
    arms: dict[str, list[dict]] = {"direct": [], "front_door": []}
    try:
        for url in (server.grpc_url, door.grpc_url):  # warm both paths
            OpenLoopLoad(url, MODEL, x).run(2.0, constant(args.rate))
        for _ in range(args.repeats):
            for arm, url in (("direct", server.grpc_url), ("front_door", door.grpc_url)):
                with Cpu() as cpu:
                    r = OpenLoopLoad(url, MODEL, x).run(args.arm_s, constant(args.rate))
                s = r.summary()
                arms[arm].append({"p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "failed": s["failed"],
                                  "requests": s["requests"], "load_generator": cpu.report()})  # fmt: skip
    finally:
        door.stop()
        server.stop()
    med = {a: {k: median([r[k] for r in runs]) for k in ("p50_ms", "p99_ms")} for a, runs in arms.items()}
    return {
        "rate_per_s": args.rate,
        "arm_s": args.arm_s,
        "median": med,
        "added_p50_ms": round(med["front_door"]["p50_ms"] - med["direct"]["p50_ms"], 3),
        "added_p99_ms": round(med["front_door"]["p99_ms"] - med["direct"]["p99_ms"], 3),
        "goal": "at most +0.3 ms p50 and +1 ms p99",
        "runs": arms,
    }


def balance(args, servers, door) -> dict:
    x = images(1)
    out = {}
    for protocol, mod, url in (("grpc", grpcclient, door.grpc_url), ("http", httpclient, door.http_url)):
        before = [successes(s) for s in servers]
        client = mod.InferenceServerClient(url)
        inp = mod.InferInput(INPUT_NAME, list(x.shape), INPUT_DATATYPE)
        inp.set_data_from_numpy(x)
        with Cpu() as cpu:
            for _ in range(args.calls):
                client.infer(MODEL, [inp])
        client.close()
        split = [int(successes(s) - b) for s, b in zip(servers, before, strict=True)]
        out[protocol] = {
            "calls": args.calls,
            "per_replica": split,
            "max_deviation_from_even": round(max(abs(n - args.calls / 2) for n in split) / (args.calls / 2), 4),
            "load_generator": cpu.report(),
        }
    return out


def rolling(args, servers, door) -> dict:
    log: list[dict] = []
    fleet = fleet_of(servers, log=lambda event, **f: log.append({"event": event, **f}))
    a = fleet.config
    b = replace(a, dynamic_batching=not a.dynamic_batching, max_queue_delay_us=0 if a.dynamic_batching else 500)
    result: dict = {}
    duration = 8.0 * args.changes + 6
    load = OpenLoopLoad(door.grpc_url, MODEL, images())
    t = threading.Thread(target=lambda: result.setdefault("r", load.run(duration, constant(args.rate))))
    applied, seconds = [], []
    with Cpu() as cpu:
        t.start()
        time.sleep(3.0)
        for i in range(args.changes):
            target = b if i % 2 == 0 else a
            r = fleet.apply(target)
            applied.append(r.ok)
            seconds.append(round(r.seconds, 2))
        load.stop()
        t.join()
    r = result["r"]
    live = [Applier(InferenceClient(s.grpc_url, "grpc"), MODEL).current()[1] for s in servers]
    if fleet.config != a:
        fleet.apply(a)
    return {
        "changes": args.changes,
        "applied_ok": sum(applied),
        "rollout_s_median": median(seconds),
        "replica_applies": sum(1 for e in log if e["event"] == "replica-apply"),
        "both_replicas_on_the_last_config": all(c == (b if args.changes % 2 else a) for c in live),
        "requests": len(r.records),
        "failed": len(r.failures),
        "rate_per_s": args.rate,
        "load_generator": cpu.report(),
    }


def kill_once(args, servers, door) -> dict:
    fleet = fleet_of(servers, judge_s=0.5)
    tuned = replace(fleet.config, dynamic_batching=True, max_queue_delay_us=700)
    if fleet.config != tuned:
        assert fleet.apply(tuned).ok
    stop = threading.Event()

    def reconcile():
        while not stop.wait(0.5):
            fleet.scrape(time.monotonic())

    loop = threading.Thread(target=reconcile, daemon=True)
    result: dict = {}
    load = OpenLoopLoad(door.grpc_url, MODEL, images(), timeout_s=10)
    t = threading.Thread(target=lambda: result.setdefault("r", load.run(25.0, constant(args.kill_rate))))
    victim = servers[1]
    with Cpu() as cpu:
        loop.start()
        started = time.perf_counter()
        t.start()
        time.sleep(5.0)
        killed_s = time.perf_counter() - started
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        time.sleep(5.0)
        victim.stop()
        victim.options = replace(victim.options, http_port=victim.http_port, grpc_port=victim.grpc_port,
                                 metrics_port=victim.metrics_port, log_path=victim.log_path)  # fmt: skip
        victim.start()
        ready_at = time.perf_counter()
        back_s = None
        client = InferenceClient(victim.grpc_url, "grpc")
        while time.perf_counter() - ready_at < 30:
            if Applier(client, MODEL).current()[1] == tuned:
                back_s = time.perf_counter() - ready_at
                break
            time.sleep(0.1)
        client.close()
        t.join()
        stop.set()
        loop.join()
    r = result["r"]
    last = max((f.scheduled_s for f in r.failures), default=None)
    return {
        "requests": len(r.records),
        "failed": len(r.failures),
        "last_failure_after_kill_s": round(last - killed_s, 2) if last is not None else None,
        "config_back_after_ready_s": round(back_s, 2) if back_s is not None else None,
        "load_generator": cpu.report(),
    }


def agreement(args, door) -> dict:
    x = images(1)
    fd = FrontDoorLatency(door.metrics_url)
    lat: list[tuple[float, float]] = []
    lock, stop = threading.Lock(), threading.Event()

    def client_loop():
        c = grpcclient.InferenceServerClient(door.grpc_url)
        inp = grpcclient.InferInput(INPUT_NAME, list(x.shape), INPUT_DATATYPE)
        inp.set_data_from_numpy(x)
        c.infer(MODEL, [inp])
        while not stop.is_set():
            t0 = time.perf_counter()
            c.infer(MODEL, [inp])
            t1 = time.perf_counter()
            with lock:
                lat.append((t1, (t1 - t0) * 1000))
        c.close()

    threads = [threading.Thread(target=client_loop) for _ in range(args.clients)]
    windows = []
    with Cpu() as cpu:
        for t in threads:
            t.start()
        time.sleep(1.0)
        fd.sample(scrape, 50)
        edges = [time.perf_counter()]
        for _ in range(args.windows):
            time.sleep(5.0)
            windows.append(fd.sample(scrape, 50))
            edges.append(time.perf_counter())
        stop.set()
        for t in threads:
            t.join()
    rows = []
    for i, w in enumerate(windows):
        mine = [ms for t, ms in lat if edges[i] <= t < edges[i + 1]]
        client_p99 = float(np.percentile(mine, 99))
        hb, cb = int(np.searchsorted(BOUNDS_MS, w.p99_ms)), int(np.searchsorted(BOUNDS_MS, client_p99))
        rows.append({"client_requests": len(mine), "histogram_requests": int(w.requests),
                     "client_p99_ms": round(client_p99, 2), "histogram_p99_ms": round(w.p99_ms, 2),
                     "bucket_difference": hb - cb})  # fmt: skip
    return {
        "clients": args.clients,
        "windows": rows,
        "within_one_bucket": sum(1 for r in rows if abs(r["bucket_difference"]) <= 1) / len(rows),
        "same_bucket": sum(1 for r in rows if r["bucket_difference"] == 0) / len(rows),
        "load_generator": cpu.report(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/bench-fleet"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rate", type=float, default=100.0, help="open-loop requests/s (default: %(default)s)")
    ap.add_argument("--kill-rate", type=float, default=60.0)
    ap.add_argument("--arm-s", type=float, default=15.0)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--windows", type=int, default=6)
    args = ap.parse_args()
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out: dict = {"benchmark": "fleet", "cores": os.cpu_count(), "replicas": 2}
    t0 = time.monotonic()
    out["overhead"] = overhead(args)
    servers = []
    door = None
    try:
        servers = [start_server(args, f"replica-{i}") for i in range(2)]
        door = start_door(args, servers)
        out["balance"] = balance(args, servers, door)
        out["rolling"] = rolling(args, servers, door)
        kills = [kill_once(args, servers, door) for _ in range(args.repeats)]
        out["kill"] = {
            "rate_per_s": args.kill_rate,
            "median": {
                k: median([r[k] for r in kills])
                for k in ("failed", "last_failure_after_kill_s", "config_back_after_ready_s")
            },
            "runs": kills,
        }
        out["agreement"] = agreement(args, door)
    finally:
        if door is not None:
            door.stop()
        for s in servers:
            s.stop()
    out["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
