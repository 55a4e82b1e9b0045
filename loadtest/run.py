"""Run Locust headless (or with its web UI) against Triton and collect a run folder.

A run folder holds Locust's own outputs (``locust_stats.csv``, ``locust_stats_history.csv``, ``locust_failures.csv``,
``locust.html``, ``locust.json``, ``locust.log``), the per-request records the users wrote (``requests-*.csv``),
``result.json`` (what this module concluded) and, from :mod:`loadtest.report`, ``report.html``.

A run is *invalid* when the load generator itself saturated (Locust's CPU warning above 90%): its latencies then
measure the client, not the server. Spread the users over workers (``--workers N``) or lower the load.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from loadtest.shapes import parse_shape
from tritune import slo
from tritune.errors import ConfigError, LoadTestError
from tritune.server import free_port

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
USER_CLASSES = {"http": ("TritonHttpUser",), "grpc": ("TritonGrpcUser",), "both": ("TritonHttpUser", "TritonGrpcUser")}


@dataclass
class LoadTestOptions:
    http_url: str = "127.0.0.1:8000"
    grpc_url: str = "127.0.0.1:8001"
    protocol: str = "http"
    model: str = "cnn"
    batch_size: int = 1
    shape: str = "constant:value=4,duration_s=30"
    open_loop: bool = False
    open_users: int = 4
    wait_ms: float = 0.0
    spawn_rate: float = 0.0  # 0: reach each new user count within a second
    workers: int = 0  # 0: one local process; N: a master and N worker processes on this machine
    out_dir: Path = Path("runs")
    run_name: str = ""
    web: bool = False  # Locust's web UI instead of headless (the run starts from the browser)
    web_port: int = 8089
    data: Path | None = None  # the samples sent: .npz, image folder or perf_analyzer JSON (checked against the model)
    dataset: str = "auto"  # without --data, for the seed CNN: its held-out images (auto: the manifest's data set)
    repository: Path = Path("model_repository")  # whose manifest names the data set the seed CNN was built on
    data_dir: Path = Path("data")
    request_timeout_s: float = 30.0
    extra_locust_args: tuple[str, ...] = field(default_factory=tuple)

    def validate(self) -> None:
        if self.protocol not in USER_CLASSES:
            raise ConfigError(f"--protocol must be one of {', '.join(USER_CLASSES)}, got {self.protocol!r}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers < 0 or self.open_users < 1:
            raise ConfigError("--workers must be >= 0 and --open-users >= 1")
        if self.wait_ms < 0 or self.request_timeout_s <= 0:
            raise ConfigError("--wait-ms must be >= 0 and --request-timeout-s > 0")
        parse_shape(self.shape)  # raises a one-line ConfigError on a bad spec


@dataclass
class LoadTestResult:
    run_dir: Path
    exit_code: int
    valid: bool
    summary: dict
    invalid_reason: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


def new_run_dir(out_dir: Path, prefix: str, name: str = "") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out_dir) / (name or f"{prefix}-{stamp}")
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = Path(out_dir) / f"{name or f'{prefix}-{stamp}'}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def write_images(path: Path, dataset: str = "auto", data_dir: Path = Path("data"), limit: int = 1024) -> Path:
    """The seed CNN's held-out images (never trained on), with their labels, as ``--data`` takes them."""
    from builders.data import load_dataset
    from builders.models import INPUT_NAME

    data = load_dataset(dataset, data_dir, held_out_only=True)
    np.savez(path, **{INPUT_NAME: data.x_test[:limit].astype(np.float32), "labels": data.y_test[:limit]})
    return path


def built_on(repository: Path) -> str:
    """The data set the repository's seed CNN was built on (its manifest's), else ``auto``."""
    from builders.data import DATASETS
    from tritune.errors import RepositoryError
    from tritune.manifest import Manifest

    try:
        name = Manifest.read(repository).dataset.get("name", "auto")
    except RepositoryError:
        return "auto"
    return name if name in DATASETS else "auto"


