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

Two noise sources. Every seed is scored on the SAME test set (~530 examples), so the test set's sampling noise
is common to all seeds and invisible in the spread of the d_s: the paired t interval above covers the difference
on this test set, and misses the population difference (new seeds AND new test examples) in up to a quarter
of studies once examples matter (simulation in tests/test_stats.py). :func:`paired_bootstrap` takes the
per-example scores instead and resamples seeds and examples together (a crossed bootstrap, corrected for its
known biases; derivation in its docstring). Its four-way :func:`outcome` adds ``equivalent`` (the 90% interval
inside ±sesoi, a TOST at 5%), and :func:`outcome_from_p` decides the same from p-values, so that several claims
can be held to a Holm-adjusted family-wise 5% (:func:`holm`).

No scipy: the t distribution's CDF is the regularized incomplete beta function (continued fraction, as in
Numerical Recipes §6.4) and quantiles are found by bisection; tests check both against scipy.
"""

from __future__ import annotations

import math
import numbers
import re
import statistics
from collections.abc import Mapping

import numpy as np

VERDICTS = ("reproduced", "contradicted", "inconclusive")
OUTCOMES = ("reproduced", "contradicted", "equivalent", "inconclusive")
NO_VERDICT = "no verdict"
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


def _key_kind(key) -> str:
    if isinstance(key, bool):
        return "bool"
    if isinstance(key, numbers.Integral):
        return "int"
    return "str" if isinstance(key, str) else type(key).__name__


def _check_seed_keys(method: Mapping, baseline: Mapping, integer_like: bool) -> None:
    """Seed keys must be of one type across both arms: JSON gives int keys back as str, and "1" never equals 1,
    so a mixed pair would silently share no seed (n = 0) instead of failing."""
    kinds = {}
    for name, values in (("method", method), ("baseline", baseline)):
        found = sorted({_key_kind(key) for key in values})
        if len(found) > 1:
            raise ValueError(f"{name}'s seed keys mix types {found}: {list(values)!r}; use one type")
        if integer_like:
            for key in values:
                kind = _key_kind(key)
                if not (kind == "int" or (kind == "str" and re.fullmatch(r"\s*[+-]?\d+\s*", key))):
                    raise ValueError(f"{name}'s seed keys must be integers (or their decimal strings, as JSON gives "
                                     f"them back), got {key!r} ({type(key).__name__})")
        kinds[name] = found
    if kinds["method"] and kinds["baseline"] and kinds["method"] != kinds["baseline"]:
        raise ValueError(f"seed keys of method are {kinds['method'][0]} ({list(method)!r}) but of baseline "
                         f"{kinds['baseline'][0]} ({list(baseline)!r}): no seed would pair (JSON turns int keys into "
                         "str); convert both to one type")


def paired_difference(method: dict[int, float], baseline: dict[int, float], higher_is_better: bool = True,
                      threshold: float = 0.0) -> dict:
    """Seed -> value for the method and its baseline; the statistics of d_s = method − baseline over the seeds
    both have (signed so that positive is better), with its CI, the detectable difference and the verdict.

    Returns strict-JSON-ready numbers: ``n``, ``seeds``, ``differences``, ``mean``, ``sd``, ``ci95`` ([low,
    high] or None below 2 seeds), ``ci_method``, ``detectable`` (80% power) and ``verdict``.

    Refuses (ValueError) a NaN or infinite value, naming its seed (a diverged run must not become a verdict),
    and seed keys of different types in the two dicts ("1" vs 1, as JSON gives keys back), which would
    otherwise pair nothing and quietly report n = 0.
    """
    _check_seed_keys(method, baseline, integer_like=False)
    for name, values in (("method", method), ("baseline", baseline)):
        for seed, value in values.items():
            try:
                finite = math.isfinite(value)
            except TypeError:
                raise ValueError(f"{name}[{seed!r}] must be a number, got {value!r}") from None
            if not finite:
                raise ValueError(f"{name}[{seed!r}] is not finite: {value!r} (a diverged or unfinished run?)")
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


# --- Two noise sources: a crossed seed x example bootstrap ------------------------------------------------------

BOOTSTRAP_CI_METHOD = ("crossed seed x example bootstrap, its SE corrected for the crossed bootstrap's biases, "
                       "t interval on Satterthwaite degrees of freedom")
MIN_RESAMPLES = 1000
_CHUNK = 1000  # resamples drawn per block: bounds memory to CHUNK x examples counts (part of the random stream)


def _scores(name: str, seed, values) -> np.ndarray:
    """One run's per-example scores as a finite 1-D float64 array, or a ValueError naming the run."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}[{seed!r}] must be a 1-D sequence of per-example numbers, got "
                         f"{type(values).__name__}") from None
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}[{seed!r}] must be a non-empty 1-D sequence of per-example scores, got shape "
                         f"{array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name}[{seed!r}] has a non-finite score {float(array[bad[0]])} at example "
                         f"{int(bad[0])} ({bad.size} in all): a diverged or unfinished run?")
    return array


