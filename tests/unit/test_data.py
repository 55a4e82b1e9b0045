import gzip
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


def _write_fashion(root, n_train=30, n_test=20):
    """The four IDX files in Debian's layout, gzipped: magic 0 0 8 <ndim>, big-endian sizes, then the bytes."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n, shape in (("train", n_train, (28, 28)), ("t10k", n_test, (28, 28))):
        for kind, dims in (("images-idx3", (n, *shape)), ("labels-idx1", (n,))):
            header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
            values = rng.integers(0, 256 if kind.startswith("images") else 10, dims, dtype=np.uint8)
            with gzip.open(root / f"{name}-{kind}-ubyte.gz", "wb") as fh:
                fh.write(header + values.tobytes())
    return root


def test_auto_takes_fashion_mnist_where_installed(tmp_path, monkeypatch):
    from builders import data

    root = _write_fashion(tmp_path / "fm")
    original = data.fashion_mnist_as_cifar
    monkeypatch.setattr(data, "fashion_mnist_available", lambda *_a: True)
    monkeypatch.setattr(data, "fashion_mnist_as_cifar", lambda *_a, **_k: original(root))
    ds = data.load_dataset("auto", tmp_path / "no-cifar")
    assert ds.name == "fashion-mnist" and len(ds.x_test) == 20
    assert data.DEFAULT_TRAIN_IMAGES["fashion-mnist"] > 0  # a default build trains on a subset of it


def test_fashion_mnist_reads_idx_files_and_pads_to_the_seed_input(tmp_path):
    from builders.data import fashion_mnist_as_cifar

    ds = fashion_mnist_as_cifar(_write_fashion(tmp_path / "fm"))
    assert ds.name == "fashion-mnist" and ds.x_train.shape == (30, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    assert ds.x_train[:, :, :2].max() == 0 and ds.x_train.max() <= 1.0  # a 2-pixel border of background
    assert len(ds.classes) == 10 and ds.y_test.dtype == np.int64
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x09\x01" + bytes(8)))
    with pytest.raises(DataError, match="not an IDX file of unsigned bytes"):
        fashion_mnist_as_cifar(tmp_path / "fm")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist_as_cifar(tmp_path / "nowhere")


def test_offline_fallback_is_a_real_bundled_dataset(tmp_path, monkeypatch):
    from builders import data

    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "no-fashion-mnist")
    monkeypatch.setattr(data, "fashion_mnist_available", lambda root=tmp_path / "no-fashion-mnist": False)
    ds = load_dataset("auto", tmp_path)
    assert ds.name == "digits" and "scikit-learn" in ds.source
    assert any("dataset-fashion-mnist" in note for note in ds.notes)
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
