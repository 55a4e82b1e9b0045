"""One comparison of two variants' accuracy, for the policy, the sweep and the report: a paired test on the same
held-out images, and each top-1 with a 95% interval.

- **McNemar's exact test** looks only at the images the two variants disagree on. ``b`` is the number only the
  first got right, and ``c`` the number only the second got right. Under "equally accurate" each disagreement
  goes either way with probability ½, so the two-sided p-value is a binomial tail:
  ``min(1, 2 · P(X ≤ min(b, c)))`` with X ~ Binomial(b + c, ½).
- **Wilson's score interval** gives each top-1's 95% interval. It behaves near 0 and 1, where the normal
  approximation does not.
- **Verdicts.** A variant is *more accurate* when the test says it is significantly better at ``alpha``. It is
  *at least as accurate* when it is not significantly worse. Anything the test cannot tell apart is a tie, and
  among ties the cheaper variant wins (the policy's rule). The accuracy floor stays on the point estimate.

Without per-image results (a manifest built before they were recorded), only the point estimates exist.
``compare`` then falls back to them, and says so in its result.
"""

from __future__ import annotations

import base64
import itertools
import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

ALPHA = 0.05
Z_95 = 1.959963984540054


class AccuracyVerdict(StrEnum):
    BETTER = "better"
    WORSE = "worse"
    TIE = "tie"


def pack(correct: np.ndarray) -> str:
    """Per-image correctness (bools, held-out order) as base64 of packed bits: what the manifest stores."""
    bits = np.asarray(correct, dtype=bool)
    return f"{bits.size}:" + base64.b64encode(np.packbits(bits).tobytes()).decode()


def unpack(text: str) -> np.ndarray:
    n, _, data = text.partition(":")
    return np.unpackbits(np.frombuffer(base64.b64decode(data), dtype=np.uint8))[: int(n)].astype(bool)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact p-value for ``b`` vs ``c`` discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def wilson(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion; (0, 1) for no trials."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Comparison:
    verdict: AccuracyVerdict  # of the first variant against the second
    p_value: float | None  # None: no paired data, the point estimates decided
    only_first: int  # images only the first got right
    only_second: int
    paired: bool


def compare(a_correct: np.ndarray | None, b_correct: np.ndarray | None, a_top1: float, b_top1: float,
            alpha: float = ALPHA) -> Comparison:  # fmt: skip
    """The first variant against the second, on the same images where both have per-image results."""
    if a_correct is None or b_correct is None or len(a_correct) != len(b_correct):
        verdict = (
            AccuracyVerdict.BETTER
            if a_top1 > b_top1
            else AccuracyVerdict.WORSE
            if a_top1 < b_top1
            else AccuracyVerdict.TIE
        )
        return Comparison(verdict, None, 0, 0, paired=False)
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = mcnemar_exact_p(only_a, only_b)
    verdict = (
        (AccuracyVerdict.BETTER if only_a > only_b else AccuracyVerdict.WORSE) if p < alpha else AccuracyVerdict.TIE
    )
    return Comparison(verdict, p, only_a, only_b, paired=True)


@dataclass(frozen=True)
class Level:
    """One rung of the accuracy ladder: variants the paired test cannot tell from the rung's most accurate one."""

    members: tuple[str, ...]  # most accurate first
    top1: float  # of the first member
    cheapest: str  # what the policy serves of this rung (among ties the cheaper wins)
    cost: float  # the cheapest member's cost
    p_vs_above: float | None  # the paired test of this rung's first member against the rung above's; None on top


def ladder(variants: dict[str, tuple[float, np.ndarray | None, float]], alpha: float = ALPHA) -> list[Level]:
    """Group ``{name: (top1, per-image correctness or None, cost)}`` into accuracy levels, most accurate first.

    Walking down by top-1, a variant opens a new level when it is significantly worse than the first member of the
    current level; otherwise it ties with it and joins. The ladder is *separated* when consecutive levels' first
    members differ significantly (true by construction) and *ordered* when each level's cheapest member costs less
    than the one above's (:func:`ordered`).
    """
    order = sorted(variants, key=lambda n: (-variants[n][0], variants[n][2]))
    groups: list[list[str]] = []
    p_values: list[float | None] = []
    for name in order:
        top1, hits, _ = variants[name]
        if groups:
            head = groups[-1][0]
            c = compare(hits, variants[head][1], top1, variants[head][0], alpha)
            if c.verdict != AccuracyVerdict.WORSE:
                groups[-1].append(name)
                continue
            p_values.append(c.p_value)
        else:
            p_values.append(None)
        groups.append([name])
    levels = []
    for members, p in zip(groups, p_values, strict=True):
        cheapest = min(members, key=lambda n: variants[n][2])
        levels.append(Level(tuple(members), variants[members[0]][0], cheapest, variants[cheapest][2], p))
    return levels


def ordered(levels: list[Level]) -> bool:
    """Each level's cheapest member is cheaper than the level above's: going down the ladder buys capacity."""
    return all(lo.cost < hi.cost for hi, lo in itertools.pairwise(levels))


def variant_ladder(variants: dict, floor: float = 0.0) -> list[Level]:
    """:func:`ladder` of manifest or policy variants (anything with ``top1``, ``correct`` and ``latency_ms_b32``)
    at or above ``floor``; the cost is the build's batch-32 latency, as the policy reads it."""
    return ladder(
        {
            name: (v.top1, unpack(v.correct) if v.correct else None, v.latency_ms_b32)
            for name, v in variants.items()
            if v.top1 >= floor
        }
    )
