"""The paired comparison of variants (tritune/compare.py) against known values."""

from __future__ import annotations

import numpy as np
import pytest

from tritune.compare import AccuracyVerdict, compare, ladder, mcnemar_exact_p, ordered, pack, unpack, wilson


def test_mcnemar_exact_and_wilson_match_scipy():
    from scipy.stats import binomtest

    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(1, 0) == 1.0  # one disagreement can never be significant
    for b, c in ((0, 6), (2, 10), (5, 5), (3, 17), (40, 22)):
        assert mcnemar_exact_p(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue)
    for k, n in ((81, 263), (0, 10), (10, 10), (352, 360)):
        ci = binomtest(k, n).proportion_ci(method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high))
    assert wilson(0, 0) == (0.0, 1.0)


def test_one_image_ahead_is_a_tie_and_a_clear_gap_is_not():
    rng = np.random.default_rng(0)
    a = rng.random(360) < 0.97
    b = a.copy()
    b[np.flatnonzero(a)[:1]] = False  # one image worse
    assert compare(a, b, a.mean(), b.mean()).verdict == AccuracyVerdict.TIE
    c = a.copy()
    c[np.flatnonzero(a)[:20]] = False  # twenty images worse, none better
    result = compare(a, c, a.mean(), c.mean())
    assert (
        result.verdict == AccuracyVerdict.BETTER
        and result.p_value < 1e-5
        and (result.only_first, result.only_second) == (20, 0)
    )
    assert compare(c, a, c.mean(), a.mean()).verdict == AccuracyVerdict.WORSE


def test_without_per_image_results_the_point_estimates_decide():
    result = compare(None, None, 0.98, 0.97)
    assert result.verdict == AccuracyVerdict.BETTER and not result.paired and result.p_value is None


def test_pack_round_trips():
    bits = np.random.default_rng(1).random(361) < 0.5
    assert (unpack(pack(bits)) == bits).all()


def test_the_policy_takes_a_cheaper_variant_the_test_cannot_tell_apart_but_not_a_worse_one():
    from orchestrator.policy import Context, Objective, RulePolicy, ServingConfig, VariantInfo

    rng = np.random.default_rng(2)
    fp32 = rng.random(360) < 0.97
    one_worse, much_worse = fp32.copy(), fp32.copy()
    one_worse[np.flatnonzero(fp32)[:1]] = False
    much_worse[np.flatnonzero(fp32)[:25]] = False

    def ctx_with(cheap_bits):
        variants = {
            "fp32": VariantInfo("fp32", "cnn_fp32", fp32.mean(), 14.0, pack(fp32)),
            "int8": VariantInfo("int8", "cnn_int8", cheap_bits.mean(), 5.0, pack(cheap_bits)),
        }
        return Context(objective=Objective(50.0), variants=variants, cores=2)

    current = ServingConfig("fp32")
    proposal = RulePolicy()._free(current, ctx_with(one_worse), None)
    assert proposal is not None and proposal.config.variant == "int8" and "McNemar p=1.00" in proposal.reason
    assert RulePolicy()._free(current, ctx_with(much_worse), None) is None


def test_the_policy_restores_only_a_significantly_more_accurate_variant():
    from orchestrator.metrics import Window
    from orchestrator.policy import Context, Objective, RulePolicy, ServingConfig, VariantInfo

    rng = np.random.default_rng(3)
    cheap = rng.random(360) < 0.9
    tie, better = cheap.copy(), cheap.copy()
    tie[np.flatnonzero(~cheap)[:1]] = True  # one image better: a tie
    better[np.flatnonzero(~cheap)[:20]] = True  # twenty images better, none worse

    def proposals(accurate_bits):
        variants = {
            "fp32": VariantInfo("fp32", "cnn_fp32", accurate_bits.mean(), 14.0, pack(accurate_bits)),
            "int8": VariantInfo("int8", "cnn_int8", cheap.mean(), 5.0, pack(cheap)),
        }
        ctx = Context(objective=Objective(50.0), variants=variants, cores=2, headroom=False)
        idle = Window(0.0, 2.0, requests=100, throughput_infer_per_s=50, request_rate_per_s=50, busy_s=0.02,
                      avg_latency_ms=2.0, p99_latency_ms=4.0)  # fmt: skip
        return [p.rule for p in RulePolicy()._down(idle, ServingConfig("int8", 1, 0, True, 1000), ctx)]

    assert "restore-variant" not in proposals(tie)
    assert "restore-variant" in proposals(better)


def _worse(hits: np.ndarray, n: int) -> np.ndarray:
    """``hits`` with its first ``n`` correct images turned wrong (a variant nested below it)."""
    out = hits.copy()
    out[np.flatnonzero(hits)[:n]] = False
    return out


def test_ladder_groups_ties_and_opens_a_level_at_a_significant_gap():
    rng = np.random.default_rng(1)
    top = rng.random(900) < 0.98
    variants = {
        "fp32": (top.mean(), top, 40.0),
        "pruned": (_worse(top, 2).mean(), _worse(top, 2), 10.0),  # two images behind: a tie, and cheaper
        "small": (_worse(top, 50).mean(), _worse(top, 50), 3.0),
        "tiny": (_worse(top, 110).mean(), _worse(top, 110), 0.3),
    }
    levels = ladder(variants)
    assert [lv.members for lv in levels] == [("fp32", "pruned"), ("small",), ("tiny",)]
    assert [lv.cheapest for lv in levels] == ["pruned", "small", "tiny"]
    assert levels[0].p_vs_above is None and all(lv.p_vs_above < 0.05 for lv in levels[1:])
    assert ordered(levels)
    # a lower level that costs more than the one above is not a trade worth offering
    variants["tiny"] = (*variants["tiny"][:2], 20.0)
    assert not ordered(ladder(variants))


def test_ladder_without_per_image_results_falls_back_to_the_point_estimates():
    levels = ladder({"a": (0.98, None, 2.0), "b": (0.98, None, 1.0), "c": (0.90, None, 0.5)})
    assert [lv.members for lv in levels] == [("b", "a"), ("c",)] and levels[1].p_vs_above is None  # ties: cheaper first
