"""``tritune orchestrate``: keep a live Triton within a p99 SLO, above an accuracy floor."""

from __future__ import annotations

import argparse
import os
import signal
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from orchestrator.loop import LoopOptions, Orchestrator
from orchestrator.nvml import guard_inputs, read_gpus
from orchestrator.policy import Context, ControllerConfig, GuardConfig, Objective, variants_from_manifest
from tritune.apply import Applier
from tritune.client import InferenceClient, variant_versions
from tritune.errors import ConfigError
from tritune.manifest import Manifest
from tritune.server import admin_key
from tritune.settings import options_from_args

# The guard rails' and the context's defaults are the policy's own; the options only expose them.
_GUARDS = GuardConfig()
_CONTEXT_DEFAULTS = {f.name: f.default for f in fields(Context) if f.default is not MISSING}


@dataclass(frozen=True)
class OrchestrateOptions:
    """``tritune orchestrate``'s options; the command line's defaults are these."""

    slo_p99_ms: float = 50.0
    accuracy_floor: float = 0.0
    model: str = "cnn"
    url: str = "127.0.0.1:8001"
    metrics_url: str = "http://127.0.0.1:8002/metrics"
    repository: Path = Path("model_repository")
    admin_key_file: Path = Path(".cache/tritune/admin.key")
    interval_s: float = 2.0
    duration_s: float = 0.0
    decision_log: Path = Path("runs/decisions.jsonl")
    metrics_port: int = 9100
    metrics_host: str = "127.0.0.1"
    kind: str = "cpu"
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    gpu_memory_per_instance_mb: float = 0.0
    max_instances: int = _CONTEXT_DEFAULTS["max_instances"]
    headroom: bool = _CONTEXT_DEFAULTS["headroom"]
    upscale_delay_s: float = _GUARDS.upscale_delay_s
    downscale_delay_s: float = _GUARDS.downscale_delay_s
    cooldown_s: float = _GUARDS.cooldown_s


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = OrchestrateOptions()
    g = p.add_argument_group("objective")
    g.add_argument(
        "--slo-p99-ms", type=float, default=d.slo_p99_ms, help="p99 latency SLO in ms (default: %(default)s)"
    )
    g.add_argument(
        "--accuracy-floor",
        type=float,
        default=d.accuracy_floor,
        help="lowest held-out top-1 (0..1) a served variant may have (default: %(default)s)",
    )
    g = p.add_argument_group("Triton")
    g.add_argument("--model", default=d.model, help="the public model to tune (default: %(default)s)")
    g.add_argument("--url", default=d.url, help="Triton gRPC endpoint (default: %(default)s)")
    g.add_argument("--metrics-url", default=d.metrics_url, help="(default: %(default)s)")
    g.add_argument(
        "--repository",
        type=Path,
        default=d.repository,
        help="for the manifest's accuracy and cost of each variant (default: %(default)s)",
    )
    g.add_argument(
        "--admin-key-file",
        type=Path,
        default=d.admin_key_file,
        help="admin key file, unless TRITUNE_ADMIN_KEY is set",
    )
    g = p.add_argument_group("loop")
    g.add_argument(
        "--interval-s", type=float, default=d.interval_s, help="scrape and decide every (default: %(default)s)"
    )
    g.add_argument("--duration-s", type=float, default=d.duration_s, help="stop after this long; 0 runs until Ctrl-C")
    g.add_argument("--decision-log", type=Path, default=d.decision_log, help="(default: %(default)s)")
    g.add_argument(
        "--metrics-port", type=int, default=d.metrics_port, help="own /metrics port; 0 = off (default: %(default)s)"
    )
    g.add_argument(
        "--metrics-host",
        default=d.metrics_host,
        help="address of the own /metrics; 0.0.0.0 only inside a private network, e.g. compose (default: %(default)s)",
    )
    g = p.add_argument_group("guard rails")
    g.add_argument(
        "--kind", choices=("cpu", "gpu"), default=d.kind, help="what Triton's instances run on (default: %(default)s)"
    )
    g.add_argument("--cores", type=int, default=d.cores, help="CPU cores Triton may use (default: this machine's)")
    g.add_argument(
        "--gpu-memory-per-instance-mb",
        type=float,
        default=d.gpu_memory_per_instance_mb,
        help="gpu: GPU memory one more instance takes; 0 estimates it with NVML at start (default: %(default)s)",
    )
    g.add_argument("--max-instances", type=int, default=d.max_instances, help="(default: %(default)s)")
    g.add_argument(
        "--headroom",
        action=argparse.BooleanOptionalAction,
        default=d.headroom,
        help="cpu: hold batching and one instance per core whatever the load, set up while the load is low, so "
        "that a rise needs no reload under load; ignored on gpu (default: %(default)s)",
    )
    g.add_argument("--upscale-delay-s", type=float, default=d.upscale_delay_s, help="(default: %(default)s)")
    g.add_argument("--downscale-delay-s", type=float, default=d.downscale_delay_s, help="(default: %(default)s)")
    g.add_argument("--cooldown-s", type=float, default=d.cooldown_s, help="(default: %(default)s)")


