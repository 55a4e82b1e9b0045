"""The model's interface read from ONNX graphs and Triton configs, and data checked against it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from builders.models import SEED_SIGNATURE
from builders.targets.base import VariantArtifact
from builders.targets.cpu import cpu_model_config
from tritune.errors import DataError, ModelInputError
from tritune.signature import DEFAULT_DYNAMIC_DIM, RANDOM_INT_HIGH, Signature, Tensor, datatype_of


def text_classifier(batch_dim="batch") -> onnx.ModelProto:
    """Two INT64 inputs with a dynamic sequence length, a BOOL flag, FP32 class scores: Gather → ReduceMean."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch_dim, "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch_dim, "seq"])
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [batch_dim, 1])
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch_dim, 4])
    table = helper.make_tensor("table", TensorProto.FLOAT, [32, 4], np.random.default_rng(0).random(128).tolist())
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceMean", ["masked", "axis1"], ["scores"], keepdims=0),
    ]
    consts = [
        helper.make_tensor("axis2", TensorProto.INT64, [1], [2]),
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(nodes, "text", [ids, mask, flag], [out], [table, *consts])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_reads_names_types_and_dynamic_dims_from_the_graph():
    sig = Signature.from_onnx(text_classifier())
    assert sig.batched
    assert sig.inputs == (
        Tensor("input_ids", "INT64", (-1,)),
        Tensor("attention_mask", "INT64", (-1,)),
        Tensor("flag", "BOOL", (1,)),
    )
    assert sig.outputs == (Tensor("scores", "FP32", (4,)),)
    assert sig.classifier_output == sig.outputs[0]
    assert "input_ids INT64[?]" in sig.describe()


def test_a_fixed_first_dimension_means_no_batching():
    sig = Signature.from_onnx(text_classifier(batch_dim=1))
    assert not sig.batched
    assert sig.inputs[0].shape == (1, -1)
    assert sig.outputs[0].shape == (1, 4)


def test_config_roundtrip_and_cpu_config_from_the_graph(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(text_classifier(), str(path))
    config = cpu_model_config("m", VariantArtifact("fp32", "fp32", path), "0" * 64, 16)
    assert [(s.name, s.data_type, s.dims) for s in config.inputs] == [
        ("input_ids", "TYPE_INT64", (-1,)),
        ("attention_mask", "TYPE_INT64", (-1,)),
        ("flag", "TYPE_BOOL", (1,)),
    ]
    assert config.max_batch_size == 16
    assert Signature.from_config(config) == Signature.from_onnx(path)
    onnx.save(text_classifier(batch_dim=1), str(path))
    assert cpu_model_config("m", VariantArtifact("fp32", "fp32", path), "0" * 64, 16).max_batch_size == 0


def test_seed_signature_matches_its_config_and_metadata_form():
    assert Signature.from_dict(SEED_SIGNATURE.to_dict()) == SEED_SIGNATURE
    metadata = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": ["-1", "3", "32", "32"]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert Signature.from_metadata(metadata, max_batch_size=64) == SEED_SIGNATURE


def test_random_inputs_have_the_right_types_and_shapes():
    sig = Signature.from_onnx(text_classifier())
    x = sig.random_inputs(5, np.random.default_rng(1))
    assert x["input_ids"].dtype == np.int64 and x["input_ids"].shape == (5, DEFAULT_DYNAMIC_DIM)
    assert x["input_ids"].max() < RANDOM_INT_HIGH
    assert x["flag"].dtype == np.bool_ and x["flag"].shape == (5, 1)
    x = sig.random_inputs(2, dims={"input_ids": (7,), "attention_mask": (7,)})
    assert x["attention_mask"].shape == (2, 7)
    with pytest.raises(ModelInputError, match="does not fit"):
        sig.random_inputs(2, dims={"flag": (3,)})


def test_data_is_checked_against_the_signature():
    sig = Signature.from_onnx(text_classifier())
    ok = {
        "input_ids": np.zeros((3, 9), np.int32),
        "attention_mask": np.ones((3, 9), np.int64),
        "flag": np.ones((3, 1), bool),
    }
    checked = sig.check_inputs(ok, "data")
    assert checked["input_ids"].dtype == np.int64  # widened within its kind
    with pytest.raises(DataError, match=r"no array for input\(s\) \['flag'\]"):
        sig.check_inputs({k: v for k, v in ok.items() if k != "flag"}, "data")
    with pytest.raises(DataError, match="'input_ids' holds float32, the model takes INT64"):
        sig.check_inputs({**ok, "input_ids": np.zeros((3, 9), np.float32)}, "data")
    with pytest.raises(DataError, match=r"'input_ids' has shape \[3, 9, 2\]"):
        sig.check_inputs({**ok, "input_ids": np.zeros((3, 9, 2), np.int64)}, "data")
    with pytest.raises(DataError, match="different numbers of samples"):
        sig.check_inputs({**ok, "flag": np.ones((4, 1), bool)}, "data")
    with pytest.raises(DataError, match="'flag' holds int64"):
        sig.check_inputs({**ok, "flag": np.ones((3, 1), np.int64)}, "data")


def test_unservable_interfaces_are_one_clear_line():
    with pytest.raises(ModelInputError, match="datatype 'BYTES'"):
        Tensor("text", "BYTES", (1,))
    with pytest.raises(ModelInputError, match="names repeat"):
        Signature((Tensor("x", "FP32", (1,)),), (Tensor("x", "FP32", (1,)),), True)
    with pytest.raises(ModelInputError, match="no Triton datatype"):
        datatype_of(np.complex64)
    # A batched tensor with nothing besides the batch (an ArgMax label) cannot be declared in a Triton config.
    labels = Signature((Tensor("x", "FP32", (2,)),), (Tensor("label", "INT64", ()),), batched=True)
    with pytest.raises(ModelInputError, match="no dimension besides the batch"):
        labels.tensor_specs()
