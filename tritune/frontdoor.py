"""The front door: Caddy as an L7 proxy in front of N Triton replicas, its config written from typed settings.

Why Caddy, and why L7: one gRPC channel is one HTTP/2 connection, so an L4 balancer (kube-proxy, haproxy in TCP
mode) pins all of a client's calls to one replica; an L7 proxy balances each call (each HTTP/2 stream). Caddy also
measures every request end to end (``caddy_http_request_duration_seconds``), which is the latency clients see.

The config is Caddy's native JSON built from dataclasses (:func:`caddy_config`), never a Caddyfile assembled from
strings. Three servers:

- ``http``: Triton's HTTP/REST API, balanced ``least_conn``, replicas checked actively on the public model's
  ``/v2/models/<model>/ready`` (see ``FrontDoorSettings.health_model``);
- ``grpc``: Triton's gRPC API over h2c (Caddy 2.6 needs ``protocols h1 h2c`` or gRPC clients fail with "Expected
  SETTINGS frame"), balanced ``least_conn``;
- ``metrics``: Caddy's Prometheus metrics on their own port, so that nobody needs Caddy's admin API (which can
  replace the whole config) to scrape them; the admin API listens on 127.0.0.1 only.

The model-repository API (which can load arbitrary code) and the other server-wide settings APIs are refused on
both protocols: HTTP answers 403, gRPC answers PERMISSION_DENIED. Only the orchestrator, which talks to each
replica directly with the admin key, may change what a replica serves.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritune.errors import ConfigError, ServerError

CADDY_INSTALL_HINT = "install Caddy 2.6+ (`apt-get install caddy` on Debian/Ubuntu, or `make install`)"
GRPC_SERVICE = "inference.GRPCInferenceService"
# Triton's APIs that change the server rather than use it: refused at the front door on both protocols.
REFUSED_HTTP_PATHS = (
    "/v2/repository",
    "/v2/repository/*",
    "/v2/logging",
    "/v2/trace/setting",
    "/v2/models/*/trace/setting",
    "/v2/systemsharedmemory*",
    "/v2/cudasharedmemory*",
)
REFUSED_GRPC_METHODS = (
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "LogSettings",
    "TraceSetting",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
)
REFUSAL = (
    "the model-repository and settings APIs are not served through the front door; only the orchestrator may use "
    "them, on each replica directly"
)
GRPC_PERMISSION_DENIED = 7
# Caddy's request-duration histogram and the label matcher that selects proxied requests (not refusals).
LATENCY_METRIC = "caddy_http_request_duration_seconds"
LATENCY_LABELS = {"handler": "reverse_proxy"}
# The bucket bounds of Caddy 2.6's histogram (Prometheus' defaults); not configurable in Caddy 2.6.
CADDY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Upstream:
    """One Triton replica as the front door dials it."""

    host: str
    http_port: int
    grpc_port: int


@dataclass(frozen=True)
class DnsUpstreams:
    """Replicas found by a DNS name (A/AAAA records) re-resolved every ``refresh_s``: compose's scaled services and
    Kubernetes' headless Services."""

    name: str
    http_port: int = 8000
    grpc_port: int = 8001
    refresh_s: float = 5.0


