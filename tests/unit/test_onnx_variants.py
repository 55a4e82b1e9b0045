"""Export, FP16 and INT8 conversion on small untrained models (graph structure, not accuracy)."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from builders.models import CompressedNet
from builders.onnx_utils import check_onnx, export_onnx, run_onnx, session, to_fp16, to_int8
from tritune.errors import BuildError, ExportError


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = CompressedNet().eval()
    return model, export_onnx(model, tmp_path_factory.mktemp("onnx") / "fp32.onnx")


def test_export_is_one_checked_file_with_dynamic_batch(fp32_onnx):
    model, path = fp32_onnx
    assert [p.name for p in path.parent.iterdir()] == ["fp32.onnx"]  # no external .onnx.data
    onnx.checker.check_model(str(path), full_check=True)
    dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value
    sess = session(path)
    for batch in (1, 9):
        x = np.random.default_rng(batch).random((batch, 3, 32, 32), dtype=np.float32)
        np.testing.assert_allclose(run_onnx(sess, x), model(torch.from_numpy(x)).detach().numpy(), atol=1e-4)


def test_int8_graph_has_symmetric_per_channel_qdq(fp32_onnx, tmp_path):
    _, path = fp32_onnx
    calib = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    out = to_int8(path, tmp_path / "int8.onnx", calib)
    graph = onnx.load(str(out)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zero_points and all(not zp.any() for zp in zero_points)  # symmetric: every zero-point is 0
    # activations and weights are INT8; only biases are INT32 (scale = input scale × weight scale)
    assert {zp.dtype for zp in zero_points} <= {np.dtype(np.int8), np.dtype(np.int32)}
    activation_q = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert all(inits[n.input[2]].dtype == np.int8 for n in activation_q)
    # conv weights are stored as int8 with one scale per output channel
    per_channel = [
        n
        for n in graph.node
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None and inits[n.input[0]].ndim == 4
    ]
    assert per_channel
    for node in per_channel:
        assert inits[node.input[0]].dtype == np.int8
        assert inits[node.input[1]].shape == (inits[node.input[0]].shape[0],)
    x = calib[:4]
    assert run_onnx(session(out), x).shape == (4, 10)


def test_int8_needs_calibration_images(fp32_onnx, tmp_path):
    _, path = fp32_onnx
    with pytest.raises(BuildError, match="calibration set is empty"):
        to_int8(path, tmp_path / "x.onnx", np.zeros((0, 3, 32, 32), np.float32))


def test_fp16_keeps_fp32_io_and_halves_weights(fp32_onnx, tmp_path):
    model, path = fp32_onnx
    out = to_fp16(path, tmp_path / "fp16.onnx")
    m = onnx.load(str(out))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {i.data_type for i in m.graph.initializer if len(i.dims) > 1} == {onnx.TensorProto.FLOAT16}
    assert out.stat().st_size < 0.6 * path.stat().st_size
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    ref = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(run_onnx(session(out), x), ref, atol=2e-2 * np.abs(ref).max())


def test_checker_failure_is_a_clear_export_error(tmp_path):
    bad = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["missing"], ["y"])],
            "g",
            [],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    path = tmp_path / "bad.onnx"
    onnx.save(bad, str(path))
    with pytest.raises(ExportError, match="fails the ONNX checker"):
        check_onnx(path)
