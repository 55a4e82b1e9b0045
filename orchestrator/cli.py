"""``tritune orchestrate``: keep a live Triton within a p99 SLO, above an accuracy floor."""

from __future__ import annotations

import argparse
import os
import signal
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from orchestrator.capacity import CapacityEstimator, sweep_capacity
from orchestrator.fleet import DnsReplicas, Fleet, FrontDoorLatency, StaticReplicas
from orchestrator.loop import LoopOptions, Orchestrator, scrape
from orchestrator.nvml import guard_inputs, read_gpus
from orchestrator.policy import (
    Context,
    ControllerConfig,
    GuardConfig,
    Objective,
    VariantInfo,
    unmeasured,
    variants_from_manifest,
)
from tritune.apply import Applier
from tritune.client import InferenceClient, served_variant, variant_versions
from tritune.errors import AdminError, ConfigError, RepositoryError, ServerUnavailableError, TrituneError
from tritune.fleet import FleetFile, parse_replica
from tritune.frontdoor import LATENCY_LABELS, LATENCY_METRIC
from tritune.manifest import Manifest
from tritune.model_config import ModelConfig
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
    interval_s: float = 0.5
    duration_s: float = 0.0
    decision_log: Path = Path("runs/decisions.jsonl")
    metrics_port: int = 9100
    metrics_host: str = "127.0.0.1"
    kind: str = "cpu"
    cores: int = 0  # 0: the fleet file's cores_per_replica, else this machine's
    gpu_memory_per_instance_mb: float = 0.0
    max_instances: int = _CONTEXT_DEFAULTS["max_instances"]
    headroom: bool = _CONTEXT_DEFAULTS["headroom"]
    standby: bool = LoopOptions.standby
    upscale_delay_s: float = _GUARDS.upscale_delay_s
    downscale_delay_s: float = _GUARDS.downscale_delay_s
    cooldown_s: float = _GUARDS.cooldown_s
    fleet: Path | None = None
    replica: tuple[str, ...] = ()
    replicas_dns: str = ""
    dns_grpc_port: int = 8001
    dns_metrics_port: int = 8002
    replica_judge_s: float = 2.0
    front_door_metrics_url: str = ""
    latency_metric: str = LATENCY_METRIC
    latency_labels: str = ",".join(f"{k}={v}" for k, v in LATENCY_LABELS.items())
    status_interval_s: float = 5.0
    capacity_from_sweep: Path | None = None


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
    g = p.add_argument_group("fleet (docs/fleet.md); without one, the single Triton at --url")
    g.add_argument("--fleet", type=Path, default=d.fleet, help="fleet file written by `tritune serve --replicas N`")
    g.add_argument(
        "--replica",
        action="append",
        default=list(d.replica),
        metavar="GRPC_URL,METRICS_URL",
        help="a replica, addressed directly; repeat for each",
    )
    g.add_argument(
        "--replicas-dns",
        default=d.replicas_dns,
        metavar="NAME",
        help="find the replicas as every address NAME resolves to, every tick (a headless Service, a compose "
        "service scaled with --scale)",
    )
    g.add_argument("--dns-grpc-port", type=int, default=d.dns_grpc_port, help="(default: %(default)s)")
    g.add_argument("--dns-metrics-port", type=int, default=d.dns_metrics_port, help="(default: %(default)s)")
    g.add_argument(
        "--replica-judge-s",
        type=float,
        default=d.replica_judge_s,
        help="a rolling change waits this long on each replica before the next (default: %(default)s)",
    )
    g.add_argument(
        "--front-door-metrics-url",
        default=d.front_door_metrics_url,
        help="the front door's /metrics with its request-duration histogram: the end-to-end SLO signal "
        "(default: the fleet file's, else none)",
    )
    g.add_argument("--latency-metric", default=d.latency_metric, help="histogram name, seconds (default: %(default)s)")
    g.add_argument(
        "--latency-labels",
        default=d.latency_labels,
        help="label matcher k=v,... selecting the proxied requests (default: %(default)s)",
    )
    g.add_argument(
        "--capacity-from-sweep",
        type=Path,
        default=d.capacity_from_sweep,
        help="a `tritune sweep` result: one replica's capacity at the most accurate allowed variant, until enough "
        "windows have taught it online (tritune_fleet_capacity_ratio, docs/kubernetes.md)",
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
        "--status-interval-s",
        type=float,
        default=d.status_interval_s,
        help="print a status line this often; 0 = never (default: %(default)s)",
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
    g.add_argument(
        "--cores",
        type=int,
        default=d.cores,
        help="CPU cores each Triton may use; 0: the fleet file's cores_per_replica, else this machine's "
        "(default: %(default)s)",
    )
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
    g.add_argument(
        "--standby",
        action=argparse.BooleanOptionalAction,
        default=d.standby,
        help="keep the served variant's first rung down loaded and warm beside it, so that a step down is an "
        "unload with no reload under load; costs that variant's instances in memory (default: %(default)s)",
    )
    g.add_argument("--upscale-delay-s", type=float, default=d.upscale_delay_s, help="(default: %(default)s)")
    g.add_argument("--downscale-delay-s", type=float, default=d.downscale_delay_s, help="(default: %(default)s)")
    g.add_argument("--cooldown-s", type=float, default=d.cooldown_s, help="(default: %(default)s)")


def ladder_variants(repository: Path, model: str, config: ModelConfig) -> tuple[dict[str, VariantInfo], str | None]:
    """The variant ladder from the manifest, or the one served variant, unmeasured, and why the ladder is off.

    A model tritune did not build has no manifest and no version per variant: batching and instances still apply
    to it, and the policy never switches what it serves or judges it against the accuracy floor.
    """
    served = served_variant(config)
    off = unmeasured(served, model)
    try:
        versions = variant_versions(config)
    except AdminError:
        return off, f"{model} was not built by tritune (no variant versions in its config)"
    try:
        manifest = Manifest.read(repository)
    except RepositoryError as exc:
        return off, str(exc)
    variants = variants_from_manifest(manifest, set(versions))
    if not variants:
        return off, f"the manifest in {repository} lists none of {model}'s variants ({', '.join(versions)})"
    return variants, None


def validate(args: OrchestrateOptions) -> None:
    if args.interval_s <= 0:
        raise ConfigError(f"--interval-s must be > 0, got {args.interval_s}")
    if args.cores < 0 or args.max_instances < 1:
        raise ConfigError("--cores must be at least 0 (0: auto) and --max-instances at least 1")
    if args.replica_judge_s < 0 or args.status_interval_s < 0:
        raise ConfigError("--replica-judge-s and --status-interval-s must be >= 0")
    given = [bool(args.fleet), bool(replica_specs(args.replica)), bool(args.replicas_dns)]
    if sum(given) > 1:
        raise ConfigError("give the replicas one way: --fleet, --replica or --replicas-dns")
    parse_labels(args.latency_labels)
    for name in ("upscale_delay_s", "downscale_delay_s", "cooldown_s", "duration_s", "gpu_memory_per_instance_mb"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")


def replica_specs(value: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """``--replica`` values; from a config file or the environment, several separated by spaces or ';'."""
    if isinstance(value, str):
        value = value.replace(";", " ").split()
    return tuple(v for v in value if v)


def parse_labels(spec: str) -> dict[str, str]:
    labels = {}
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--latency-labels {spec!r}: {item!r} is not key=value; e.g. handler=reverse_proxy")
        labels[key.strip()] = value.strip().strip('"')
    return labels


@dataclass(frozen=True)
class Topology:
    """Where the replicas and the front door are, from the options and the fleet file."""

    fleet: Fleet | None
    front_door: FrontDoorLatency | None
    client: InferenceClient  # one replica's, to read the model's config and variants at start
    cores: int


def topology(args: OrchestrateOptions, key: str) -> Topology:
    cores_hint = None
    front_door_url = args.front_door_metrics_url
    source = None
    if args.fleet:
        spec = FleetFile.read(args.fleet)
        source, cores_hint = StaticReplicas(spec.replicas), spec.cores_per_replica
        front_door_url = front_door_url or (spec.front_door.metrics_url if spec.front_door else "")
    elif specs := replica_specs(args.replica):
        source = StaticReplicas(tuple(parse_replica(s, i) for i, s in enumerate(specs)))
    elif args.replicas_dns:
        source = DnsReplicas(args.replicas_dns, args.dns_grpc_port, args.dns_metrics_port)
    cores = args.cores or cores_hint or os.cpu_count() or 1
    front_door = (
        FrontDoorLatency(front_door_url, args.latency_metric, parse_labels(args.latency_labels))
        if front_door_url
        else None
    )
    if source is None:
        client = InferenceClient(args.url, "grpc", timeout_s=120, admin_key=key)
        return Topology(None, front_door, client, cores)
    replicas = source.replicas()
    if not replicas:
        why = getattr(source, "error", None) or "no replica given"
        raise ConfigError(f"{why}; check the fleet file, --replica or --replicas-dns")
    fleet = Fleet(source, args.model, key, scrape=scrape, log=lambda *a, **k: None, judge_s=args.replica_judge_s)
    # The first replica that answers tells the model's config; one that does not answer is said so in one line.
    last = None
    for r in replicas:
        client = InferenceClient(r.grpc_url, "grpc", timeout_s=10, admin_key=key)
        try:
            client.model_config(args.model)
        except TrituneError as exc:
            last = exc
            client.close()
            continue
        return Topology(fleet, front_door, client, cores)
    raise ServerUnavailableError(f"no replica answers ({last}); start them (`tritune serve --replicas N`) first")


def build(args: OrchestrateOptions) -> Orchestrator:
    validate(args)
    objective = Objective(args.slo_p99_ms, args.accuracy_floor)
    key = admin_key(args.admin_key_file)
    topo = topology(args, key)
    client = topo.client
    config = client.model_config(args.model)
    variants, ladder_off = ladder_variants(args.repository, args.model, config)
    if ladder_off:
        print(
            f"variant ladder off: {ladder_off}; tuning batching and instances only, and --accuracy-floor cannot be "
            "judged (measure variants into a manifest with `tritune measure` to turn the ladder on)",
            flush=True,
        )
    if config.max_batch_size == 0:
        print(
            f"batching off: {args.model} has no batch dimension (max_batch_size 0); tuning instances only",
            flush=True,
        )
    ctx = Context(
        objective=objective,
        variants=variants,
        cores=topo.cores,
        kind=args.kind,
        max_instances=args.max_instances,
        max_batch_size=config.max_batch_size,
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
        status_interval_s=args.status_interval_s,
        standby=args.standby,
    )
    capacity = CapacityEstimator(
        sweep_capacity(args.capacity_from_sweep, ctx.most_accurate().name) if args.capacity_from_sweep else None
    )
    orch = Orchestrator(
        Applier(client, args.model), ctx, options, fleet=topo.fleet, front_door=topo.front_door, capacity=capacity
    )
    if topo.fleet is not None:
        topo.fleet.log = orch.log  # each replica's apply goes to the decision log
    return orch


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
    where = (
        f"the fleet in {args.fleet}"
        if args.fleet
        else f"{len(orch.fleet.replicas) or 'the'} replicas"
        if orch.fleet is not None
        else args.url
    )
    print(
        f"orchestrating {args.model} at {where}: p99 ≤ {args.slo_p99_ms:g} ms, top-1 ≥ {args.accuracy_floor}; "
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