def _counts(rng: np.random.Generator, rows: int, size: int) -> np.ndarray:
    """``rows`` multinomial(size, uniform) count vectors: how often each of ``size`` items is drawn when drawing
    ``size`` with replacement. Drawing indices and counting them is this exact distribution and ~5x faster than
    ``Generator.multinomial`` with many categories."""
    draws = rng.integers(0, size, size=(rows, size))
    draws += (np.arange(rows) * size)[:, None]
    return np.bincount(draws.ravel(), minlength=rows * size).reshape(rows, size)


def _crossed_bootstrap(differences: np.ndarray, weights: np.ndarray, resamples: int, seed: int) -> dict:
    """The crossed bootstrap of the mean over seeds of the per-seed weighted mean difference, and its split
    into seed, example and seed x example parts (the variances A, B and C of :func:`paired_bootstrap`'s
    docstring).

    ``differences`` is (seeds S, examples E); ``weights`` (E,) are all positive. Each resample draws seed counts
    u ~ Multinomial(S) and ONE example count vector v ~ Multinomial(E) shared by every seed and both arms;
    its value is sum_s u_s t_s(v) / S with t_s(v) = sum_e v_e w_e d_se / sum_e v_e w_e (exact, ratio and
    all). The parts come from the first-order (linear) expansion of that value around the observed one, with
    pseudo-values y_se = t_s + (w_e / mean w)(d_se − t_s) whose row means are the t_s:

        seed part         (u − 1) · alpha / S,   alpha_s = t_s − mean
        example part      (v − 1) · beta / E,    beta_e  = mean_s y_se − mean
        interaction       the rest (the linear seed x example term, plus any nonlinearity of the ratio)
    """
    n_seeds, n_examples = differences.shape
    per_seed = differences @ weights / weights.sum()
    total = float(per_seed.mean())
    pseudo = per_seed[:, None] + (weights / weights.mean())[None, :] * (differences - per_seed[:, None])
    alpha = per_seed - total
    beta = pseudo.mean(axis=0) - total
    beta -= beta.mean()  # zero up to rounding already; exactly zero keeps the example part centred
    columns = np.concatenate([(differences * weights).T, weights[:, None], beta[:, None]], axis=1)
    rng = np.random.default_rng(seed)
    replicates, seed_part, example_part = np.empty(resamples), np.empty(resamples), np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        block = slice(start, min(start + _CHUNK, resamples))
        rows = block.stop - block.start
        seed_counts = _counts(rng, rows, n_seeds)
        # einsum, not @: the product is small (S + 2 columns) and BLAS's threads, spinning on shared cores,
        # made it 10-30x slower than einsum's single loop in the measurements
        sums = np.einsum("be,ek->bk", _counts(rng, rows, n_examples), columns)
        per_seed_star = sums[:, :n_seeds] / sums[:, n_seeds:n_seeds + 1]
        replicates[block] = (seed_counts * per_seed_star).sum(axis=1) / n_seeds
        seed_part[block] = (seed_counts - 1) @ alpha / n_seeds
        example_part[block] = sums[:, n_seeds + 1] / n_examples
    interaction = replicates - total - seed_part - example_part
    cells = pseudo - total - alpha[:, None] - beta[None, :]
    # per example, its share of the test-set variance estimate k_ex − k_int (see _variance_and_df): their spread
    # says how precisely that estimate is known (a few examples that ever differ carry it all with 0/1 scores)
    shares = (np.square(beta) / (n_examples * (n_examples - 1))
              - np.square(cells).sum(axis=0) / ((n_seeds - 1) * (n_examples - 1) * n_seeds * n_examples))
    return {"mean": total, "per_seed": per_seed, "replicates": replicates,
            "A": float(seed_part.var(ddof=1)), "B": float(example_part.var(ddof=1)),
            "C": float(interaction.var(ddof=1)), "test_set_shares": shares}


