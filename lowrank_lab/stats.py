"""Paired comparisons over seeds: Student-t quantiles, the 95% CI of a mean paired difference, three-way verdicts.

Two methods trained with the same seed see the same data order and the same head initialisation, so the
per-seed difference d_s = m_method(s) − m_baseline(s) removes the shared part of the seed-to-seed spread. Over
n seeds its mean d̄ has the confidence interval

    d̄ ± t_{0.975, n−1} · sd(d) / √n                        (paired t interval, 95%)

A claim "the method is better" (d > 0, differences signed so that positive is better) is then

* ``reproduced``    when the whole interval lies above the claim's threshold (0, or −tolerance for "matches"),
* ``contradicted``  when the whole interval lies below it,
* ``inconclusive``  when the interval covers it: the study cannot tell, which is an answer too.

The smallest difference the study could detect (80% power, two-sided 5% level) is
(t_{0.975, n−1} + t_{0.80, n−1}) · sd(d) / √n: a true effect below it would usually come out inconclusive.

No scipy: the t distribution's CDF is the regularized incomplete beta function (continued fraction, as in
Numerical Recipes §6.4) and quantiles are found by bisection; tests check both against scipy.
"""

from __future__ import annotations

import math
import statistics

VERDICTS = ("reproduced", "contradicted", "inconclusive")
CI_METHOD = "paired t interval over seeds (95%, n-1 degrees of freedom)"


def _incomplete_beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (modified Lentz); converges fast for x < (a + 1)/(a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x!r}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _incomplete_beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _incomplete_beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if not df > 0:
        raise ValueError(f"df must be positive, got {df!r}")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on :func:`t_cdf`, to ~1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def verdict(ci95: list[float] | None, threshold: float = 0.0) -> str:
    """Three-way verdict on a claim "difference > threshold" from its 95% CI (None: too few seeds)."""
    if ci95 is None:
        return "inconclusive"
    low, high = ci95
    if low > threshold:
        return "reproduced"
    if high < threshold:
        return "contradicted"
    return "inconclusive"


def ci_text(paired: dict, digits: int = 4) -> str:
    """The 95% CI of a :func:`paired_difference` (or of a reproduction row) as "[low, high]" (signed), or why
    it has none."""
    if paired["ci95"] is None:
        return "none (< 2 seeds)"
    low, high = paired["ci95"]
    return f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def paired_difference(method: dict[int, float], baseline: dict[int, float], higher_is_better: bool = True,
                      threshold: float = 0.0) -> dict:
    """Seed -> value for the method and its baseline; the statistics of d_s = method − baseline over the seeds
    both have (signed so that positive is better), with its CI, the detectable difference and the verdict.

    Returns strict-JSON-ready numbers: ``n``, ``seeds``, ``differences``, ``mean``, ``sd``, ``ci95`` ([low,
    high] or None below 2 seeds), ``ci_method``, ``detectable`` (80% power) and ``verdict``.
    """
    seeds = sorted(set(method) & set(baseline))
    sign = 1.0 if higher_is_better else -1.0
    differences = [sign * (method[s] - baseline[s]) for s in seeds]
    n = len(differences)
    out = {"n": n, "seeds": seeds, "differences": differences, "threshold": threshold, "ci_method": CI_METHOD,
           "mean": statistics.fmean(differences) if n else None, "sd": None, "ci95": None, "detectable": None}
    if n >= 2:
        sd = statistics.stdev(differences)
        se = sd / math.sqrt(n)
        t975, t80 = t_quantile(0.975, n - 1), t_quantile(0.80, n - 1)
        out.update(sd=sd, ci95=[out["mean"] - t975 * se, out["mean"] + t975 * se], detectable=(t975 + t80) * se)
    out["verdict"] = verdict(out["ci95"], threshold)
    return out
