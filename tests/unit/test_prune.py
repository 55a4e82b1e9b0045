import copy

import numpy as np
import onnx
import pytest
import torch

from builders.models import SeedCNN, count_flops, count_parameters
from builders.onnx_utils import export_onnx, run_onnx, session
from builders.prune import structured_prune
from tritune.errors import BuildError


@pytest.fixture(scope="module")
def pruned_pair():
    torch.manual_seed(0)
    fp32 = SeedCNN().eval()
    return fp32, structured_prune(copy.deepcopy(fp32), 0.5)


def test_whole_filters_and_units_are_removed(pruned_pair):
    fp32, pruned = pruned_pair
    assert pruned.conv1.out_channels == 32 and pruned.conv2.in_channels == 32
    assert pruned.conv2.out_channels == 64 and pruned.fc1.in_features == 64 * 8 * 8
    assert pruned.fc3.out_features == 10  # the classifier keeps every class
    assert count_parameters(pruned) <= 0.6 * count_parameters(fp32)
    assert count_flops(pruned) <= 0.6 * count_flops(fp32)


def test_pruned_model_still_gives_valid_outputs(pruned_pair):
    _, pruned = pruned_pair
    out = pruned(torch.rand(5, 3, 32, 32))
    assert out.shape == (5, 10) and torch.isfinite(out).all()


def test_exported_pruned_graph_is_really_smaller(pruned_pair, tmp_path):
    fp32, pruned = pruned_pair
    a, b = export_onnx(fp32, tmp_path / "a.onnx"), export_onnx(pruned, tmp_path / "b.onnx")
    assert b.stat().st_size < 0.5 * a.stat().st_size
    weights = {i.name: tuple(i.dims) for i in onnx.load(str(b)).graph.initializer}
    assert (64, 32, 3, 3) in weights.values()
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(run_onnx(session(b), x), pruned(torch.from_numpy(x)).detach().numpy(), atol=1e-4)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2])
def test_bad_ratio(ratio):
    with pytest.raises(BuildError, match="prune ratio"):
        structured_prune(SeedCNN(), ratio)