def _variance_and_df(parts: dict, n_seeds: int, n_examples: int, seeds_tied: bool) -> tuple[dict, float]:
    """Var(mean) split as {"seeds", "examples", "interaction"} and Satterthwaite's degrees of freedom for it,
    from the crossed bootstrap's parts A, B, C (derivation in :func:`paired_bootstrap`). ``seeds_tied``: every
    seed gave exactly the same d_s, so the seed spread is zero by accident of 0/1 counting."""
    s, e = n_seeds, n_examples
    k_seed = s / (s - 1) * parts["A"]                          # unbiased for sa²/S + sc²/(SE): the paired t's se²
    k_example = e / (e - 1) * parts["B"]                       # unbiased for sb²/E + sc²/(SE)
    k_interaction = s * e / ((s - 1) * (e - 1)) * parts["C"]  # unbiased for sc²/(SE)
    if seeds_tied and k_interaction > 0:  # identical d_s (0/1 scores, few flips): the seed spread is 0 by accident,
        k_seed = k_interaction            # not below the least variance the mean can have
    test_set = max(0.0, k_example - k_interaction)  # sb²/E: the test set's noise, which no seed spread can show
    variance = k_seed + test_set
    # Satterthwaite: df = V² / sum(Var(term) / 2), with Var(k_seed) = 2 k_seed² / (S−1) (normal seed means) and
    # Var(test-set term) = E x the variance of the examples' shares of it (examples are the independent units)
    spread = k_seed ** 2 / (s - 1)
    if test_set > 0:
        spread += e * float(np.var(parts["test_set_shares"], ddof=1)) / 2.0
    # never fewer df than the seed-only t interval's: when one or two examples carry the test part, its own
    # variance estimate is as noisy as the part and Satterthwaite's df fall below 1 (t quantiles in the 1e10s)
    df = max(variance ** 2 / spread, s - 1.0) if spread > 0 else float(s - 1)
    return {"seeds": k_seed, "examples": test_set, "interaction": k_interaction}, df


def _seed_order(key) -> int:
    return int(key)


def _json_seed(key):
    return int(key) if isinstance(key, numbers.Integral) else key