def prepare_data(opts: LoadTestOptions, run_dir: Path) -> tuple[Path | None, str]:
    """What the users send, checked against the model Triton serves before Locust starts: ``--data``; else, for a
    model with the seed CNN's interface, its held-out images; else random samples of the model's signature."""
    from builders.models import SEED_SIGNATURE
    from tritune.client import InferenceClient
    from tritune.samples import load_samples

    with InferenceClient(opts.http_url, "http", timeout_s=30) as client:
        config = client.model_config(opts.model)
        signature = client.signature(opts.model)
    if signature.batched and opts.batch_size > config.max_batch_size:
        raise ConfigError(
            f"--batch-size {opts.batch_size} is over {opts.model}'s max_batch_size {config.max_batch_size}; lower it"
        )
    if not signature.batched and opts.batch_size != 1:
        raise ConfigError(f"{opts.model} has no batch dimension (max_batch_size 0): --batch-size must be 1")
    if opts.data:
        samples = load_samples(opts.data, signature, "--data")
        return Path(opts.data), samples.source
    if signature == SEED_SIGNATURE:
        dataset = opts.dataset if opts.dataset != "auto" else built_on(opts.repository)
        path = write_images(run_dir / "images.npz", dataset, opts.data_dir)
        return path, f"the seed CNN's held-out images ({dataset})"
    return None, f"random samples of {signature.describe()} (no --data given)"