def context_from_manifest(
    repository: Path,
    public_versions: dict[str, int],
    objective: Objective,
    cores: int,
    max_instances: int,
    max_batch_size: int,
    kind: str = "cpu",
    gpu_memory_per_instance_bytes: float = 0.0,
    headroom: bool = _CONTEXT_DEFAULTS["headroom"],
) -> Context:
    variants = variants_from_manifest(Manifest.read(repository), set(public_versions))
    if not variants:
        raise ConfigError(f"the manifest in {repository} lists none of the public model's variants; rebuild")
    return Context(
        objective=objective,
        variants=variants,
        cores=cores,
        kind=kind,
        max_instances=max_instances,
        max_batch_size=max_batch_size,
        gpu_memory_per_instance_bytes=gpu_memory_per_instance_bytes,
        headroom=headroom,
    )


def validate(args: OrchestrateOptions) -> None:
    if args.interval_s <= 0:
        raise ConfigError(f"--interval-s must be > 0, got {args.interval_s}")
    if args.cores < 1 or args.max_instances < 1:
        raise ConfigError("--cores and --max-instances must be at least 1")
    for name in ("upscale_delay_s", "downscale_delay_s", "cooldown_s", "duration_s", "gpu_memory_per_instance_mb"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")


def build(args: OrchestrateOptions) -> Orchestrator:
    validate(args)
    objective = Objective(args.slo_p99_ms, args.accuracy_floor)
    client = InferenceClient(args.url, "grpc", timeout_s=120, admin_key=admin_key(args.admin_key_file))
    config = client.model_config(args.model)
    ctx = context_from_manifest(
        args.repository,
        variant_versions(config),
        objective,
        args.cores,
        args.max_instances,
        config.max_batch_size,
        kind=args.kind,
        gpu_memory_per_instance_bytes=gpu_memory_per_instance_bytes(args, config.instance_count),
        headroom=args.headroom,
    )
    guards = GuardConfig(
        upscale_delay_s=args.upscale_delay_s, downscale_delay_s=args.downscale_delay_s, cooldown_s=args.cooldown_s
    )
    options = LoopOptions(
        model=args.model,
        metrics_url=args.metrics_url,
        interval_s=args.interval_s,
        decision_log=args.decision_log,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        controller=ControllerConfig(guards=guards),
    )
    return Orchestrator(Applier(client, args.model), ctx, options)


def gpu_memory_per_instance_bytes(args: OrchestrateOptions, instances: int) -> float:
    """The GPU guard's per-instance memory: given, else estimated once from NVML; 0 (no memory bound) on the CPU or
    when NVML cannot tell, which is said once at start."""
    if args.kind != "gpu":
        return 0.0
    if args.gpu_memory_per_instance_mb:
        return args.gpu_memory_per_instance_mb * 1e6
    readings, reason = read_gpus()
    estimate = guard_inputs(readings, instances).gpu_memory_per_instance_bytes if readings else None
    if estimate is None:
        why = reason if readings is None else "NVML shows no server memory"
        print(
            f"warning: no GPU memory estimate per instance ({why}); instances are bounded by --max-instances only: "
            "pass --gpu-memory-per-instance-mb",
            flush=True,
        )
        return 0.0
    return estimate


def run(ns: argparse.Namespace) -> int:
    args = options_from_args(OrchestrateOptions, ns)
    orch = build(args)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: orch.stop())
    print(
        f"orchestrating {args.model} at {args.url}: p99 ≤ {args.slo_p99_ms:g} ms, top-1 ≥ {args.accuracy_floor}; "
        f"decisions → {args.decision_log}"
        + (f", metrics on {args.metrics_host}:{args.metrics_port}" if args.metrics_port else ""),
        flush=True,
    )
    orch.run(args.duration_s or None)
    s = orch.state
    print(
        f"stopped: {s.actions} actions, {s.rollbacks} rollbacks, {s.restarts} restarts; "
        f"serving {orch.current.describe() if orch.current else '?'}",
        flush=True,
    )
    return 0
