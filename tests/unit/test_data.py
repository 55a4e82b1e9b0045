import pickle

import numpy as np
import pytest

from builders.data import load_dataset
from tritune.errors import DataError


def _write_cifar(root, n=20, corrupt=None):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        blob = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        data = pickle.dumps(blob)
        (folder / name).write_bytes(data[: len(data) // 2] if name == corrupt else data)
    return folder


def test_offline_fallback_is_a_real_bundled_dataset(tmp_path):
    ds = load_dataset("auto", tmp_path)
    assert ds.name == "digits" and "scikit-learn" in ds.source
    assert ds.x_train.shape[1:] == (3, 32, 32) and ds.x_train.dtype == np.float32
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    assert len(ds.x_test) == 899 and len(ds.x_train) == 898 and set(np.unique(ds.y_train)) == set(range(10))
    # held-out images never appear in the training split
    train_rows = {r.tobytes() for r in ds.x_train.reshape(len(ds.x_train), -1)}
    assert not any(r.tobytes() in train_rows for r in ds.x_test.reshape(len(ds.x_test), -1))


def test_local_cifar_copy_in_torchvision_layout_is_preferred(tmp_path):
    _write_cifar(tmp_path)
    ds = load_dataset("auto", tmp_path)
    assert ds.name == "cifar10" and len(ds.x_train) == 100 and len(ds.x_test) == 20
    assert ds.x_train.shape[1:] == (3, 32, 32) and ds.x_train.max() <= 1.0


def test_corrupt_cifar_batch(tmp_path):
    _write_cifar(tmp_path, corrupt="data_batch_3")
    with pytest.raises(DataError, match="data_batch_3 is corrupt.*re-download"):
        load_dataset("cifar10", tmp_path)


def test_missing_cifar_when_asked_for(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 copy.*--dataset digits"):
        load_dataset("cifar10", tmp_path)


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)


def test_subset_keeps_the_held_out_set_whole(tmp_path):
    ds = load_dataset("digits", tmp_path)
    small = ds.subset(100)
    assert len(small.x_train) == 100 and len(small.x_test) == len(ds.x_test)
    assert small.fingerprint != ds.fingerprint