def locust_command(
    opts: LoadTestOptions, run_dir: Path, data: Path | None, role: str = "local", master_port: int = 0
) -> list[str]:
    shape = parse_shape(opts.shape)
    if importlib.util.find_spec("locust") is None:  # the CPU stack's extra; the GPU builder image leaves it out
        raise LoadTestError("Locust is not installed here: `pip install '.[serve]'` (or `make install`)")
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    common = [
        "--host",
        f"http://{opts.http_url}",
        "--grpc-url",
        opts.grpc_url,
        "--triton-model",
        opts.model,
        "--batch-size",
        str(opts.batch_size),
        *(("--data", str(data)) if data else ()),
        "--wait-ms",
        str(opts.wait_ms),
        "--load-shape",
        opts.shape,
        "--open-users",
        str(opts.open_users),
        "--request-timeout-s",
        str(opts.request_timeout_s),
        "--tritune-out",
        str(run_dir),
    ]
    if opts.open_loop:
        common.append("--open-loop")
    if role == "worker":
        return [
            *cmd,
            "--worker",
            "--master-host",
            "127.0.0.1",
            "--master-port",
            str(master_port),
            *common,
            "--logfile",
            str(run_dir / f"locust-worker-{master_port}-{time.monotonic_ns()}.log"),
        ]
    prefix = str(run_dir / "locust")
    cmd += common
    cmd += ["--csv", prefix, "--csv-full-history", "--html", prefix + ".html", "--json-file", prefix]
    cmd += ["--exit-code-on-error", "1", "--stop-timeout", "5", "--logfile", str(run_dir / "locust.log")]
    if opts.spawn_rate:
        cmd += ["--spawn-rate", str(opts.spawn_rate)]
    if opts.web:
        # The UI stays up after the shape ends, until Ctrl-C.
        cmd += ["--web-host", "127.0.0.1", "--web-port", str(opts.web_port), "--autostart"]
    else:
        # The shape ends the run; the time limit is a safety net against a hung user.
        cmd += ["--headless", "--only-summary", "-t", f"{int(shape.duration_s + 30)}s"]
    if role == "master":
        cmd += ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port)]
        cmd += ["--expect-workers", str(opts.workers), "--expect-workers-max-wait", "60"]
    cmd += list(opts.extra_locust_args)
    cmd += list(USER_CLASSES[opts.protocol])
    return cmd


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    # SIGINT first: Locust then writes its CSV/HTML/JSON and our summary before it exits.
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def run_locust(
    opts: LoadTestOptions,
    run_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> LoadTestResult:
    """Run one load test to the end of its shape (or until ``should_stop()``); always stops every child."""
    opts.validate()
    run_dir = run_dir or new_run_dir(opts.out_dir, "loadtest", opts.run_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    images, data_source = prepare_data(opts, run_dir)
    if progress:
        progress(f"sending {data_source}")
    shape = parse_shape(opts.shape)
    (run_dir / "loadtest_options.json").write_text(json.dumps(asdict(opts), indent=2, default=str) + "\n")
    procs: list[subprocess.Popen] = []
    master_port = free_port() if opts.workers else 0
    role = "master" if opts.workers else "local"
    start = time.monotonic()
    try:
        procs.append(
            subprocess.Popen(
                locust_command(opts, run_dir, images, role, master_port),
                env=_env(),
                stdout=subprocess.DEVNULL,
                stderr=(run_dir / "locust.stderr").open("w"),
                start_new_session=True,
            )
        )
        for _ in range(opts.workers):
            procs.append(
                subprocess.Popen(
                    locust_command(opts, run_dir, images, "worker", master_port),
                    env=_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        master = procs[0]
        last_report = 0.0
        while master.poll() is None:
            if should_stop and should_stop():
                break
            elapsed = time.monotonic() - start
            if progress and elapsed - last_report >= 5:
                last_report = elapsed
                v = shape.value(elapsed)
                unit = "req/s" if opts.open_loop else "users"
                progress(f"load {elapsed:5.0f}/{shape.duration_s:.0f} s, target {v or 0:.0f} {unit}")
            time.sleep(0.2)
    finally:
        for p in procs:
            _stop(p)
        for p in procs[1:]:  # workers quit when the master does; make sure
            if p.poll() is None:
                p.kill()
    return collect(run_dir, procs[0].returncode if procs else 1)


def answers(summary: dict) -> str:
    """The answers' accuracy in words. ``wrong_answers`` counts misclassified images, not requests: with batch-8
    requests a count of wrong answers beside the count of requests would read as a share of them."""
    if not summary.get("answers_checked", True):
        return "answers not checked (the data sent has no labels, or the model gives no class scores)"
    wrong = summary["wrong_answers"]
    images = (summary["requests"] - summary["failures"]) * summary.get("batch_size", 1)
    if not images:
        return f"{wrong} misclassified samples"
    return f"{wrong:,} of {images:,} answered samples misclassified (top-1 {1 - wrong / images:.3f})"


def read_requests(run_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(Path(run_dir).glob("requests-*.csv")):
        with path.open() as fh:
            for r in csv.DictReader(fh):
                rows.append(
                    {
                        "end_epoch_s": float(r["end_epoch_s"]),
                        "type": r["type"],
                        "latency_ms": float(r["latency_ms"]),
                        "ok": r["ok"] == "True",
                        "wrong_answers": int(r["wrong_answers"]),
                    }
                )
    rows.sort(key=lambda r: r["end_epoch_s"])
    return rows


def _csv_number(text: str | None) -> float | None:
    """A number from Locust's stats CSV, which writes "N/A" for a percentile no successful request measured (every
    request of a row failed) and leaves some cells empty."""
    try:
        return float(text) if text not in (None, "", "N/A") else None
    except ValueError:
        return None


def collect(run_dir: Path, exit_code: int) -> LoadTestResult:
    """Read what Locust and the users wrote into one result (also written as ``result.json``)."""
    summary_path = run_dir / "locust_summary.json"
    if not summary_path.exists():
        tail = ""
        for name in ("locust.stderr", "locust.log"):
            p = run_dir / name
            if p.exists() and p.read_text().strip():
                tail = p.read_text().strip().splitlines()[-1][:300]
                break
        raise LoadTestError(f"Locust exited ({exit_code}) without a summary: {tail or 'no log'}; see {run_dir}")
    summary = json.loads(summary_path.read_text())
    stats = {}
    stats_csv = run_dir / "locust_stats.csv"
    if stats_csv.exists():
        with stats_csv.open() as fh:
            for row in csv.DictReader(fh):
                stats[f"{row['Type']} {row['Name']}".strip()] = {
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "p50_ms": _csv_number(row["50%"]),
                    "p95_ms": _csv_number(row["95%"]),
                    "p99_ms": _csv_number(row["99%"]),
                    "throughput_req_per_s": round(_csv_number(row["Requests/s"]) or 0.0, 1),
                }
    rows = read_requests(run_dir)
    ok = np.array([r["latency_ms"] for r in rows if r["ok"]])
    if rows:
        span = max(rows[-1]["end_epoch_s"] - rows[0]["end_epoch_s"], 1e-9)
        summary.update(
            client_p50_ms=slo.percentile_ms(ok, 50),
            client_p99_ms=slo.percentile_ms(ok, 99),
            throughput_req_per_s=round(len(ok) / span, 1),
        )
    summary["stats"] = stats
    cpu = summary.get("cpu_warning") or summary.get("worker_cpu_warning")
    reason = (
        "the load generator passed 90% CPU (Locust's warning): latencies measure the client; "
        "add --workers or lower the load"
        if cpu
        else ""
    )
    result = LoadTestResult(run_dir, exit_code, valid=not cpu, summary=summary, invalid_reason=reason)
    (run_dir / "result.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result
