"""ServingConfig ↔ Triton model config, on the builders' real public-model config (no server needed)."""

import json
from dataclasses import replace
from pathlib import Path

from builders.models import SEED_SIGNATURE
from builders.targets.base import VariantArtifact
from builders.targets.cpu import cpu_model_config
from tritune.apply import model_config, serving_config
from tritune.model_config import DynamicBatching, QueuePolicy, VersionPolicy
from tritune.serving import ServingConfig

VERSIONS = {"fp32": 1, "pruned": 2, "distilled": 3, "fp16": 4, "int8": 5}


def public() -> object:
    base = cpu_model_config("cnn", VariantArtifact("fp32", "fp32", Path("x.onnx")), "0" * 64, 64, SEED_SIGNATURE)
    return replace(base, version_policy=VersionPolicy(specific=(1,))).with_parameters(
        variant_versions=json.dumps(VERSIONS)
    )


def test_default_reads_back_as_the_default_serving_config():
    assert serving_config(public()) == ServingConfig("fp32", 1, 0, False, 0, ())


def test_knobs_map_to_instances_threads_batching_and_version():
    target = ServingConfig(
        "int8", instances=2, threads=1, dynamic_batching=True, max_queue_delay_us=2000, preferred_batch_sizes=(4, 8)
    )
    cfg = model_config(public(), target)
    assert cfg.instance_count == 2 and cfg.parameters["intra_op_num_threads"] == "1"
    assert cfg.dynamic_batching == DynamicBatching((4, 8), 2000, None)
    assert cfg.version_policy.specific == (5,) and cfg.parameters["variant"] == "int8"
    assert serving_config(cfg) == target
    back = model_config(cfg, ServingConfig("fp32"))
    assert back.dynamic_batching is None and back.version_policy.specific == (1,)
    assert back.parameters["intra_op_num_threads"] == "auto"


def test_an_existing_queue_policy_survives_retuning():
    base = replace(public(), dynamic_batching=DynamicBatching((8,), 100, QueuePolicy(max_queue_size=256)))
    cfg = model_config(base, ServingConfig("fp32", 1, 0, True, 4000, (8, 16)))
    assert cfg.dynamic_batching.default_queue_policy == QueuePolicy(max_queue_size=256)
    assert cfg.dynamic_batching.max_queue_delay_us == 4000


def test_batching_without_preferred_sizes_reads_back_as_asked_though_triton_fills_in_max_batch_size():
    target = ServingConfig("distilled", 2, 1, True, 1000, ())
    cfg = model_config(public(), target)
    assert cfg.dynamic_batching.preferred_batch_size == ()
    # what Triton 2.51 serves for that config: preferred_batch_size [max_batch_size], the same batching
    live = replace(cfg, dynamic_batching=replace(cfg.dynamic_batching, preferred_batch_size=(64,)))
    assert serving_config(live) == target
    # any other preferred size is a real setting and reads back as it is
    other = replace(cfg, dynamic_batching=replace(cfg.dynamic_batching, preferred_batch_size=(32,)))
    assert serving_config(other).preferred_batch_sizes == (32,)
