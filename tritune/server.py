"""Run the ``tritonserver`` binary as a local child process (CPU: the one bundled in the nvidia-pytriton wheel).

Bound to 127.0.0.1 by default, explicit model control, summary-quantile metrics, and the model-repository API
restricted by a key header on HTTP and gRPC. The server and its Python-backend stubs run in their own process
group, so :meth:`TritonServer.stop` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tritune.errors import ServerError

ADMIN_HEADER = "admin-key"
# Triton prefixes restricted-protocol headers on gRPC with this (verified on 2.51).
GRPC_ADMIN_HEADER = "triton-grpc-protocol-admin-key"
KEY_ENV = "TRITUNE_ADMIN_KEY"
SUMMARY_QUANTILES = "0.5:0.05,0.9:0.01,0.95:0.005,0.99:0.001"


def admin_key(key_file: Path | str = ".cache/tritune/admin.key", environ=None) -> str:
    """The key that unlocks Triton's model-repository API: ``$TRITUNE_ADMIN_KEY``, else ``key_file`` (created with
    a random key, mode 0600, on first use)."""
    environ = os.environ if environ is None else environ
    if environ.get(KEY_ENV):
        return environ[KEY_ENV]
    path = Path(key_file)
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    os.chmod(path, 0o600)
    return key


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are picked, since the OS may hand the port a
    just-closed socket had to the next bind (two of a server's ports equal: it refuses to start)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def _pytriton_root() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def find_tritonserver(explicit: str | Path | None = None) -> Path:
    """A path given, else the nvidia-pytriton wheel's binary, else ``tritonserver`` on PATH."""
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerError(f"{path} is not an executable tritonserver; pass --tritonserver to a real binary")
        return path
    root = _pytriton_root()
    if root is not None and (root / "bin" / "tritonserver").is_file():
        return root / "bin" / "tritonserver"
    found = shutil.which("tritonserver")
    if found:
        return Path(found)
    raise ServerError(
        "no tritonserver found; `pip install '.[serve]'` (nvidia-pytriton 0.7.0) or pass --tritonserver PATH"
    )


def python_backend_dir(cache_dir: Path) -> Path:
    """A backends folder whose ``python/`` holds the wheel's Python backend plus the stub for this interpreter."""
    root = _pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if root is None:
        raise ServerError(
            "the Python backend comes from nvidia-pytriton; `pip install '.[serve]'` (nvidia-pytriton 0.7.0)"
        )
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version}; use Python 3.8-3.13")
    dest = Path(cache_dir) / f"backends-py{version}"
    if not (dest / "python" / "triton_python_backend_stub").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=".backends-", dir=Path(cache_dir)))
        shutil.copytree(root / "backends" / "python", tmp / "python")
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return dest


