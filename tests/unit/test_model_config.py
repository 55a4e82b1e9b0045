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
from tritune.model_config import DynamicBatching, ModelConfig, QueuePolicy, TensorSpec, VersionPolicy

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


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="unknown data type"):
        ModelConfig("m", inputs=(TensorSpec("x", "TYPE_FLOAT", (1,)),)).to_pbtxt()
    with pytest.raises(ConfigError, match="instance count"):
        _default().with_instances(0).to_pbtxt()
    with pytest.raises(ConfigError, match="does not parse"):
        ModelConfig.from_pbtxt("name: 'x' max_batch_size: 'lots'")
