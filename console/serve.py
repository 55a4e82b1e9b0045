"""``tritune serve``: a local Triton on the model repository, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading
from dataclasses import replace
from pathlib import Path

from tritune.errors import ServerError
from tritune.server import ServerOptions, TritonServer, admin_key


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


def run(args: argparse.Namespace) -> int:
    key = admin_key(args.admin_key_file)
    server = TritonServer(
        ServerOptions(
            repository=args.repository,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            models=models_to_load(args.repository, args.models),
            admin_key=key,
            tritonserver=args.tritonserver,
            cache_dir=args.cache_dir,
            exit_timeout_s=args.exit_timeout_s,
        )
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    try:
        print(f"Triton ready — models: {', '.join(server.options.models)}", flush=True)
        print(f"  HTTP     http://{server.http_url}", flush=True)
        print(f"  gRPC     {server.grpc_url}", flush=True)
        print(f"  metrics  {server.metrics_url}", flush=True)
        print(
            f"  admin    model-repository API needs header '{'admin-key'}' (gRPC: "
            f"'triton-grpc-protocol-admin-key'); key in $TRITUNE_ADMIN_KEY or {args.admin_key_file}",
            flush=True,
        )
        print(f"  log      {server.log_path}   (Ctrl-C to stop)", flush=True)
        restarts = 0
        while not stop.wait(0.5):
            if server.proc is None or server.proc.poll() is not None:
                why = f"exited with status {server.proc.returncode if server.proc is not None else None}"
            elif fatal := server.fatal_error():  # aborted but still alive: neither serves nor exits
                why = f"aborted without exiting ({fatal})"
            else:
                continue
            if restarts >= args.restarts:
                raise ServerError(f"tritonserver {why} after {restarts} restarts; see {server.log_path}")
            restarts += 1
            restart(server, why, restarts, args.restarts)
    finally:
        server.stop()
        print("Triton stopped", flush=True)
    return 0
