"""lowrank_lab.stats: the t distribution against scipy (the outside judge), paired intervals, three-way verdicts."""

import math
import statistics

import pytest

from lowrank_lab import stats

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 30, 250])
def test_t_distribution_matches_scipy(df):
    for p in (0.6, 0.8, 0.9, 0.975, 0.995):
        assert stats.t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9, abs=1e-10)
        assert stats.t_quantile(1 - p, df) == pytest.approx(scipy_stats.t.ppf(1 - p, df), rel=1e-9, abs=1e-10)
    for t in (-30.0, -2.5, -0.1, 0.0, 0.7, 4.0):
        assert stats.t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), rel=1e-9, abs=1e-12)


def test_incomplete_beta_matches_scipy():
    for a, b, x in [(0.5, 0.5, 0.3), (2.0, 0.5, 0.9), (15.0, 0.5, 0.05), (3.0, 7.0, 0.6), (100.0, 0.5, 0.999)]:
        assert stats.regularized_incomplete_beta(a, b, x) == pytest.approx(scipy_special.betainc(a, b, x), rel=1e-9)


def test_paired_interval_is_the_t_interval_of_the_differences():
    method = {0: 0.81, 1: 0.80, 2: 0.83, 3: 0.79, 4: 0.82, 9: 0.5}  # seed 9 has no partner: left out
    baseline = {0: 0.79, 1: 0.80, 2: 0.80, 3: 0.78, 4: 0.79}
    out = stats.paired_difference(method, baseline)
    d = [method[s] - baseline[s] for s in range(5)]
    half = scipy_stats.t.ppf(0.975, 4) * statistics.stdev(d) / math.sqrt(5)
    assert out["n"] == 5 and out["seeds"] == [0, 1, 2, 3, 4]
    assert out["ci95"] == pytest.approx([statistics.fmean(d) - half, statistics.fmean(d) + half], rel=1e-9)
    power = (scipy_stats.t.ppf(0.975, 4) + scipy_stats.t.ppf(0.8, 4)) * statistics.stdev(d) / math.sqrt(5)
    assert out["detectable"] == pytest.approx(power, rel=1e-9)
    assert out["verdict"] == "reproduced"
    lower = stats.paired_difference({0: 1.0, 1: 1.1}, {0: 2.0, 1: 2.2}, higher_is_better=False)
    assert lower["mean"] == pytest.approx(1.05)  # signed so that positive = better


@pytest.mark.parametrize("ci, threshold, expected", [
    ([0.01, 0.03], 0.0, "reproduced"), ([-0.03, -0.01], 0.0, "contradicted"), ([-0.01, 0.02], 0.0, "inconclusive"),
    ([-0.015, 0.01], -0.02, "reproduced"),  # "matches within 0.02": not worse by more than the tolerance
    ([-0.05, -0.03], -0.02, "contradicted"), (None, 0.0, "inconclusive"),
])
def test_three_way_verdict(ci, threshold, expected):
    assert stats.verdict(ci, threshold) == expected
    assert expected in stats.VERDICTS


def test_one_seed_has_no_interval():
    out = stats.paired_difference({0: 0.9}, {0: 0.5})
    assert out["ci95"] is None and out["detectable"] is None and out["verdict"] == "inconclusive"
    assert stats.ci_text(out) == "none (< 2 seeds)"
    assert stats.ci_text(stats.paired_difference({0: 0.9, 1: 0.8}, {0: 0.5, 1: 0.5})) == "[-0.2853, +0.9853]"
    with pytest.raises(ValueError, match="p must be in"):
        stats.t_quantile(1.0, 3)
