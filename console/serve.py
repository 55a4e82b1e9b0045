"""``tritune serve``: a local Triton on the model repository, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path

from tritune.errors import ConfigError, ServerError, TrituneError
from tritune.fleet import FleetFile, FrontDoorEndpoints, ReplicaEndpoints
from tritune.frontdoor import FrontDoor, FrontDoorSettings, Upstream, find_caddy, port_free
from tritune.manifest import Manifest
from tritune.server import ADMIN_HEADER, GRPC_ADMIN_HEADER, ServerOptions, TritonServer, admin_key


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ServerOptions()
    p.add_argument("--repository", type=Path, default=d.repository, help="model repository (default: %(default)s)")
    p.add_argument(
        "--host", default=d.host, help="address to bind; keep 127.0.0.1 unless a proxy guards it (default: %(default)s)"
    )
    p.add_argument("--http-port", type=int, default=8000, help="0 picks a free port (default: %(default)s)")
    p.add_argument("--grpc-port", type=int, default=8001, help="(default: %(default)s)")
    p.add_argument("--metrics-port", type=int, default=8002, help="(default: %(default)s)")
    p.add_argument(
        "--models",
        default="all",
        help="comma-separated models to load at start, or 'all' in the manifest (default: %(default)s)",
    )
    p.add_argument(
        "--tritonserver",
        type=Path,
        default=None,
        help="tritonserver binary (default: the nvidia-pytriton wheel's, else PATH)",
    )
    p.add_argument(
        "--admin-key-file",
        type=Path,
        default=Path(".cache/tritune/admin.key"),
        help="where the generated admin key is kept, mode 0600, unless TRITUNE_ADMIN_KEY is set",
    )
    p.add_argument("--cache-dir", type=Path, default=d.cache_dir, help="backend copy and logs (default: %(default)s)")
    p.add_argument("--exit-timeout-s", type=int, default=d.exit_timeout_s, help="(default: %(default)s)")
    g = p.add_argument_group("fleet (docs/fleet.md)")
    g.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="tritonservers to start on free loopback ports; with more than one, the front door takes the public "
        "ports (default: %(default)s)",
    )
    g.add_argument(
        "--front-door",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="put Caddy on the public ports in front of the replicas (default: on with --replicas > 1)",
    )
    g.add_argument(
        "--front-door-metrics-port",
        type=int,
        default=8003,
        help="the front door's /metrics (request-duration histograms) (default: %(default)s)",
    )
    g.add_argument("--caddy", type=Path, default=None, help="caddy binary (default: caddy on PATH)")
    g.add_argument(
        "--fleet-file",
        type=Path,
        default=Path(".cache/tritune/fleet.json"),
        help="where the fleet file for `tritune orchestrate --fleet` is written (default: %(default)s)",
    )
    p.add_argument(
        "--restarts",
        type=int,
        default=3,
        help="restart tritonserver on the same ports this many times if it dies (it comes back with the on-disk "
        "configs; `tritune orchestrate` re-applies its last good config); 0: exit instead (default: %(default)s)",
    )


def restart(server: TritonServer, why: str, n: int, limit: int) -> None:
    """Bring a dead tritonserver back on the same ports, keeping the dead one's log (Triton 2.51's Python backend
    has aborted under load with heap corruption, a known upstream bug, not something a config change can avoid)."""
    kept = server.log_path.with_name(f"{server.log_path.stem}.died-{n}.log")
    server.stop()  # also kills a server that aborted without exiting, and the stubs a dead server left behind
    server.log_path.rename(kept)
    print(f"tritonserver {why} (log kept: {kept}); restarting ({n}/{limit})", flush=True)
    server.options = replace(
        server.options,
        http_port=server.http_port,
        grpc_port=server.grpc_port,
        metrics_port=server.metrics_port,
        log_path=server.log_path,
    )
    server.start()
    print("Triton ready again", flush=True)


def models_to_load(repository: Path, spec: str) -> tuple[str, ...]:
    if spec.strip() != "all":
        return tuple(m.strip() for m in spec.split(",") if m.strip())
    found = (
        sorted(p.name for p in Path(repository).iterdir() if (p / "config.pbtxt").is_file())
        if Path(repository).is_dir()
        else []
    )
    if not found:
        raise ServerError(f"no models in {repository}; run `tritune build` first")
    return tuple(found)


def public_model(repository: Path, models: tuple[str, ...]) -> str:
    """The model clients call: the manifest's public model, else the one model loaded, else ``cnn``."""
    try:
        return Manifest.read(repository).public_model
    except TrituneError:
        return models[0] if len(models) == 1 else "cnn"


