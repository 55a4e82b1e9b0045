"""Typed Triton configs vs golden config.pbtxt files (UPDATE_GOLDEN=1 regenerates them after a deliberate change)."""

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from builders.models import SEED_SIGNATURE
from builders.targets.base import VariantArtifact
from builders.targets.cpu import cpu_model_config
from tritune.errors import ConfigError
from tritune.model_config import DynamicBatching, ModelConfig, QueuePolicy, TensorSpec, VersionPolicy, WarmupSample

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _default() -> ModelConfig:
    artifact = VariantArtifact("int8", "int8", Path("unused.onnx"))
    return cpu_model_config("cnn_int8", artifact, "0" * 64, max_batch_size=64, signature=SEED_SIGNATURE)


def _tuned() -> ModelConfig:
    return replace(
        _default().with_instances(2).with_parameters(intra_op_num_threads="1"),
        dynamic_batching=DynamicBatching((8, 16), 2000, QueuePolicy(max_queue_size=128)),
        version_policy=VersionPolicy(latest=1),
    )


@pytest.mark.parametrize(("name", "factory"), [("cpu_default.pbtxt", _default), ("cpu_tuned.pbtxt", _tuned)])
def test_config_matches_golden(name, factory):
    text = factory().to_pbtxt()
    if os.environ.get("UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(text)
    assert text == (GOLDEN / name).read_text()
    # and Triton's own proto accepts it
    text_format.Parse(text, pb.ModelConfig())


def test_default_config_is_tritons_default_serving_setup():
    cfg = _default()
    assert cfg.backend == "python" and cfg.dynamic_batching is None and cfg.instance_count == 1
    assert cfg.parameters["intra_op_num_threads"] == "auto"


@pytest.mark.parametrize("factory", [_default, _tuned])
def test_round_trips_through_pbtxt_and_json(factory):
    cfg = factory()
    assert ModelConfig.from_pbtxt(cfg.to_pbtxt()) == cfg
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    # the dict form get_model_config returns over HTTP, wrapped or not
    assert ModelConfig.from_dict({"config": json.loads(cfg.to_json())}) == cfg


def test_default_config_warms_every_instance_at_batch_1_and_the_largest_batch():
    cfg = _default()
    assert [(w.batch_size, w.count) for w in cfg.model_warmup] == [(1, 2), (64, 2)]
    msg = cfg.to_proto()
    for sample in msg.model_warmup:
        assert set(sample.inputs) == {spec.name for spec in cfg.inputs}
        (value,) = sample.inputs.values()
        assert value.zero_data and tuple(value.dims) == cfg.inputs[0].dims
        assert pb.DataType.Name(value.data_type) == cfg.inputs[0].data_type
    # a reload built from the live config (get_model_config → replace → load_model) keeps the warmup
    assert ModelConfig.from_dict(json.loads(cfg.with_instances(2).to_json())).model_warmup == cfg.model_warmup


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="count >= 1"):
        ModelConfig("m", model_warmup=(WarmupSample("w", 1, (), count=0),)).to_pbtxt()
    with pytest.raises(ConfigError, match="unknown data type"):
        ModelConfig("m", inputs=(TensorSpec("x", "TYPE_FLOAT", (1,)),)).to_pbtxt()
    with pytest.raises(ConfigError, match="instance count"):
        _default().with_instances(0).to_pbtxt()
    with pytest.raises(ConfigError, match="does not parse"):
        ModelConfig.from_pbtxt("name: 'x' max_batch_size: 'lots'")


def test_warmup_fixes_dynamic_dims_and_skips_string_inputs():
    from builders.targets.base import warmup_samples

    tokens = (TensorSpec("input_ids", "TYPE_INT64", (-1,)), TensorSpec("mask", "TYPE_INT64", (-1,)))
    samples = warmup_samples(tokens, 8)
    assert [w.batch_size for w in samples] == [1, 8]
    assert all(spec.dims == (1,) for w in samples for spec in w.inputs)
    ModelConfig("m", max_batch_size=8, inputs=tokens, model_warmup=samples).to_pbtxt()  # Triton's form parses
    assert warmup_samples((TensorSpec("text", "TYPE_STRING", (1,)),), 8) == ()
    assert [w.batch_size for w in warmup_samples(tokens, 0)] == [0]  # no batch dimension: one sample whole