def paired_bootstrap(method: Mapping, baseline: Mapping, *, weights=None, higher_is_better: bool = True,
                     threshold: float = 0.0, sesoi: float | None = None, resamples: int = 10_000,
                     seed: int = 0) -> dict:
    """The mean paired difference over seeds of per-example scores, with an interval that counts BOTH noise
    sources: which seeds were trained, and which examples happen to be in the test set.

    ``method`` and ``baseline`` map seed -> per-example scores (0/1 correctness, a per-example loss, ...) on the
    same examples in the same order; seeds in both are paired, the others reported in ``unpaired``.
    ``weights`` (per example, >= 0, e.g. token counts) make each run's score the weighted mean
    sum(w x) / sum(w); examples of weight 0 drop out. The statistic is the mean over seeds of d_s = the
    method's score minus the baseline's, signed so that positive = better.

    Why not the paired t interval over the d_s: every seed is scored on the SAME test set, so the test set's
    sampling noise is common to all seeds and invisible in their spread; that interval covers the difference
    on this test set, not the one a new test set (the population) would show. By simulation it covers the
    population difference in only 77-88% of studies where example noise matters.

    Model. Write the per-example signed difference as d_se = mu + a_s + b_e + c_se: seed effect a (variance
    sa²), example effect b (sb²: examples that favour one method, common to every seed), and the seed x
    example interaction c (sc²: the per-seed per-example flips). This is the ANOVA (Hoeffding) split of any
    crossed design with exchangeable seeds and examples; no normality is assumed. With S seeds and E examples,

        Var(mean) = sa²/S + sb²/E + sc²/(SE).

    Resampling. Each of ``resamples`` replicates draws S seeds with replacement and E examples with
    replacement, the SAME example draw for both arms and for every seed (the test set is shared, so its
    noise is common to all seeds), as multinomial counts u (seeds) and v (examples): the replicate is
    sum_s u_s t_s(v) / S with t_s(v) = v^T (w * d_s) / v^T w, computed for all replicates as one
    (replicates x E) @ (E x S) product (numpy, ``default_rng(seed)``). Each replicate is split into a seed
    part, an example part and the rest (the interaction), whose variances A, B, C have expectations

        E[A] = (S-1)/S · (sa²/S + sc²/(SE))
        E[B] = (E-1)/E · (sb²/E + sc²/(SE))
        E[C] = (S-1)(E-1)/(SE) · sc²/(SE)

    so the raw crossed bootstrap (``se_crossed`` = sd of the replicates) counts the interaction about three
    times (2.6 times at S = 5) and shrinks the seed part by (S-1)/S: with a t quantile on S-1 df it covers
    97-100% of simulated studies (99.5-100% where flips dominate), and a percentile interval on 5 seeds is
    too coarse where seeds dominate.

    Correction. k_seed = S/(S-1)·A, k_ex = E/(E-1)·B and k_int = SE/((S-1)(E-1))·C are unbiased for the three
    brackets, and k_seed is (up to resampling noise) the paired t interval's se², sd(d_s)²/S. So

        se² = k_seed + max(0, k_ex - k_int)

    the seed spread as the t interval sees it, plus the test-set component sb²/E that no seed spread can show,
    truncated at zero (a negative estimate is noise). The seed part is NOT truncated at its own component
    (sa²/S = k_seed - k_int): with 5 seeds that estimate is often negative when the flips dominate, and
    truncating it biases se upward (97.4-97.6% coverage by simulation). The one exception: when every seed gives
    exactly the same d_s (0/1 scores with a handful of flips), k_seed = 0 by accident and is raised to k_int,
    the least variance the mean can have.

    The intervals are mean ± t_{q, df} · se, with Satterthwaite's df = se⁴ / (k_seed²/(S-1) + Var(test part)/2),
    never below S-1: S-1 df where seeds dominate, a normal interval where a test set of many independent
    examples does. The test part's variance is E x the variance of the examples' shares of k_ex - k_int; when
    a few examples carry it (0/1 scores where runs rarely disagree) that is large and the df drop to a few,
    which keeps the interval honest there: the variance estimate then moves with the mean itself (as the Wald
    interval's does) and a normal quantile under-covers (92% by simulation).

    ``p_value`` (two-sided, "difference == threshold") and ``p_tost`` (two one-sided tests of "|difference| >=
    sesoi") come from the same t pivot, so p_value < 0.05 exactly when ``ci95`` excludes the threshold and
    p_tost < 0.05 exactly when ``ci90`` lies inside (-sesoi, +sesoi): :func:`outcome` and
    :func:`outcome_from_p` agree. The resampling makes se random at the ~1% level for 10,000 resamples (~2%
    for 1,000 ones); the same ``seed`` gives the same answer. Why a t pivot rather than the bootstrap's
    percentiles: 5 seeds allow only 126 distinct seed draws, too coarse for the tails.

    Simulated coverage of the 95% interval, 2,000 studies per regime (model in tests/test_stats.py): 93.4-96.3%
    in 12 regimes of 3, 5 and 10 seeds x 200-600 0/1 examples, accuracy 0.8-0.9, seed-to-seed accuracy sd
    0.002-0.025, from seed-dominated to test-set-dominated; 98.0% (conservative: t on 2 df where the pivot is
    nearly normal) with 3 seeds on near-deterministic examples, where only ~9 examples ever differ.

    Returns strict-JSON-ready values: ``n``, ``seeds``, ``unpaired`` ({"method": [...], "baseline": [...]}),
    ``n_examples``, ``mean``, ``differences`` (the d_s), ``ci95``, ``ci90``, ``p_value``, ``p_tost`` (None without
    ``sesoi``), ``se``, ``df``, ``se_crossed`` (the raw crossed bootstrap's, for comparison), ``variance``
    ({"seeds": k_seed, "examples": the test-set part; se² is their sum; "interaction": k_int, already inside
    "seeds", for information}), ``detectable`` (80% power, two-sided 5%), ``resamples``, ``seed``,
    ``ci_method``, ``threshold``, ``sesoi``, ``higher_is_better``, ``degenerate`` and ``reason``. With one seed the
    seed noise cannot be estimated: intervals, p-values and se are None, ``reason`` "fewer than 2 seeds". When
    no resample differs from another (no spread: identical runs, or a constant difference), the zero-width
    intervals are returned with ``degenerate`` True and ``reason`` "no spread to estimate"; their p-values are
    0 or 1 by which side of the threshold (and of ±sesoi) the mean lies.

    Refuses (ValueError, naming the field and value): non-mapping arms; seed keys that are not integers (or
    their decimal strings) or differ in type between the arms ("1" vs 1); no seed in common; scores that are
    not finite, not 1-D, or of different lengths between seeds or arms; weights of the wrong length, negative,
    not finite, or with fewer than 2 positive; a non-finite threshold; sesoi <= 0; resamples < 1000.
    """
    if not isinstance(higher_is_better, bool):
        raise ValueError(f"higher_is_better must be True or False, got {higher_is_better!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, numbers.Integral) or resamples < MIN_RESAMPLES:
        raise ValueError(f"resamples must be an int >= {MIN_RESAMPLES} (fewer make the SE itself noisy), got "
                         f"{resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if sesoi is not None and (isinstance(sesoi, bool) or not isinstance(sesoi, numbers.Real)
                              or not math.isfinite(sesoi) or sesoi <= 0):
        raise ValueError(f"sesoi (smallest effect size of interest) must be a positive number or None, got {sesoi!r}")
    for name, arm in (("method", method), ("baseline", baseline)):
        if not isinstance(arm, Mapping):
            raise ValueError(f"{name} must be a mapping seed -> per-example scores, got {type(arm).__name__}")
    _check_seed_keys(method, baseline, integer_like=True)
    seeds = sorted(set(method) & set(baseline), key=_seed_order)
    if not seeds:
        raise ValueError(f"method and baseline have no seed in common: method has {sorted(method, key=_seed_order)!r}, "
                         f"baseline {sorted(baseline, key=_seed_order)!r}")
    rows, n_examples, first = [], None, None
    for s in seeds:
        pair = []
        for name, arm in (("method", method), ("baseline", baseline)):
            scores = _scores(name, s, arm[s])
            if n_examples is None:
                n_examples, first = scores.size, f"{name}[{s!r}]"
            elif scores.size != n_examples:
                raise ValueError(f"{name}[{s!r}] has {scores.size} examples but {first} has {n_examples}: every run "
                                 "must be scored on the same examples, in the same order")
            pair.append(scores)
        rows.append(pair[0] - pair[1] if higher_is_better else pair[1] - pair[0])
    differences = np.stack(rows)
    if weights is None:
        w = np.ones(n_examples)
    else:
        try:
            w = np.asarray(weights, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"weights must be a 1-D sequence of numbers, got {type(weights).__name__}") from None
        if w.shape != (n_examples,):
            raise ValueError(f"weights must have one entry per example ({n_examples}), got shape {w.shape}")
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
        if bad.size:
            raise ValueError(f"weights must be finite and >= 0, got weights[{int(bad[0])}] = {float(w[bad[0]])}")
        if not w.sum() > 0:
            raise ValueError(f"weights must have a positive sum, got {float(w.sum())}")
    positive = w > 0
    if positive.sum() < 2:
        raise ValueError(f"need at least 2 examples with positive weight (the test set's noise needs two to estimate), "
                         f"got {int(positive.sum())}")
    differences, w = differences[:, positive], w[positive]
    per_seed = differences @ w / w.sum()
    n_seeds, n_used = differences.shape
    out = {"n": n_seeds, "seeds": [_json_seed(s) for s in seeds],
           "unpaired": {"method": sorted((_json_seed(s) for s in set(method) - set(seeds)), key=_seed_order),
                        "baseline": sorted((_json_seed(s) for s in set(baseline) - set(seeds)), key=_seed_order)},
           "n_examples": int(n_examples), "mean": float(per_seed.mean()), "differences": [float(d) for d in per_seed],
           "ci95": None, "ci90": None, "p_value": None, "p_tost": None, "se": None, "df": None, "se_crossed": None,
           "variance": None, "detectable": None, "resamples": int(resamples), "seed": int(seed),
           "ci_method": BOOTSTRAP_CI_METHOD, "threshold": float(threshold),
           "sesoi": None if sesoi is None else float(sesoi), "higher_is_better": higher_is_better,
           "degenerate": False, "reason": None}
    if n_seeds < 2:
        out["reason"] = "fewer than 2 seeds"
        return out
    boot = _crossed_bootstrap(differences, w, int(resamples), int(seed))
    mean = boot["mean"]
    tied = float(np.ptp(per_seed)) <= 1e-12 * max(1.0, abs(mean))
    components, df = _variance_and_df(boot, n_seeds, n_used, tied)
    se = math.sqrt(components["seeds"] + components["examples"])
    spread = float(np.ptp(boot["replicates"]))
    out.update(mean=mean, se_crossed=float(boot["replicates"].std(ddof=1)), variance=components,
               ci_method=f"{BOOTSTRAP_CI_METHOD} ({resamples} resamples)")
    if spread <= 1e-12 * max(1.0, abs(mean)) or se == 0.0:
        out.update(ci95=[mean, mean], ci90=[mean, mean], se=0.0, df=float(df), detectable=0.0, degenerate=True,
                   reason="no spread to estimate", p_value=1.0 if mean == threshold else 0.0,
                   p_tost=None if sesoi is None else (0.0 if abs(mean) < sesoi else 1.0))
        return out
    t975, t95, t80 = (t_quantile(p, df) for p in (0.975, 0.95, 0.80))
    out.update(se=se, df=float(df), ci95=[mean - t975 * se, mean + t975 * se], ci90=[mean - t95 * se, mean + t95 * se],
               detectable=(t975 + t80) * se, p_value=2.0 * t_cdf(-abs(mean - threshold) / se, df),
               p_tost=None if sesoi is None else tost_p(mean, se, df, sesoi))
    return out


def tost_p(mean: float, se: float, df: float, sesoi: float) -> float:
    """TOST p-value for equivalence within ±sesoi: the larger of the one-sided t p-values of "difference <=
    -sesoi" and "difference >= +sesoi". It is < alpha exactly when the (1 − 2·alpha) interval mean ± t·se lies
    inside (-sesoi, +sesoi); showing equivalence needs both bounds, hence the larger p."""
    for name, value in (("mean", mean), ("se", se), ("df", df), ("sesoi", sesoi)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if se <= 0 or df <= 0 or sesoi <= 0:
        raise ValueError(f"se, df and sesoi must be positive, got se={se!r}, df={df!r}, sesoi={sesoi!r}")
    above_lower = t_cdf(-(mean + sesoi) / se, df)  # P(T >= (mean + sesoi)/se): H0 difference <= -sesoi
    below_upper = t_cdf((mean - sesoi) / se, df)   # H0 difference >= +sesoi
    return max(above_lower, below_upper)


def equivalent(ci90: list[float] | None, sesoi: float) -> bool:
    """True when the 90% interval lies strictly inside (-sesoi, +sesoi): both one-sided 5% tests reject a
    difference as large as sesoi (TOST at 5%). No interval (one seed) is never equivalence."""
    if isinstance(sesoi, bool) or not isinstance(sesoi, numbers.Real) or not math.isfinite(sesoi) or sesoi <= 0:
        raise ValueError(f"sesoi must be a positive number, got {sesoi!r}")
    if ci90 is None:
        return False
    low, high = ci90
    return -sesoi < low and high < sesoi


def holm(p_values: list) -> list:
    """Holm-Bonferroni step-down adjusted p-values, in the input order: sorted ascending, the i-th smallest
    (from 1) becomes max over j <= i of min(1, (m − j + 1)·p_(j)). Rejecting where the adjusted p < alpha keeps
    the chance of any false claim among the m at most alpha, whatever their dependence, and rejects at least
    what Bonferroni does. None entries (claims with no p-value) pass through and do not count in m."""
    checked = []
    for index, p in enumerate(p_values):
        if p is None:
            continue
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p_values[{index}] must be a number in [0, 1] or None, got {p!r}")
        checked.append((float(p), index))
    adjusted: list = [None] * len(p_values)
    m, running = len(checked), 0.0
    for rank, (p, index) in enumerate(sorted(checked)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def outcome(ci95: list[float] | None, ci90: list[float] | None = None, threshold: float = 0.0,
            sesoi: float | None = None, kind: str = "better") -> str:
    """Four-way outcome of a claim "difference > threshold" (one of :data:`OUTCOMES`), or NO_VERDICT without
    an interval (one seed): ``reproduced`` when the 95% interval lies above the threshold, ``contradicted``
    when below; otherwise ``equivalent`` when a sesoi is given, the claim is of kind "better" and the 90%
    interval lies inside ±sesoi (TOST at 5%: the study rules out any difference large enough to matter, an
    answer where "inconclusive" would be none); else ``inconclusive``. Other kinds ("matches": threshold =
    −tolerance) already ask a one-sided question, so equivalence does not apply to them."""
    if ci95 is None:
        return NO_VERDICT
    low, high = ci95
    if low > threshold:
        return "reproduced"
    if high < threshold:
        return "contradicted"
    if sesoi is not None and kind == "better":
        if ci90 is None:
            raise ValueError("ci90 is needed for the equivalence test when sesoi is given, got None")
        if equivalent(ci90, sesoi):
            return "equivalent"
    return "inconclusive"


def outcome_from_p(p_value: float | None, p_tost: float | None, mean: float | None, threshold: float = 0.0,
                   alpha: float = 0.05, kind: str = "better") -> str:
    """:func:`outcome` from p-values, so that Holm-adjusted ones (:func:`holm`) can decide several claims at
    once: reproduced / contradicted when the two-sided p < alpha (by the sign of mean − threshold), else
    equivalent when kind is "better" and the TOST p < alpha, else inconclusive; NO_VERDICT without a p-value.
    On :func:`paired_bootstrap`'s unadjusted p-values and alpha = 0.05 it gives exactly outcome()'s answer."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if p_value is None or mean is None:
        return NO_VERDICT
    if p_value < alpha and mean != threshold:
        return "reproduced" if mean > threshold else "contradicted"
    if p_tost is not None and kind == "better" and p_tost < alpha:
        return "equivalent"
    return "inconclusive"
