"""The user's data in its three formats (npz, ImageFolder, perf_analyzer JSON), and what a mismatch says."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from PIL import Image

from tritune.errors import DataError
from tritune.samples import load_samples, synthesize
from tritune.signature import Signature, Tensor

TEXT = Signature(
    (Tensor("input_ids", "INT64", (-1,)), Tensor("attention_mask", "INT64", (-1,))),
    (Tensor("logits", "FP32", (3,)),),
    batched=True,
)
IMAGE = Signature((Tensor("pixel_values", "FP32", (3, 8, 8)),), (Tensor("logits", "FP32", (2,)),), batched=True)


def test_npz_with_labels(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, input_ids=np.arange(20).reshape(4, 5), attention_mask=np.ones((4, 5), np.int64), labels=[0, 1, 2, 0])
    s = load_samples(path, TEXT)
    assert len(s) == 4 and s.labels.tolist() == [0, 1, 2, 0]
    assert s.inputs["input_ids"].dtype == np.int64
    assert s.head(2).inputs["attention_mask"].shape == (2, 5)
    assert "npz" in s.source and s.fingerprint == load_samples(path, TEXT).fingerprint


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"ids": np.zeros((2, 3), np.int64)}, r"array\(s\) \['ids'\] that are not model inputs"),
        ({"input_ids": np.zeros((2, 3))}, r"no array for input\(s\) \['attention_mask'\]"),
        (
            {"input_ids": np.zeros((2, 3), np.float32), "attention_mask": np.ones((2, 3), np.int64)},
            "holds float32, the model takes INT64",
        ),
        (
            {"input_ids": np.zeros((2, 3), np.int64), "attention_mask": np.ones((2, 3), np.int64), "labels": [1]},
            r"'labels' has shape \[1\], expected \[2\]",
        ),
        (
            {"input_ids": np.zeros((2, 3), np.int64), "attention_mask": np.ones((2, 3), np.int64), "labels": [0.5, 1]},
            "labels are integer class indices",
        ),
    ],
)
def test_npz_mismatches_are_one_line(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_samples(path, TEXT)
    assert "\n" not in str(info.value)


def test_perf_analyzer_json_forms(tmp_path):
    ids = np.array([5, 6, 7], np.int64)
    doc = {
        "data": [
            {"input_ids": {"content": [1, 2, 3], "shape": [3]}, "attention_mask": {"content": [1, 1, 1], "shape": [3]}},
            {
                "input_ids": {"b64": base64.b64encode(ids.tobytes()).decode(), "shape": [3]},
                "attention_mask": [[1, 1, 0]][0],
            },
        ],
        "labels": [2, 0],
    }
    doc["data"][1]["attention_mask"] = {"content": [1, 1, 0], "shape": [3]}
    path = tmp_path / "pa.json"
    path.write_text(json.dumps(doc))
    s = load_samples(path, TEXT)
    assert s.inputs["input_ids"].tolist() == [[1, 2, 3], [5, 6, 7]]
    assert s.labels.tolist() == [2, 0]
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({"data": [{"pixel_values": [0.5] * 192}]}))
    assert load_samples(fixed, IMAGE).inputs["pixel_values"].shape == (1, 3, 8, 8)
    flat = tmp_path / "flat.json"  # a flat list fills a one-dimensional dynamic input by itself
    flat.write_text(json.dumps({"data": [{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1]}]}))
    assert load_samples(flat, TEXT).inputs["input_ids"].shape == (1, 3)
    grid = Signature((Tensor("grid", "FP32", (-1, -1)),), (Tensor("y", "FP32", (2,)),), batched=True)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"grid": [1, 2, 3, 4]}]}))
    with pytest.raises(DataError, match="dynamic dims"):
        load_samples(bad, grid)
    bad.write_text(json.dumps({"data": [{"grid": [[1, 2], [3]]}]}))
    with pytest.raises(DataError, match="not rectangular"):
        load_samples(bad, grid)
    bad.write_text(json.dumps({"data": [{"pixel_values": [0.5] * 10}]}))
    with pytest.raises(DataError, match="10 values do not fill shape"):
        load_samples(bad, IMAGE)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        load_samples(bad, IMAGE)


def test_image_folder(tmp_path):
    root = tmp_path / "images"
    for cls, value in (("cat", 0), ("dog", 255)):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 12), (value, value, value)).save(root / cls / f"{i}.png")
    s = load_samples(root, IMAGE)
    assert s.inputs["pixel_values"].shape == (4, 3, 8, 8)
    assert s.labels.tolist() == [0, 0, 1, 1] and s.classes == ("cat", "dog")
    assert s.inputs["pixel_values"][2].min() == pytest.approx(1.0)
    with pytest.raises(DataError, match="an image folder fits a model with one"):
        load_samples(root, TEXT)
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png is not a readable image"):
        load_samples(root, IMAGE)


def test_missing_and_unknown_formats(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_samples(tmp_path / "none.npz", TEXT)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="unknown format .csv"):
        load_samples(tmp_path / "x.csv", TEXT)
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_samples(tmp_path / "x.npz", TEXT)


def test_synthesized_samples_say_so():
    s = synthesize(TEXT, 6)
    assert len(s) == 6 and s.labels is None
    assert "synthesized" in s.source and s.notes
