"""ServingConfig ↔ Triton model config, on the builders' real public-model config (no server needed)."""

import json
from dataclasses import replace
from pathlib import Path

from builders.models import SEED_SIGNATURE
from builders.targets.base import VariantArtifact
from builders.targets.cpu import cpu_model_config
from tritune.apply import Applier, model_config, serving_config, standby_kept
from tritune.client import loaded_variants, served_variant, with_variant
from tritune.model_config import DynamicBatching, QueuePolicy, VersionPolicy
from tritune.serving import ServingConfig

VERSIONS = {"fp32": 1, "pruned": 2, "distilled": 3, "fp16": 4, "int8": 5}


def public() -> object:
    base = cpu_model_config("cnn", VariantArtifact("fp32", "fp32", Path("x.onnx")), "0" * 64, 64, SEED_SIGNATURE)
    return with_variant(base.with_parameters(variant_versions=json.dumps(VERSIONS)), "fp32")  # as compile_public


def test_default_reads_back_as_the_default_serving_config():
    assert serving_config(public()) == ServingConfig("fp32", 1, 0, False, 0, ())


def test_knobs_map_to_instances_threads_batching_and_version():
    target = ServingConfig(
        "int8", instances=2, threads=1, dynamic_batching=True, max_queue_delay_us=2000, preferred_batch_sizes=(4, 8)
    )
    cfg = model_config(public(), target)
    assert cfg.instance_count == 2 and cfg.parameters["intra_op_num_threads"] == "1"
    assert cfg.dynamic_batching == DynamicBatching((4, 8), 2000, None)
    # which variant serves is the version policy's: a parameter naming it would go stale at an in-place switch
    assert cfg.version_policy.specific == (5,) and "variant" not in cfg.parameters
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


def loaded(*versions: int, **knobs) -> object:
    """The public model as :meth:`tritune.apply.Applier.live` reads it: the READY versions as its policy."""
    cfg = replace(public(), version_policy=VersionPolicy(specific=versions))
    return model_config(cfg, replace(serving_config(cfg), **knobs)) if knobs else cfg


def test_the_served_variant_is_the_highest_ready_version_not_a_parameter():
    cfg = loaded(2, 5)
    assert served_variant(cfg) == "int8" and loaded_variants(cfg) == ("pruned", "int8")
    # a version that stayed loaded keeps the policy it was loaded with: the READY versions decide
    assert served_variant(cfg, ready=(2,)) == "pruned"
    assert serving_config(cfg).variant == "int8"


def test_a_step_down_to_the_loaded_standby_changes_the_loaded_versions_only():
    base = loaded(2, 5, instances=2, dynamic_batching=True, max_queue_delay_us=1000)
    target = replace(serving_config(base), variant="pruned")
    keep = standby_kept(base, "pruned", lambda v: {"int8": "pruned", "pruned": "fp32"}.get(v))
    assert keep == ()  # nothing is loaded below pruned; fp32 is not loaded, and a step never loads a standby
    new = model_config(base, target, standby=keep)
    assert new.version_policy.specific == (2,)
    # everything but the loaded versions as it was: Triton unloads version 5 and reloads nothing
    assert replace(new, version_policy=base.version_policy) == base


def test_a_step_up_keeps_the_new_variants_standby_when_it_is_loaded():
    base = loaded(2)
    standby = {"int8": "pruned"}.get
    keep = standby_kept(base, "int8", standby)
    assert keep == ("pruned",)
    assert model_config(base, replace(serving_config(base), variant="int8"), standby=keep).version_policy.specific == (
        2,
        5,
    )
    # a reload of the served variant (another instance) keeps its standby loaded
    base = loaded(2, 5)
    keep = standby_kept(base, "int8", standby)
    assert model_config(base, replace(serving_config(base), instances=2), standby=keep).version_policy.specific == (
        2,
        5,
    )
    # a standby at a higher version would take the traffic: never kept; without a standby nothing else stays
    assert standby_kept(loaded(5), "pruned", lambda v: "int8") == ()
    assert model_config(base, serving_config(base), standby=()).version_policy.specific == (5,)


class DiesDuringTheLoad:
    """Triton accepted the load and then stopped answering (killed, restarting)."""

    url = "127.0.0.1:1"

    def __init__(self):
        self.base, self.ready_polls = loaded(5), 0

    def model_config(self, _model):
        return self.base

    def ready_versions(self, _model):
        return (5,)

    def load(self, _model, config=None, files=None):
        pass

    def is_ready(self, _model=None):
        self.ready_polls += 1
        return False

    def is_live(self):
        return False


def test_a_load_on_a_server_that_stopped_answering_fails_at_once_not_after_the_ready_timeout():
    # The control loop does not scrape while it waits on a load: a dead server must end the wait now, so that
    # the loop sees the outage and re-applies its config when Triton is back.
    client = DiesDuringTheLoad()
    applier = Applier(client, "cnn", ready_timeout_s=60.0, standby=lambda v: "pruned")
    result = applier.prepare_standby()
    assert result is not None and not result.ok and "stopped answering" in result.error
    assert client.ready_polls == 1  # gave up at the first poll, not after polling for the ready timeout
    result = applier.apply(ServingConfig("int8", instances=2))
    assert not result.ok and "stopped answering" in result.error and client.ready_polls == 2