@dataclass(frozen=True)
class FrontDoorSettings:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8003
    admin_port: int = 2019  # Caddy's admin API: always on 127.0.0.1
    # Active checks ask for the public model's readiness, not the server's: with Triton's default strict readiness
    # /v2/health/ready answers 400 while any model reloads, though the old copy keeps serving, so checking it
    # would drain a replica on every change the orchestrator makes (two in a row: no replica left, 503s).
    health_model: str = "cnn"
    health_interval_s: float = 1.0
    health_timeout_s: float = 1.0
    # Passive checks: an upstream that fails a request (a refused dial, a reset) is out for this long.
    fail_duration_s: float = 5.0
    max_fails: int = 1
    # A request whose dial fails is retried on another replica for up to this long: a replica that died is not
    # seen by the clients whose requests had not reached it yet.
    try_duration_s: float = 3.0
    try_interval_s: float = 0.1

    def validate(self) -> None:
        ports = [self.http_port, self.grpc_port, self.metrics_port, self.admin_port]
        if any(p < 0 or p > 65535 for p in ports):
            raise ConfigError(f"front-door ports must be 0-65535, got {ports}")
        nonzero = [p for p in ports if p]
        if len(set(nonzero)) != len(nonzero):
            raise ConfigError(f"front-door ports must differ, got {ports}")
        if self.health_interval_s <= 0 or self.health_timeout_s <= 0:
            raise ConfigError("front-door health interval and timeout must be positive")


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _proxy(upstreams: tuple[Upstream, ...] | DnsUpstreams, grpc: bool, s: FrontDoorSettings) -> dict[str, Any]:
    port_of = (lambda u: u.grpc_port) if grpc else (lambda u: u.http_port)
    handler: dict[str, Any] = {
        "handler": "reverse_proxy",
        "load_balancing": {
            "selection_policy": {"policy": "least_conn"},
            "try_duration": _duration(s.try_duration_s),
            "try_interval": _duration(s.try_interval_s),
        },
        "health_checks": {
            "passive": {"fail_duration": _duration(s.fail_duration_s), "max_fails": s.max_fails},
        },
    }
    if isinstance(upstreams, DnsUpstreams):
        handler["dynamic_upstreams"] = {
            "source": "a",
            "name": upstreams.name,
            "port": str(port_of(upstreams)),
            "refresh": _duration(upstreams.refresh_s),
        }
    else:
        handler["upstreams"] = [{"dial": f"{u.host}:{port_of(u)}"} for u in upstreams]
    if grpc:
        # h2c to Triton's gRPC port. Caddy 2.6 sends its active health checks through the proxy's own transport,
        # so a check on Triton's HTTP port (HTTP/1 only) cannot run here: the gRPC side drops a replica passively
        # on a failed dial or stream, and a dead one within one failed request.
        handler["transport"] = {"protocol": "http", "versions": ["h2c", "2"]}
    else:
        handler["transport"] = {"protocol": "http"}
        if not isinstance(upstreams, DnsUpstreams):  # Caddy 2.6 runs no active checks on dynamic upstreams
            handler["health_checks"]["active"] = {
                "uri": f"/v2/models/{s.health_model}/ready",
                "interval": _duration(s.health_interval_s),
                "timeout": _duration(s.health_timeout_s),
                "expect_status": 200,
            }
    return handler


def _refusal(grpc: bool) -> dict[str, Any]:
    if grpc:
        match = [{"path": [f"/{GRPC_SERVICE}/{m}" for m in REFUSED_GRPC_METHODS]}]
        # A trailers-only gRPC response: the status travels in the headers of a response without a body.
        handle = {
            "handler": "static_response",
            "status_code": 200,
            "headers": {
                "Content-Type": ["application/grpc"],
                "Grpc-Status": [str(GRPC_PERMISSION_DENIED)],
                "Grpc-Message": [REFUSAL],
            },
        }
    else:
        match = [{"path": list(REFUSED_HTTP_PATHS)}]
        handle = {
            "handler": "static_response",
            "status_code": 403,
            "headers": {"Content-Type": ["application/json"]},
            "body": json.dumps({"error": REFUSAL}),
        }
    return {"match": match, "handle": [handle], "terminal": True}


def caddy_config(upstreams: tuple[Upstream, ...] | DnsUpstreams, s: FrontDoorSettings) -> dict[str, Any]:
    """Caddy's JSON config for the front door (the schema of Caddy 2.6's ``apps.http``)."""
    s.validate()
    if not isinstance(upstreams, DnsUpstreams) and not upstreams:
        raise ConfigError("the front door needs at least one replica")

    def server(port: int, grpc: bool) -> dict[str, Any]:
        return {
            "listen": [f"{s.host}:{port}"],
            "protocols": ["h1", "h2c"],
            "automatic_https": {"disable": True},
            "metrics": {},
            "routes": [_refusal(grpc), {"handle": [_proxy(upstreams, grpc, s)]}],
        }

    return {
        "admin": {"listen": f"127.0.0.1:{s.admin_port}"},
        "logging": {"logs": {"default": {"level": "WARN"}}},
        "apps": {
            "http": {
                "servers": {
                    "http": server(s.http_port, grpc=False),
                    "grpc": server(s.grpc_port, grpc=True),
                    "metrics": {
                        "listen": [f"{s.host}:{s.metrics_port}"],
                        "automatic_https": {"disable": True},
                        "routes": [{"match": [{"path": ["/metrics"]}], "handle": [{"handler": "metrics"}]}],
                    },
                }
            }
        },
    }


