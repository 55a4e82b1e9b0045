"""``tritune measure``: turn a Triton repository's own variant models into tritune's accuracy ladder.

A user who already serves, say, ``textcls`` and a quantized ``textcls_int8`` (any backend, built by any tool)
names them as variants. Each is measured *through Triton* on the user's data — accuracy (top-1 against labels, or
agreement with the reference variant without them) and served latency at batch 1 and 32 — and the result is
written into the repository as tritune writes a build: a public model whose versions are the variants' own version
folders (so the orchestrator switches between them with a config-only reload), and the manifest. Nothing in the
variants' own folders changes; the public model and the manifest are staged and moved into place together.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from builders.repository import MANIFEST, StagedRepository
from tritune.accuracy import choose
from tritune.client import InferenceClient, with_variant
from tritune.compare import pack, wilson
from tritune.errors import ConfigError, RepositoryError
from tritune.manifest import Manifest, VariantRecord, version_numbers
from tritune.model_config import ModelConfig
from tritune.samples import Samples, load_samples, synthesize
from tritune.server import ServerOptions, TritonServer, admin_key
from tritune.signature import Signature

LATENCY_REQUESTS = 30  # served latency: the median of this many requests at each batch size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="(default: %(default)s)")
    p.add_argument("--public-model", required=True, help="the one name clients will call; written by this command")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="a variant and the repository's model that is it, e.g. fp32=textcls; the first is the reference",
    )
    p.add_argument("--eval-data", type=Path, default=None, help=".npz, image folder or perf_analyzer JSON")
    p.add_argument("--eval-size", type=int, default=0, help="the first N samples (default: all; 256 random)")
    p.add_argument("--output", default=None, help="the output judged (default: the first with class scores)")
    p.add_argument("--url", default="", help="gRPC host:port of a Triton serving the variants (default: start one)")
    p.add_argument("--admin-key-file", type=Path, default=Path(".cache/tritune/admin.key"))
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/tritune"), help="(default: %(default)s)")


def parse_variants(items: list[str]) -> dict[str, str]:
    variants: dict[str, str] = {}
    for item in items:
        name, eq, model = item.partition("=")
        if not eq or not name.strip() or not model.strip():
            raise ConfigError(f"--variant {item!r} is not NAME=MODEL, e.g. fp32=textcls")
        if name.strip() in variants:
            raise ConfigError(f"--variant {name.strip()} is given twice")
        variants[name.strip()] = model.strip()
    if len(variants) < 1:
        raise ConfigError("name at least one --variant NAME=MODEL (the first is the reference)")
    return variants


def _configs(repository: Path, variants: dict[str, str], public: str) -> dict[str, ModelConfig]:
    if public in variants.values():
        raise ConfigError(f"--public-model {public} is one of the variants; give the public model a name of its own")
    existing = repository / public
    if existing.exists():
        try:
            ours = "variant_versions" in ModelConfig.read(existing).parameters
        except ConfigError:
            ours = False
        if not ours:
            raise RepositoryError(f"{existing} exists and tritune did not write it; pass another --public-model")
    configs = {}
    for name, model in variants.items():
        if not (repository / model / "config.pbtxt").is_file():
            raise RepositoryError(f"{repository / model}/config.pbtxt does not exist; name a model of {repository}")
        configs[name] = ModelConfig.read(repository / model)
    ref = next(iter(configs.values()))
    for name, c in configs.items():
        # One config serves every version of the public model: only what the orchestrator tunes may differ.
        tuned = ("name", "instance_group", "dynamic_batching", "version_policy")
        if replace(c, **{f: getattr(ref, f) for f in tuned}) != ref:
            raise ConfigError(
                f"{variants[name]}'s config differs from the reference's beyond name, instances and batching (e.g. "
                "its parameters): the variants become versions of one public model with one config, so keep what "
                "tells them apart in their version folders"
            )
        if (c.backend, c.platform) != (ref.backend, ref.platform):
            raise ConfigError(
                f"{variants[name]} runs on {c.backend or c.platform}, the reference on {ref.backend or ref.platform}: "
                "the variants become versions of one public model, so they must share one backend"
            )
        if Signature.from_config(c) != Signature.from_config(ref) or c.max_batch_size != ref.max_batch_size:
            raise ConfigError(
                f"{variants[name]} takes {Signature.from_config(c).describe()}, the reference "
                f"{Signature.from_config(ref).describe()}: variants must share one interface"
            )
    return configs


def _version_dir(model_dir: Path) -> Path:
    versions = sorted((int(p.name), p) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise RepositoryError(f"{model_dir} has no version folder; Triton serves none of it")
    return versions[-1][1]


def _outputs(client: InferenceClient, model: str, data: Samples, sig: Signature, batch: int) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {t.name: [] for t in sig.outputs}
    step = batch if sig.batched else 1
    for start in range(0, len(data), step):
        if sig.batched:
            inputs = {k: v[start : start + step] for k, v in data.inputs.items()}
        else:
            inputs = {k: v[start] for k, v in data.inputs.items()}
        out = client.infer_all(model, inputs)
        for name, value in out.items():
            parts[name].append(value if sig.batched else value[None])
    return {k: np.concatenate(v) for k, v in parts.items()}


def _latency_ms(
    client: InferenceClient, model: str, data: Samples, sig: Signature, batch: int, max_batch_size: int
) -> float:
    """Served latency of ``batch`` samples: one request where the model takes them (a larger batch than its
    max_batch_size is sent as several requests, in a row), else one request per sample."""
    per_request = min(batch, max_batch_size) if sig.batched else 1
    idx = np.arange(per_request) % len(data) if sig.batched else 0
    inputs = {k: v[idx] for k, v in data.inputs.items()}
    requests = -(-batch // per_request)
    times = []
    for i in range(LATENCY_REQUESTS + 3):
        t = time.perf_counter()
        client.infer_all(model, inputs)
        if i >= 3:  # the first requests warm the instance
            times.append((time.perf_counter() - t) * 1000)
    # "batch 32" that the model cannot take in one request is that many requests: the cost the ladder compares.
    return statistics.median(times) * requests


def measure(args: argparse.Namespace, log: Callable[[str], None] = print) -> Manifest:
    started = time.perf_counter()
    repository = Path(args.repository)
    variants = parse_variants(args.variant)
    configs = _configs(repository, variants, args.public_model)
    reference = next(iter(variants))
    ref_config = configs[reference]
    signature = Signature.from_config(ref_config)
    log(f"variants: {', '.join(f'{n}={m}' for n, m in variants.items())}; {signature.describe()}")
    if args.eval_data:
        data = load_samples(args.eval_data, signature, "--eval-data").head(args.eval_size)
    else:
        data = synthesize(signature, args.eval_size or 256)
    log(f"evaluation data: {data.source}; {len(data)} samples, {'labels' if data.labels is not None else 'no labels'}")
    key = admin_key(args.admin_key_file)
    server = None
    url = args.url
    if not url:
        server = TritonServer(
            ServerOptions(
                repository=repository, models=tuple(variants.values()), admin_key=key, cache_dir=args.cache_dir
            )
        ).start()
        url = server.grpc_url
    try:
        with InferenceClient(url, "grpc", timeout_s=120, admin_key=key) as client:
            batch = min(32, ref_config.max_batch_size) if signature.batched else 1
            outputs = {}
            for name, model in variants.items():
                t = time.perf_counter()
                outputs[name] = _outputs(client, model, data, signature, batch)
                log(f"{name}: {model} answered {len(data)} samples in {time.perf_counter() - t:.1f} s")
            evaluator = choose(signature, data.labels, outputs[reference], args.output)
            log(f"accuracy: {evaluator.metric.words}")
            records = {}
            ref_acc = None
            for n, (name, model) in enumerate(variants.items(), start=1):
                hits = evaluator.correct(outputs[name])
                acc = float(hits.mean())
                ref_acc = acc if ref_acc is None else ref_acc
                latency = {
                    f"batch_{b}": round(_latency_ms(client, model, data, signature, b, ref_config.max_batch_size), 3)
                    for b in (1, 32)
                }
                folder = _version_dir(repository / model)
                records[name] = VariantRecord(
                    model_name=model,
                    variant=name,
                    precision=configs[name].parameters.get("precision", "as built"),
                    architecture=configs[name].backend or configs[name].platform,
                    arch_kwargs={},
                    derived_from=None if name == reference else reference,
                    parameters=0,
                    flops=None,
                    file_bytes=sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
                    sha256="",
                    top1=acc,
                    top1_delta_vs_fp32_points=round((acc - ref_acc) * 100, 3),
                    error_vs_fp32={},
                    export_check_vs_torch={},
                    latency_ms=latency,
                    target="served",
                    backend=f"{configs[name].backend or configs[name].platform} (measured through Triton at {url})",
                    built_with={},
                    dataset_fingerprint=data.fingerprint,
                    correct=pack(hits),
                    top1_ci95=[round(x, 4) for x in wilson(int(hits.sum()), len(hits))],
                )
                lo, hi = records[name].top1_ci95
                log(
                    f"{name}: {evaluator.metric} {acc:.4f} [{lo:.3f}, {hi:.3f}], served "
                    f"{latency['batch_1']:.2f} ms @1, {latency['batch_32']:.2f} ms @32 (version {n})"
                )
        manifest = _write(args, repository, variants, configs, records, signature, data, evaluator, url, started)
        if args.url:
            with InferenceClient(url, "grpc", timeout_s=120, admin_key=key) as client:
                client.load(args.public_model)
            log(f"loaded {args.public_model} on {url}")
    finally:
        if server is not None:
            server.stop()
    log(
        f"wrote {args.public_model} ({len(records)} versions) and {repository / MANIFEST}: the ladder is on — "
        f"tritune orchestrate --model {args.public_model} --repository {repository}"
    )
    return manifest


def _write(args, repository, variants, configs, records, signature, data, evaluator, url, started) -> Manifest:
    reference = next(iter(variants))
    numbers = version_numbers(records)
    with StagedRepository(repository) as staging:
        for name, model in variants.items():
            shutil.copytree(_version_dir(repository / model), staging / args.public_model / str(numbers[name]))
        config = with_variant(
            replace(configs[reference], name=args.public_model).with_parameters(variant_versions=json.dumps(numbers)),
            reference,
        )
        config.write(staging / args.public_model)
        manifest = Manifest(
            created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
            host={},
            dataset={"name": "user data", **data.describe(), "held_out_images": len(data)},
            public_model=args.public_model,
            public_variant=reference,
            public_versions=numbers,
            input=signature.to_dict()["inputs"][0],
            output=signature.to_dict()["outputs"][0],
            accuracy_target_points=1.0,
            options={"command": "measure", "variants": variants, "url": url},
            variants=records,
            build_seconds=round(time.perf_counter() - started, 1),
            signature=signature.to_dict(),
            accuracy=evaluator.describe() | {"labels": data.labels is not None},
            source=f"measured: the repository's own models {', '.join(variants.values())}",
        )
        manifest.write(staging / MANIFEST)
    return manifest


def run(args: argparse.Namespace) -> int:
    measure(args, log=lambda m: print(m, flush=True))
    return 0
