"""What counts as a right answer, as a value: the builders, clients and load generators are given an
:class:`Evaluator` and never write an argmax of their own.

* :attr:`Metric.TOP1`: the classifier output's top-1 against the labels;
* :attr:`Metric.AGREEMENT`: without labels, the top-1 of a classifier against the fp32 variant's top-1;
* :attr:`Metric.TOLERANCE`: without labels and without class scores, every output within a stated tolerance of
  the fp32 variant's (``|a - ref| <= atol + rtol * |ref|``).

Each gives one bit per sample, so the paired comparison (:mod:`tritune.compare`) works on any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from tritune.errors import DataError
from tritune.signature import Signature

DEFAULT_RTOL = 1e-2
DEFAULT_ATOL = 1e-3


class Metric(StrEnum):
    TOP1 = "top1"
    AGREEMENT = "top1_agreement_vs_fp32"
    TOLERANCE = "within_tolerance_vs_fp32"

    @property
    def words(self) -> str:
        return {
            Metric.TOP1: "top-1 against the labels",
            Metric.AGREEMENT: "top-1 agreement with the fp32 variant (no labels given)",
            Metric.TOLERANCE: "share of samples whose outputs are all within tolerance of fp32's (no labels given)",
        }[self]


@dataclass(frozen=True)
class Evaluator:
    metric: Metric
    output: str | None  # the classifier output judged; None for TOLERANCE (every output)
    reference: np.ndarray | None = None  # labels (TOP1) or fp32's top-1 (AGREEMENT), one per sample
    reference_outputs: dict[str, np.ndarray] = field(default_factory=dict)  # TOLERANCE: fp32's outputs
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL

    def correct(self, outputs: dict[str, np.ndarray], idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        """One bit per sample of ``outputs`` (samples ``idx`` of the reference): right or not."""
        if self.metric is Metric.TOLERANCE:
            ok = None
            for name, ref in self.reference_outputs.items():
                a, r = outputs[name].astype(np.float64), ref[idx].astype(np.float64)
                close = np.abs(a - r) <= self.atol + self.rtol * np.abs(r)
                close = close.reshape(len(close), -1).all(axis=1)
                ok = close if ok is None else ok & close
            return ok
        assert self.output is not None and self.reference is not None
        return predicted(outputs[self.output]) == self.reference[idx]

    def describe(self) -> dict:
        d = {"metric": str(self.metric), "meaning": self.metric.words, "output": self.output}
        if self.metric is Metric.TOLERANCE:
            d |= {"rtol": self.rtol, "atol": self.atol}
        return d


def predicted(scores: np.ndarray) -> np.ndarray:
    """The class of each sample: the argmax of its scores."""
    return np.asarray(scores).reshape(len(scores), -1).argmax(axis=1)


def choose(
    signature: Signature,
    labels: np.ndarray | None,
    fp32_outputs: dict[str, np.ndarray],
    output: str | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> Evaluator:
    """The evaluator a build uses: labels and a classifier output → TOP1; a classifier without labels →
    AGREEMENT with fp32; otherwise TOLERANCE against fp32's outputs. ``output`` names the judged output."""
    tensor = signature.output(output) if output else signature.classifier_output
    if labels is not None:
        if tensor is None:
            raise DataError(
                f"labels were given, but no output reads as class scores ({signature.describe()}); name one with "
                "--output, or leave the labels out to compare with fp32 within a tolerance"
            )
        classes = int(np.prod(tensor.shape)) if all(d > 0 for d in tensor.shape) else None
        if classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= classes):
            raise DataError(
                f"labels run {labels.min()}..{labels.max()}, but output {tensor.name!r} scores {classes} classes; "
                "give labels in 0..classes-1"
            )
        return Evaluator(Metric.TOP1, tensor.name, np.asarray(labels))
    if tensor is not None:
        return Evaluator(Metric.AGREEMENT, tensor.name, predicted(fp32_outputs[tensor.name]))
    return Evaluator(Metric.TOLERANCE, None, reference_outputs=dict(fp32_outputs), rtol=rtol, atol=atol)
