"""What counts as right: top-1 against labels, agreement with fp32, or every output within a tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from tritune.accuracy import Metric, choose
from tritune.errors import DataError
from tritune.signature import Signature, Tensor

CLASSIFIER = Signature((Tensor("x", "FP32", (2,)),), (Tensor("scores", "FP32", (3,)),), batched=True)
# One score and a 2×1 map: neither reads as class scores (one dimension of two or more).
REGRESSOR = Signature((Tensor("x", "FP32", (2,)),), (Tensor("y", "FP32", (1,)), Tensor("z", "FP32", (2, 1))), True)
FP32 = {"scores": np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6]], np.float32)}


def test_labels_give_top1():
    ev = choose(CLASSIFIER, np.array([1, 0, 0]), FP32)
    assert ev.metric is Metric.TOP1 and ev.output == "scores"
    assert ev.correct(FP32).tolist() == [True, True, False]
    assert ev.correct({"scores": FP32["scores"][1:]}, slice(1, None)).tolist() == [True, False]


def test_no_labels_give_agreement_with_fp32():
    ev = choose(CLASSIFIER, None, FP32)
    assert ev.metric is Metric.AGREEMENT
    other = FP32["scores"].copy()
    other[2] = [0.9, 0.0, 0.1]
    assert ev.correct({"scores": other}).tolist() == [True, True, False]


def test_no_class_scores_give_a_stated_tolerance():
    ref = {"y": np.array([[1.0], [2.0]]), "z": np.array([[[0.0], [1.0]], [[1.0], [1.0]]])}
    ev = choose(REGRESSOR, None, ref, rtol=0.01, atol=0.001)
    assert ev.metric is Metric.TOLERANCE and ev.describe()["rtol"] == 0.01
    near = {"y": np.array([[1.005], [2.0]]), "z": np.array([[[0.0], [1.0]], [[1.0], [1.5]]])}
    assert ev.correct(near).tolist() == [True, False]


def test_labels_that_do_not_fit_the_outputs():
    with pytest.raises(DataError, match="no output reads as class scores"):
        choose(REGRESSOR, np.array([0, 1]), {"y": np.zeros((2, 1)), "z": np.zeros((2, 2, 1))})
    with pytest.raises(DataError, match="scores 3 classes"):
        choose(CLASSIFIER, np.array([0, 5, 1]), FP32)