def _watch(server: TritonServer) -> str | None:
    """Why a replica needs a restart, or None while it serves."""
    if server.proc is None or server.proc.poll() is not None:
        return f"exited with status {server.proc.returncode if server.proc is not None else None}"
    if fatal := server.fatal_error():  # aborted but still alive: neither serves nor exits
        return f"aborted without exiting ({fatal})"
    return None


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def run(args: argparse.Namespace) -> int:
    if args.replicas < 1:
        raise ConfigError(f"--replicas must be at least 1, got {args.replicas}")
    front = args.front_door if args.front_door is not None else args.replicas > 1
    if args.replicas > 1 and not front:
        raise ConfigError("--replicas > 1 needs the front door (it is what spreads the load); drop --no-front-door")
    caddy = find_caddy(args.caddy) if front else None  # before anything starts: a missing Caddy leaves nothing
    key = admin_key(args.admin_key_file)
    models = models_to_load(args.repository, args.models)

    def options(i: int) -> ServerOptions:
        public = not front  # without a front door the one replica takes the public ports, as it always did
        return ServerOptions(
            repository=args.repository,
            host=args.host if public else "127.0.0.1",
            http_port=args.http_port if public else 0,
            grpc_port=args.grpc_port if public else 0,
            metrics_port=args.metrics_port if public else 0,
            models=models,
            admin_key=key,
            tritonserver=args.tritonserver,
            cache_dir=args.cache_dir,
            exit_timeout_s=args.exit_timeout_s,
            log_path=Path(args.cache_dir) / f"tritonserver-replica-{i}.log" if front else None,
        )

    if front:
        for name, port in (("--http-port", args.http_port), ("--grpc-port", args.grpc_port)):
            if port and not port_free(args.host, port):
                raise ServerError(f"port {port} ({name}) is taken on {args.host}; stop what holds it or pass another")
    servers: list[TritonServer] = []
    door: FrontDoor | None = None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    fleet_path: Path | None = None
    try:
        for i in range(args.replicas):
            servers.append(TritonServer(options(i)))
            servers[-1].start()
        if front:
            door = FrontDoor(
                tuple(Upstream("127.0.0.1", s.http_port, s.grpc_port) for s in servers),
                FrontDoorSettings(
                    host=args.host,
                    http_port=args.http_port,
                    grpc_port=args.grpc_port,
                    metrics_port=args.front_door_metrics_port,
                    admin_port=0,
                ),
                cache_dir=args.cache_dir,
                caddy=caddy,
            ).start()
        fleet_path = FleetFile(
            replicas=tuple(
                ReplicaEndpoints(f"replica-{i}", s.grpc_url, s.metrics_url, s.http_url) for i, s in enumerate(servers)
            ),
            front_door=FrontDoorEndpoints(door.http_url, door.grpc_url, door.metrics_url) if door else None,
            model=public_model(args.repository, models),
            cores_per_replica=max(1, (os.cpu_count() or 1) // args.replicas),
        ).write(args.fleet_file)
        rows = [("", "HTTP", "gRPC", "metrics")]
        if door is not None:
            rows.append(("public (front door)", f"http://{door.http_url}", door.grpc_url, door.metrics_url))
        for i, s in enumerate(servers):
            rows.append((f"replica-{i}" if door else "Triton", f"http://{s.http_url}", s.grpc_url, s.metrics_url))
        print(f"Triton ready — {args.replicas} replica(s), models: {', '.join(models)}", flush=True)
        print(_table(rows), flush=True)
        print(
            f"  admin: the model-repository API needs header '{ADMIN_HEADER}' (gRPC: '{GRPC_ADMIN_HEADER}') on a "
            f"replica; key in $TRITUNE_ADMIN_KEY or {args.admin_key_file}"
            + ("; the front door refuses it" if door else ""),
            flush=True,
        )
        print(f"  fleet file: {fleet_path}   (tritune orchestrate --fleet {fleet_path})", flush=True)
        print(f"  logs: {', '.join(str(s.log_path) for s in servers)}   (Ctrl-C to stop)", flush=True)
        restarts = [0] * len(servers)
        while not stop.wait(0.5):
            if door is not None and door.proc is not None and door.proc.poll() is not None:
                code = door.proc.returncode
                raise ServerError(f"the front door (caddy) exited with status {code}; see {door.log_path}")
            for i, server in enumerate(servers):
                why = _watch(server)
                if why is None:
                    continue
                name = f"replica-{i}" if door else "tritonserver"
                if restarts[i] >= args.restarts:
                    raise ServerError(f"{name} {why} after {restarts[i]} restarts; see {server.log_path}")
                restarts[i] += 1
                restart(server, why, restarts[i], args.restarts)
    finally:
        if door is not None:
            door.stop()
        # In parallel: each may wait out Triton's exit timeout, and N in a row would keep Ctrl-C waiting N times.
        stoppers = [threading.Thread(target=s.stop) for s in servers]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        if fleet_path is not None:
            fleet_path.unlink(missing_ok=True)
        print("Triton stopped" + (" (replicas and front door)" if door else ""), flush=True)
    return 0
