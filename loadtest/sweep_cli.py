"""``tritune sweep``: offline search of serving configs against a p99 SLO; frontier and best config as JSON + plot."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from loadtest.measure import StabilityRule
from loadtest.report import write_report
from loadtest.run import new_run_dir
from loadtest.sweep import SweepGenerator, SweepSpace, run_sweep, write_sweep
from tritune.apply import Applier
from tritune.client import InferenceClient, served_variant, variant_versions
from tritune.errors import AdminError, ConfigError, RepositoryError
from tritune.manifest import Manifest
from tritune.samples import Samples, load_samples, synthesize
from tritune.server import ServerOptions, TritonServer, admin_key
from tritune.settings import options_from_args
from tritune.signature import Signature


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--{name} takes comma-separated integers, got {text!r}") from None


def parse_delays(text: str) -> tuple[int | None, ...]:
    out = []
    for part in (x.strip().lower() for x in text.split(",") if x.strip()):
        if part in ("off", "none"):
            out.append(None)
        else:
            try:
                out.append(int(part))
            except ValueError:
                raise ConfigError(f"--queue-delays-us: {part!r} is neither 'off' nor microseconds") from None
    return tuple(out)


def parse_preferred(text: str) -> tuple[tuple[int, ...], ...]:
    """``none,4/8,16``: no preferred size; sizes 4 and 8; size 16."""
    out = []
    for part in (x.strip().lower() for x in text.split(",") if x.strip()):
        if part in ("none", "-"):
            out.append(())
        else:
            try:
                out.append(tuple(int(s) for s in part.split("/")))
            except ValueError:
                raise ConfigError(f"--preferred-batch-sizes: {part!r} is not 'none' or sizes like 4/8") from None
    return tuple(out)


@dataclass(frozen=True)
class SweepOptions:
    """``tritune sweep``'s options; the command line's defaults are these."""

    repository: Path = Path("model_repository")
    url: str = ""  # empty: a private Triton on free ports
    http_url: str = ""  # the same Triton's HTTP endpoint, for the measurements (with --url)
    model: str = "cnn"
    admin_key_file: Path = Path(".cache/tritune/admin.key")
    slo_p99_ms: float = 50.0
    accuracy_floor: float = 0.0
    variants: str = ""
    instances: str = "1,2"
    queue_delays_us: str = "off,0,1000,4000"
    preferred_batch_sizes: str = "none"
    concurrency: str = "1,4,16"
    batch_size: int = 1
    data: Path | None = None  # the samples sent (default: the seed's held-out images, or random for another model)
    window_s: float = 1.0
    stable_windows: int = 3
    tolerance: float = 0.10
    max_windows: int = 10
    out: Path = Path("runs")
    run_name: str = ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SweepOptions()
    g = p.add_argument_group("target")
    g.add_argument("--repository", type=Path, default=d.repository, help="(default: %(default)s)")
    g.add_argument(
        "--url", default=d.url, help="gRPC host:port of a running Triton; empty starts a private one (default)"
    )
    g.add_argument(
        "--http-url",
        default=d.http_url,
        help="with --url: the same Triton's HTTP host:port, where the measurements go (the cheaper client: over "
        "gRPC, Python's client costs twice perf_analyzer's CPU and reads ~25%% less throughput on a small machine)",
    )
    g.add_argument("--model", default=d.model, help="public model to sweep (default: %(default)s)")
    g.add_argument("--admin-key-file", type=Path, default=d.admin_key_file, help="for --url")
    g = p.add_argument_group("objective")
    g.add_argument("--slo-p99-ms", type=float, default=d.slo_p99_ms, help="(default: %(default)s)")
    g.add_argument(
        "--accuracy-floor", type=float, default=d.accuracy_floor, help="variants below this top-1 are skipped"
    )
    g = p.add_argument_group("space")
    g.add_argument("--variants", default=d.variants, help="comma-separated (default: every variant above the floor)")
    g.add_argument("--instances", default=d.instances, help="(default: %(default)s)")
    g.add_argument("--queue-delays-us", default=d.queue_delays_us, help="'off' disables dynamic batching")
    g.add_argument(
        "--preferred-batch-sizes", default=d.preferred_batch_sizes, help="e.g. none,4/8,16 (default: %(default)s)"
    )
    g.add_argument("--concurrency", default=d.concurrency, help="client concurrency levels (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per request (default: %(default)s)")
    g.add_argument(
        "--data",
        type=Path,
        default=None,
        help="samples to send: .npz, image folder or perf_analyzer JSON (default: the seed CNN's held-out images, "
        "or random samples of the model's signature)",
    )
    g = p.add_argument_group("measurement")
    g.add_argument("--window-s", type=float, default=d.window_s, help="(default: %(default)s)")
    g.add_argument(
        "--stable-windows", type=int, default=d.stable_windows, help="windows within tolerance (default: %(default)s)"
    )
    g.add_argument("--tolerance", type=float, default=d.tolerance, help="(default: %(default)s)")
    g.add_argument(
        "--max-windows", type=int, default=d.max_windows, help="give up on stability after (default: %(default)s)"
    )
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=d.out, help="(default: %(default)s)")
    g.add_argument("--run-name", default=d.run_name, help="(default: sweep-<UTC time>)")


def space_from_args(args: SweepOptions, available: dict[str, float]) -> SweepSpace:
    if args.variants:
        variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
        unknown = [v for v in variants if v not in available]
        if unknown:
            raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; the model has {', '.join(available)}")
    else:
        variants = tuple(v for v in available if available[v] >= args.accuracy_floor)
    below = [v for v in variants if available[v] < args.accuracy_floor]
    if below:
        raise ConfigError(f"variant(s) {', '.join(below)} are below --accuracy-floor {args.accuracy_floor}")
    if not variants:
        raise ConfigError(f"no variant reaches --accuracy-floor {args.accuracy_floor}; lower it")
    return SweepSpace(
        variants=variants,
        instances=_ints(args.instances, "instances"),
        queue_delays_us=parse_delays(args.queue_delays_us),
        preferred_batch_sizes=parse_preferred(args.preferred_batch_sizes),
        concurrency=_ints(args.concurrency, "concurrency"),
    )


def sweep_samples(args: SweepOptions, manifest: Manifest | None, signature: Signature) -> Samples:
    """``--data``; else the seed CNN's held-out images for a model with its interface; else random samples."""
    from builders.models import SEED_SIGNATURE

    if args.data:
        return load_samples(args.data, signature, "--data")
    if signature == SEED_SIGNATURE and manifest is not None:
        from builders.data import DATASETS, load_dataset

        ds_name = manifest.dataset.get("name", "auto")
        data = load_dataset(ds_name if ds_name in DATASETS else "auto", manifest.data_dir, held_out_only=True)
        x = data.x_test.astype(np.float32)
        return Samples({signature.inputs[0].name: x}, data.y_test, f"{data.name} held-out images")
    return synthesize(signature, 256)