def find_caddy(explicit: str | Path | None = None) -> Path:
    if explicit:
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ServerError(f"{path} is not an executable caddy; {CADDY_INSTALL_HINT}")
    found = shutil.which("caddy")
    if not found:
        raise ServerError(f"no caddy on PATH (the front door needs it); {CADDY_INSTALL_HINT}")
    return Path(found)


def port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class FrontDoor:
    """A Caddy child process in its own process group; a context manager, like :class:`TritonServer`."""

    upstreams: tuple[Upstream, ...] | DnsUpstreams
    settings: FrontDoorSettings = field(default_factory=FrontDoorSettings)
    cache_dir: Path = Path(".cache/tritune")
    caddy: Path | None = None
    ready_timeout_s: float = 20.0
    proc: subprocess.Popen | None = None
    config_path: Path | None = None
    log_path: Path | None = None

    @property
    def http_url(self) -> str:
        return f"{self.settings.host}:{self.settings.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.settings.host}:{self.settings.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.metrics_port}/metrics"

    def start(self) -> FrontDoor:
        from tritune.server import free_ports

        s = self.settings
        binary = find_caddy(self.caddy)
        spare = iter(free_ports(3, s.host))  # distinct: see free_ports
        picked = {name: getattr(s, name) or next(spare) for name in ("http_port", "grpc_port", "metrics_port")}
        picked["admin_port"] = s.admin_port or free_ports(1, "127.0.0.1")[0]
        from dataclasses import replace

        self.settings = s = replace(s, **picked)
        for name, port in picked.items():
            host = "127.0.0.1" if name == "admin_port" else s.host
            if not port_free(host, port):
                raise ServerError(
                    f"port {port} ({name.removesuffix('_port')} of the front door) is taken on {host}; "
                    "stop what holds it or choose another port"
                )
        config = caddy_config(self.upstreams, s)
        cache = Path(self.cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        self.config_path = cache / f"caddy-{s.http_port}.json"
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        self.log_path = cache / f"caddy-{s.http_port}.log"
        env = dict(os.environ)
        env.setdefault("XDG_DATA_HOME", str(cache.resolve() / "caddy-data"))  # Caddy's storage, not ~/.local
        env.setdefault("XDG_CONFIG_HOME", str(cache.resolve() / "caddy-config"))
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [str(binary), "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
                raise ServerError(f"caddy exited with status {self.proc.returncode} at start: {tail[-400:]}")
            try:
                with urllib.request.urlopen(self.metrics_url, timeout=1) as resp:  # noqa: S310 - our own Caddy
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise ServerError(f"caddy not serving after {self.ready_timeout_s:.0f} s; see {self.log_path}")

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def __enter__(self) -> FrontDoor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def compose_config() -> dict[str, Any]:
    """The front door of docker-compose.yml: every address of the service ``triton``, on all interfaces of the
    container (its admin API on the container's loopback only)."""
    return caddy_config(DnsUpstreams("triton"), FrontDoorSettings(host="0.0.0.0"))  # noqa: S104 - in a container


def main(argv: list[str] | None = None) -> int:
    """Print a front door's Caddy config (JSON): ``python -m tritune.frontdoor --dns triton``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tritune.frontdoor", description=main.__doc__)
    ap.add_argument("--dns", default="triton", help="the replicas' DNS name (default: %(default)s)")
    ap.add_argument(
        "--host",
        default="0.0.0.0",  # noqa: S104 - the config is for a container, whose published ports bind to localhost
        help="address the public servers listen on (default: %(default)s)",
    )
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--metrics-port", type=int, default=8003)
    ap.add_argument("--replica-http-port", type=int, default=8000)
    ap.add_argument("--replica-grpc-port", type=int, default=8001)
    a = ap.parse_args(argv)
    config = caddy_config(
        DnsUpstreams(a.dns, a.replica_http_port, a.replica_grpc_port),
        FrontDoorSettings(host=a.host, http_port=a.http_port, grpc_port=a.grpc_port, metrics_port=a.metrics_port),
    )
    print(json.dumps(config, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
