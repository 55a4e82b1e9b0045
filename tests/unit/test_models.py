import numpy as np
import pytest
import torch

from builders.models import (
    CompressedNet,
    SeedCNN,
    count_flops,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)
from tritune.errors import CheckpointError


@pytest.mark.parametrize("cls", [SeedCNN, CompressedNet])
@pytest.mark.parametrize("batch", [1, 7])
def test_output_shape_for_32x32_input(cls, batch):
    out = cls().eval()(torch.rand(batch, 3, 32, 32))
    assert out.shape == (batch, 10)
    assert torch.isfinite(out).all()


def test_seed_cnn_shapes_follow_the_article():
    m = SeedCNN()
    assert (m.conv1.in_channels, m.conv1.out_channels) == (3, 64)
    assert (m.conv2.in_channels, m.conv2.out_channels) == (64, 128)
    assert m.fc1.in_features == 128 * 8 * 8  # what the article's fc1 expects, now reachable from 32×32
    assert m.fc3.out_features == 10


def test_pool_before_relu_is_the_same_function():
    m = SeedCNN().eval()
    x = torch.rand(4, 3, 32, 32)
    h = m.conv2(torch.relu(m.conv1(m.norm(x))))
    assert torch.equal(torch.relu(m.pool(h)), m.pool(torch.relu(h)))


def test_flops_and_parameters_are_counted_from_layers():
    m = SeedCNN()
    conv1 = 2 * 3 * 9 * 64 * 32 * 32
    conv2 = 2 * 64 * 9 * 128 * 32 * 32
    fcs = 2 * (8192 * 256 + 256 * 128 + 128 * 10)
    assert count_flops(m) == conv1 + conv2 + fcs
    assert count_parameters(m) == sum(p.numel() for p in m.parameters()) == 2_207_242


def test_checkpoint_round_trip_keeps_pruned_widths(tmp_path):
    m = SeedCNN(c1=16, c2=24, f1=40, f2=12, mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 3.0)).eval()
    save_checkpoint(m, tmp_path / "m.pt", {"stage": "x"})
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta == {"stage": "x"}
    assert loaded.arch_kwargs() == m.arch_kwargs()
    x = torch.rand(2, 3, 32, 32)
    np.testing.assert_array_equal(loaded(x).detach().numpy(), m(x).detach().numpy())


def test_corrupt_checkpoint_says_what_to_do(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt.*delete it"):
        load_checkpoint(bad)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_checkpoint_of_wrong_shape(tmp_path):
    state = SeedCNN(c1=8).state_dict()
    torch.save(state, tmp_path / "sd.pt")  # bare state_dict is read as SeedCNN with default widths
    with pytest.raises(CheckpointError, match="does not fit SeedCNN"):
        load_checkpoint(tmp_path / "sd.pt")