def sweep(args: SweepOptions, run_dir: Path, should_stop=None, progress=print) -> dict:
    """The sweep against ``args.url`` or a private Triton; writes ``sweep.json`` into ``run_dir``."""
    rule = StabilityRule(args.window_s, args.stable_windows, args.tolerance, args.max_windows)
    if rule.window_s <= 0 or rule.stable_windows < 1 or rule.max_windows < rule.stable_windows:
        raise ConfigError("--window-s must be > 0 and --max-windows >= --stable-windows >= 1")
    try:
        manifest: Manifest | None = Manifest.read(args.repository)
    except RepositoryError:
        manifest = None  # a model tritune did not build: its served variant only
    server = None
    url = args.url
    key = admin_key(args.admin_key_file)
    if not url:
        server = TritonServer(
            ServerOptions(
                repository=args.repository, models=(args.model,), admin_key=key, log_path=run_dir / "tritonserver.log"
            )
        ).start()
        url = server.grpc_url
    try:
        client = InferenceClient(url, "grpc", timeout_s=120, admin_key=key)
        config = client.model_config(args.model)
        signature = client.signature(args.model)
        try:
            versions = variant_versions(config) if manifest is not None else {}
        except AdminError:
            versions = {}
        available = {v: float(manifest.variants[v].top1) for v in versions if v in manifest.variants}
        if not available:
            # No ladder to sweep: the served variant, whose accuracy nothing measured (no floor can exclude it).
            available = {served_variant(config): float("inf")}
            progress(f"sweep: no manifest lists {args.model}'s variants; sweeping batching and instances only")
        space = space_from_args(args, available)
        if config.max_batch_size == 0:  # Triton refuses dynamic batching without a batch dimension
            space = replace(space, queue_delays_us=(None,))
            progress(f"sweep: {args.model} has no batch dimension (max_batch_size 0); sweeping instances only")
        applier = Applier(client, args.model)
        baseline = applier.current()[1]
        gen = SweepGenerator(space, baseline, args.slo_p99_ms)
        progress(
            f"sweep: up to {space.size} points (+ baseline) on {url}, SLO p99 ≤ {args.slo_p99_ms:g} ms; "
            f"baseline first: {baseline.describe()}"
        )
        samples = sweep_samples(args, manifest, signature)
        progress(f"sweep: sending {samples.source}")
        if server is not None:
            measure_url, protocol = server.http_url, "http"
        elif args.http_url:
            measure_url, protocol = args.http_url, "http"
        else:
            measure_url, protocol = url, "grpc"
            progress("sweep: measuring over gRPC; give --http-url for the cheaper HTTP client (docs/loadtest.md)")
        result = run_sweep(
            gen,
            applier,
            measure_url,
            args.model,
            samples.inputs,
            samples.labels,
            args.batch_size,
            rule,
            progress=progress,
            should_stop=should_stop,
            protocol=protocol,
        )
        result["measured_on"] = measure_url
        result["protocol"] = protocol
        result["batch_size"] = args.batch_size
        write_sweep(result, run_dir / "sweep.json")
        return result
    finally:
        if server:
            server.stop()


def run(ns: argparse.Namespace) -> int:
    args = options_from_args(SweepOptions, ns)
    run_dir = new_run_dir(args.out, "sweep", args.run_name)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        result = sweep(args, run_dir, should_stop=lambda: stop["now"])
    except KeyboardInterrupt:
        print("interrupted: the sweep stopped; the served config was restored", file=sys.stderr)
        return 130
    report = write_report(
        run_dir, f"tritune sweep: {args.model}", slo_p99_ms=args.slo_p99_ms, repository=args.repository, sweep=result
    )
    best = result["best"]
    if best:
        print(
            f"best within SLO: {json.dumps(best['config'])} at concurrency {best['concurrency']}: "
            f"{best['measurement']['throughput_infer_per_s']} infer/s, p99 {best['measurement']['p99_ms']} ms"
            + (
                f" ({result['best_vs_baseline_throughput']}× the baseline)"
                if result["best_vs_baseline_throughput"]
                else ""
            )
        )
    else:
        print(f"no point met p99 ≤ {args.slo_p99_ms:g} ms; raise the SLO or lower the concurrency levels")
    print(f"frontier: {len(result['frontier'])} points; sweep.json and report: {run_dir}\nreport: {report}")
    return 0 if best else 1