def server_env(binary: Path) -> dict[str, str]:
    """PATH with this interpreter's bin first (the stub imports numpy/onnxruntime from there), and the libraries
    the wheel's binary and the stub link: this Python's libpython first, then the wheel's bundled libs."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libs = [sysconfig.get_config_var("LIBDIR") or ""]
    root = _pytriton_root()
    if root is not None:
        libs.append(str(root.parent.parent / "nvidia_pytriton.libs"))
    libs.append(str(binary.parent.parent / "lib"))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [p for p in libs if p and Path(p).is_dir()] + [env.get("LD_LIBRARY_PATH", "")]
    )
    return env


@dataclass
class ServerOptions:
    repository: Path = Path("model_repository")
    host: str = "127.0.0.1"
    http_port: int = 0  # 0: pick a free port
    grpc_port: int = 0
    metrics_port: int = 0
    models: tuple[str, ...] = ()  # loaded at start (explicit model control)
    admin_key: str | None = None  # None: no restriction (tests of the restriction itself only)
    tritonserver: Path | None = None
    cache_dir: Path = Path(".cache/tritune")
    exit_timeout_s: int = 5
    ready_timeout_s: float = 120.0
    log_path: Path | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)


# tritonserver's own handler prints "Signal (N) received." (15 and 2 are a normal stop); glibc prints its heap checks.
FATAL_LOG_LINE = re.compile(
    r"Signal \((?:4|6|7|8|11)\) received|malloc\(\)|malloc_consolidate\(\)|free\(\): |tcache_thread_shutdown|"
    r"double free|corrupted (?:size|double-linked)"
)


class TritonServer:
    """A local tritonserver child process; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self, options: ServerOptions):
        self.options = options
        self.proc: subprocess.Popen | None = None
        self.http_port = options.http_port
        self.grpc_port = options.grpc_port
        self.metrics_port = options.metrics_port
        self._log_file = None
        self.log_path: Path | None = None
        self._log_scanned = 0  # bytes of the log already searched for a fatal signal
        self._fatal: str | None = None

    # -- endpoints -----------------------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{self.options.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.options.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.options.host}:{self.metrics_port}/metrics"

    def command(self, binary: Path, backends: Path) -> list[str]:
        o = self.options
        cmd = [
            str(binary),
            f"--model-repository={Path(o.repository).resolve()}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            f"--http-address={o.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={o.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={o.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--metrics-config=summary_latencies=true",
            f"--metrics-config=summary_quantiles={SUMMARY_QUANTILES}",
            f"--exit-timeout-secs={o.exit_timeout_s}",
            "--log-verbose=0",
        ]
        if o.admin_key:
            cmd += [
                f"--http-restricted-api=model-repository:{ADMIN_HEADER}={o.admin_key}",
                f"--grpc-restricted-protocol=model-repository:{ADMIN_HEADER}={o.admin_key}",
            ]
        cmd += [f"--load-model={m}" for m in o.models]
        return [*cmd, *o.extra_args]

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> TritonServer:
        o = self.options
        if not Path(o.repository).is_dir():
            raise ServerError(f"model repository {o.repository} does not exist; run `tritune build` first")
        for model in o.models:
            if not (Path(o.repository) / model / "config.pbtxt").is_file():
                raise ServerError(f"model {model!r} is not in {o.repository}; build it or drop it from --models")
        binary = find_tritonserver(o.tritonserver)
        Path(o.cache_dir).mkdir(parents=True, exist_ok=True)
        backends = python_backend_dir(Path(o.cache_dir))
        picked = iter(free_ports(3, o.host))
        self.http_port = o.http_port or next(picked)
        self.grpc_port = o.grpc_port or next(picked)
        self.metrics_port = o.metrics_port or next(picked)
        self.log_path = Path(o.log_path) if o.log_path else Path(o.cache_dir) / f"tritonserver-{self.http_port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "w")  # noqa: SIM115 - lives as long as the server
        self._log_scanned, self._fatal = 0, None
        self.proc = subprocess.Popen(
            self.command(binary, backends),
            env=server_env(binary),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: the stubs go with it
        )
        try:
            self.wait_ready(o.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 15) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def fatal_error(self) -> str | None:
        """The first line of the log saying tritonserver aborted (heap corruption, SIGABRT, SIGSEGV), or None.

        Triton 2.51 catches these signals and then may neither exit nor serve (it goes on answering /metrics):
        watching the process alone misses that state. Reads only what the log gained since the last call."""
        if self._fatal is not None or self.log_path is None or not self.log_path.exists():
            return self._fatal
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_scanned)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1  # a line still being written is read next time
        self._log_scanned += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            if FATAL_LOG_LINE.search(line):
                self._fatal = line.strip()
                break
        return self._fatal

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log_tail().replace("\n", " | ")
                raise ServerError(f"tritonserver exited with status {self.proc.returncode} at start: {tail[-400:]}")
            if self.is_ready():
                return
            time.sleep(0.05)
        raise ServerError(f"tritonserver not ready after {timeout_s:.0f} s; see {self.log_path}")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the whole process group (a server stuck in a load ignores SIGTERM)."""
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=timeout_s)
            _kill_group(proc.pid)
            code = proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill_group(pgid: int, timeout_s: float = 5.0) -> None:
    """Make sure no process of the group (stubs included) outlives the server."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
