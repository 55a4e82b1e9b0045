"""``tritune data``: write a real data set as an ``.npz`` that fits a model's image input, for ``--eval-data`` and
``--train-data`` (and Locust's ``--data``): one array named after the input, resized, and ``labels``.

Fashion-MNIST (Debian's ``dataset-fashion-mnist``) or scikit-learn's bundled digits; images are scaled to [0, 1],
resized bilinearly to the model's H×W and copied to its channel count. Models trained on ImageNet statistics
normalize inside the graph or expect it of the client: ``--mean``/``--std`` apply it here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tritune.errors import ConfigError, DataError

SOURCES = ("fashion-mnist", "digits")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion-mnist", choices=SOURCES, help="(default: %(default)s)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="(default: %(default)s)")
    p.add_argument("--limit", type=int, default=1000, help="first N images of the split, 0 for all (default: 1000)")
    p.add_argument("--shape", default="3,32,32", help="the model's per-sample input C,H,W (default: %(default)s)")
    p.add_argument("--input-name", default="input", help="the model's input name (default: %(default)s)")
    p.add_argument("--mean", default="", help="per-channel mean to subtract, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", default="", help="per-channel std to divide by, e.g. 0.229,0.224,0.225")
    p.add_argument("--out", type=Path, required=True, help="the .npz to write")


def _floats(text: str, channels: int, flag: str) -> np.ndarray | None:
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, channels):
        raise ConfigError(f"{flag} {text!r}: give 1 or {channels} comma-separated numbers")
    return np.asarray(values, np.float32).reshape(-1, 1, 1)


def images(dataset: str, split: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale images [N, H, W] in [0, 1] and their labels."""
    if dataset == "fashion-mnist":
        from builders.data import load_fashion_mnist_raw

        raw = load_fashion_mnist_raw(held_out_only=split == "test")
        x, y = raw[f"x_{split}"].astype(np.float32) / 255.0, raw[f"y_{split}"].astype(np.int64)
    else:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        parts = train_test_split(d.images / 16.0, d.target, test_size=0.5, random_state=0, stratify=d.target)
        x, y = (parts[0], parts[2]) if split == "train" else (parts[1], parts[3])
        x, y = x.astype(np.float32), y.astype(np.int64)
    return (x[:limit], y[:limit]) if limit > 0 else (x, y)


def write(dataset: str, split: str, limit: int, shape: tuple[int, ...], name: str, out: Path, mean="", std="") -> Path:
    import torch
    import torch.nn.functional as F

    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) < 1:
        raise ConfigError(f"--shape {','.join(map(str, shape))}: give C,H,W with C 1 or 3, e.g. 3,224,224")
    if out.suffix != ".npz":
        raise ConfigError(f"--out {out}: the file must end in .npz")
    x, y = images(dataset, split, limit)
    c, h, w = shape
    resized = F.interpolate(torch.from_numpy(x)[:, None], size=(h, w), mode="bilinear", align_corners=False)
    arr = resized.clamp_(0, 1).repeat(1, c, 1, 1).numpy()
    m, s = _floats(mean, c, "--mean"), _floats(std, c, "--std")
    arr = (arr - (m if m is not None else 0)) / (s if s is not None else 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        np.savez(out, **{name: arr.astype(np.float32), "labels": y})
    except OSError as exc:
        raise DataError(f"cannot write {out} ({exc.strerror}); pass --out to a writable place") from exc
    return out


def run(args: argparse.Namespace) -> int:
    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        raise ConfigError(f"--shape {args.shape!r}: give C,H,W, e.g. 3,224,224") from None
    path = write(args.dataset, args.split, args.limit, shape, args.input_name, args.out, args.mean, args.std)
    with np.load(path) as f:
        n = len(f["labels"])
    print(f"wrote {n} {args.dataset} {args.split} images as {args.input_name!r} {list(shape)} + labels to {path}")
    return 0
