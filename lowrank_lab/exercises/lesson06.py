"""Lesson 06 exercises: read a study the way its protocol says (select on validation, pair the seeds, four outcomes
and a refusal, enough seeds). Each check recomputes the reference from the definitions, not from the student's steps.

None of them can be passed by trying the few possible values: exercise 1 also takes the selection rule as a function
(run on grids the student has not seen), exercise 3 asks for the outcomes of several claims together with their
intervals, and exercise 4 for the number of seeds together with the half-widths that decide it. Exercise 2 ("with
``stats.t_quantile`` and ``statistics`` only") takes the interval as a function too, run with ``stats.paired_difference``
and ``stats.paired_bootstrap`` made to raise. The older calls (one rate, one verdict, one number) are still accepted.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

from lowrank_lab import stats
from lowrank_lab.exercises import (call_answer, function_not_attempted, not_attempted, number_answer, number_list,
                                   passed, require, text_answer, whole_answer)


def _close(a, b, tol=1e-9) -> bool:
    return a is not None and b is not None and abs(a - b) <= tol * max(1.0, abs(b))


# ================================================================================================ exercise 1
def protocol_selection(lr_grid: list[dict]):
    """The rate the protocol selects from one method's ``lr_grid``: the best validation accuracy among the runs that
    finished (status "ok" and a validation number), ties broken by the lower validation loss (None counts as
    infinite), then by the smaller rate; None when no run finished."""
    finished = [g for g in lr_grid if g.get("status") == "ok" and g.get("validation") is not None]
    loss = lambda g: g["validation_loss"] if g.get("validation_loss") is not None else math.inf
    return min(finished, key=lambda g: (-g["validation"], loss(g), g["lr"]))["lr"] if finished else None


def _entry(lr, status, validation, loss):
    return {"lr": lr, "status": status, "validation": validation, "validation_loss": loss}


# Grids a selection function must get right besides the lesson's (not shown there): a tie on accuracy broken by the
# loss, a tie on both broken by the rate, a diverged run that still carries a number, a missing loss, unsorted rows.
HIDDEN_GRIDS = (
    [_entry(1e-3, "ok", 0.912, 0.301), _entry(5e-4, "ok", 0.897, 0.355), _entry(2e-3, "ok", 0.912, 0.288),
     _entry(5e-3, "ok", 0.874, 0.402)],
    [_entry(2e-4, "ok", 0.861, 0.412), _entry(5e-4, "ok", 0.861, 0.412), _entry(1e-4, "ok", 0.843, 0.460)],
    [_entry(1e-2, "diverged", 0.955, None), _entry(5e-3, "ok", 0.902, 0.330), _entry(2e-3, "ok", 0.889, 0.351)],
    [_entry(5e-5, "ok", 0.930, None), _entry(1e-4, "ok", 0.930, 0.250), _entry(2e-5, "failed", None, None)],
)


def check_selected_rate(lr_grid: list[dict], answer) -> bool:
    """Exercise 1: the rate the protocol selects from one method's ``lr_grid`` (validation accuracy, ties by the
    lower validation loss, then by the smaller rate; a run that did not finish is never selected).

    ``answer`` may be a function ``select(lr_grid) -> rate``: the check runs it on ``lr_grid`` and on grids with ties,
    a diverged run and a missing loss, so the rule is checked, not one rate that trying the grid's few could find."""
    name = "Exercise 1 (select the rate)"
    hint = "rank the finished runs by validation accuracy; break ties by the lower validation loss. Diverged runs are out."
    if callable(answer):
        for index, grid in enumerate([list(lr_grid)] + [list(g) for g in HIDDEN_GRIDS]):
            result = call_answer(name, answer, [dict(g) for g in grid])
            if index == 0 and function_not_attempted(name, result):
                return False
            value = number_answer(name, result, "the rate your function returns")
            where = "" if index == 0 else ("right on the lesson's grid, but not on every grid (ties on accuracy, on "
                                           "accuracy and loss, a diverged run that still carries a number, a missing "
                                           "loss): ")
            require(name, _close(value, protocol_selection(grid), 1e-12),
                    where + hint + " A tie on both goes to the smaller rate; a missing loss loses a tie.")
        return passed(name, True, "")
    if not_attempted(name, answer):
        return False
    answer = number_answer(name, answer, "the selected rate")
    test_peek = any("test" in key for g in lr_grid for key in g)
    return passed(name, _close(answer, protocol_selection(lr_grid), 1e-12),
                  hint + (" The grid carries no test numbers on purpose." if not test_peek else ""))


# ================================================================================================ exercise 2
def _paired_reference(method: Mapping, baseline: Mapping) -> tuple[int, list, float, float]:
    seeds = sorted(set(method) & set(baseline))
    d = [float(method[s]) - float(baseline[s]) for s in seeds]
    n = len(d)
    if n < 2:
        return n, seeds, math.nan, math.nan
    return n, seeds, statistics.fmean(d), stats.t_quantile(0.975, n - 1) * statistics.stdev(d) / math.sqrt(n)


def _judge_interval(name: str, method: Mapping, baseline: Mapping, mean, low, high, where: str = "") -> None:
    mean, low, high = (number_answer(name, value, what) for value, what in
                       ((mean, "the mean"), (low, "the lower end"), (high, "the upper end")))
    n, seeds, centre, half = _paired_reference(method, baseline)
    require(name, n >= 2, f"a paired interval needs at least 2 seeds that both arms have; these have {n} ({seeds}): "
                          "with one difference there is no spread to estimate (n − 1 = 0 degrees of freedom)")
    require(name, _close(mean, centre, 1e-9),
            f"{where}the centre is the mean of Δ_j = method(j) − baseline(j) over the seeds j both have")
    require(name, _close(low, centre - half, 1e-6) and _close(high, centre + half, 1e-6),
            f"{where}the half-width is t(0.975, n_seeds − 1) · sd(Δ) / sqrt(n_seeds) with n_seeds = {n} paired seeds; sd uses n_seeds − 1")


# Score pairs a function answer must handle too: seeds that only one arm has, and four paired seeds.
HIDDEN_SCORES = (({1: 0.912, 2: 0.897, 3: 0.921, 4: 0.905, 5: 0.899}, {1: 0.903, 2: 0.899, 3: 0.908, 4: 0.894, 6: 0.91}),)


def check_paired_interval(method: dict, baseline: dict, mean, low=None, high=None) -> bool:
    """Exercise 2: the mean of the per-seed differences method − baseline and its 95% paired-t interval.

    ``mean`` may be a function ``paired_interval(method_scores, baseline_scores) -> (mean, low, high)`` (``low``,
    ``high`` left out): the check runs it with ``stats.paired_difference`` and ``stats.paired_bootstrap`` made to
    raise, on these scores and on scores where not every seed is paired."""
    name = "Exercise 2 (paired interval)"
    if callable(mean):
        functions = {f"stats.{f.__name__}": f for f in (stats.paired_difference, stats.paired_bootstrap)}
        for index, (m, b) in enumerate(((method, baseline),) + HIDDEN_SCORES):
            result = call_answer(name, mean, dict(m), dict(b), functions=functions,
                                 rule="use stats.t_quantile and the statistics module")
            if index == 0 and function_not_attempted(name, result):
                return False
            require(name, isinstance(result, (tuple, list)) and len(result) == 3,
                    "your function must return three numbers: (mean, low, high)")
            where = "" if index == 0 else ("right on these scores, but not where one arm has a seed the other lacks "
                                           "(pair only the seeds both have): ")
            _judge_interval(name, m, b, *result, where=where)
        return passed(name, True, "")
    if not_attempted(name, mean, low, high):
        return False
    _judge_interval(name, method, baseline, mean, low, high)
    return passed(name, True, "")


# ================================================================================================ exercise 3
SESOI = 0.01  # the smallest effect of interest: ±1 point of accuracy, fixed before the studies (PREREGISTRATION.md)

# Per-seed paired differences d_s = method(s) − baseline(s) of test accuracy for five claims "method beats baseline"
# (threshold 0). Exercise 3 asks for each claim's 95% interval and its outcome.
OUTCOME_CLAIMS = {
    "dora vs lora": {1: 0.0183, 2: -0.0094, 3: 0.0121, 4: 0.0027, 5: -0.0041},
    "bat vs bone": {1: 0.0312, 2: 0.0174, 3: 0.0221, 4: 0.0139, 5: 0.0259},
    "rslora vs lora": {1: 0.0047, 2: -0.0021, 3: 0.0035, 4: -0.0008, 5: 0.0012},
    "gelora vs lora": {1: 0.0132},
    "xgblora vs lora": {1: -0.0093, 2: -0.0268, 3: -0.0151, 4: -0.0224, 5: -0.0112},
}


def claim_intervals(differences: Mapping, level: float = 0.95):
    """The paired-t interval of the mean of ``differences`` at ``level`` (None below two seeds)."""
    d = [float(v) for v in differences.values()]
    n = len(d)
    if n < 2:
        return None
    mean, se = statistics.fmean(d), statistics.stdev(d) / math.sqrt(n)
    t = stats.t_quantile(0.5 + level / 2, n - 1)
    return [mean - t * se, mean + t * se]


def claim_outcome(differences: Mapping, threshold: float = 0.0, sesoi: float = SESOI) -> str:
    """The lab's outcome (``stats.outcome``) of "difference > threshold" from the 95% and 90% intervals."""
    return stats.outcome(claim_intervals(differences, 0.95), claim_intervals(differences, 0.90), threshold, sesoi,
                         kind="better")


def _check_outcomes(name: str, claims: Mapping, threshold: float, outcomes, intervals, sesoi: float) -> bool:
    require(name, isinstance(outcomes, Mapping) and set(outcomes) == set(claims),
            f"give the outcomes as a dict with one entry per claim: {sorted(claims)}")
    require(name, isinstance(intervals, Mapping) and set(intervals) == set(claims),
            f"give the 95% intervals as a dict with one entry per claim ([low, high], or None where there is none): "
            f"{sorted(claims)}")
    for claim, differences in claims.items():
        want = claim_intervals(differences, 0.95)
        given = intervals[claim]
        if want is None:
            require(name, given is None, f"{claim}: with {len(differences)} seed there is no spread to estimate, so no "
                                         "interval (give None)")
            continue
        values = number_list(name, given, f"{claim}'s interval") if given is not None else []
        require(name, len(values) == 2 and _close(values[0], want[0], 1e-6) and _close(values[1], want[1], 1e-6),
                f"{claim}: the 95% interval is mean ± t(0.975, n_seeds − 1) · sd / sqrt(n_seeds) of the per-seed "
                "differences (sd with n_seeds − 1)")
    words = {claim: text_answer(name, outcomes[claim], f"{claim}'s outcome") for claim in claims}
    allowed = set(stats.OUTCOMES) | {stats.NO_VERDICT}
    require(name, set(words.values()) <= allowed, f"an outcome is one of {sorted(allowed)}")
    # No claim is named: with five possible outcomes each, naming the wrong ones would let them be found by trying.
    return passed(name, all(words[c] == claim_outcome(d, threshold, sesoi) for c, d in claims.items()),
                  "the intervals are right, not every outcome is: reproduced / contradicted when the 95% interval lies "
                  f"above / below the threshold; otherwise equivalent when the 90% interval lies inside ±{sesoi:g}; "
                  "otherwise inconclusive; no verdict without an interval.")


def check_verdict(claims, threshold: float, answer, intervals=None, sesoi: float = SESOI) -> bool:
    """Exercise 3: the outcome of each claim "difference > threshold" and its 95% interval.

    New form: ``claims`` = {claim: {seed: difference}} (:data:`OUTCOME_CLAIMS`), ``answer`` = {claim: outcome}
    (one of ``stats.OUTCOMES`` or ``stats.NO_VERDICT``), ``intervals`` = {claim: [low, high] or None}; the
    intervals are checked first, then all outcomes at once (the hint never names a claim).
    Older form, still accepted: ``claims`` = one 95% interval [low, high] and ``answer`` = its three-way verdict."""
    name = "Exercise 3 (outcomes and intervals)" if isinstance(claims, Mapping) else "Exercise 3 (verdict)"
    if isinstance(claims, Mapping):
        if not_attempted(name, answer, intervals):
            return False
        return _check_outcomes(name, claims, threshold, answer, intervals, sesoi)
    if not_attempted(name, answer):
        return False
    low, high = claims
    right = "reproduced" if low > threshold else "contradicted" if high < threshold else "inconclusive"
    answer = text_answer(name, answer, "the verdict ('reproduced', 'contradicted' or 'inconclusive')")
    return passed(name, answer == right,
                  "where does the whole interval lie relative to the threshold: above it, below it, or across it?")


# ================================================================================================ exercise 4
def seeds_needed(sd: float, mean: float, most: int = 10_000) -> int | None:
    """The fewest paired seeds n >= 2 whose 95% interval half-width t(0.975, n−1)·sd/sqrt(n) is below |mean|
    (so the interval would exclude 0 if the mean and sd stayed as measured); None beyond ``most``."""
    for n in range(2, most + 1):
        if half_width(sd, n) < abs(mean):
            return n
    return None


def half_width(sd: float, n: int) -> float:
    """t(0.975, n − 1) · sd / sqrt(n): the 95% paired interval's half-width with n seeds (n >= 2)."""
    return stats.t_quantile(0.975, n - 1) * sd / math.sqrt(n)


_OLDER_FORM = object()  # check_seeds_needed called with three arguments, as before the half-widths were asked for


def check_seeds_needed(sd: float, mean: float, answer, half_widths=_OLDER_FORM) -> bool:
    """Exercise 4: how many seeds would make a difference of this mean and spread leave 'inconclusive'.

    New form: ``half_widths`` = (the half-width with n − 1 seeds, the half-width with n seeds) for the answered n,
    the two numbers that show n is the smallest: both are checked with n, in one hint that does not say whether n is
    too small or too large (None: not attempted yet). Older form (``half_widths`` left out): n alone."""
    name = "Exercise 4 (seeds needed)"
    if not_attempted(name, answer, *(() if half_widths is _OLDER_FORM else (half_widths,))):
        return False
    n = whole_answer(name, answer, "the number of seeds")
    right_n = seeds_needed(sd, mean)
    method = ("increase n until t(0.975, n − 1) · sd / sqrt(n) < |mean| (n = n_seeds); t itself shrinks as n grows, so a "
              "1/sqrt(n) estimate alone is slightly off for small n")
    if half_widths is _OLDER_FORM:
        return passed(name, n == right_n, method)
    widths = number_list(name, half_widths, "the half-widths (with n − 1 seeds, with n seeds)")
    require(name, len(widths) == 2, "give two half-widths: with n − 1 seeds and with n seeds")
    right = (n == right_n and _close(widths[0], half_width(sd, right_n - 1), 1e-6)
             and _close(widths[1], half_width(sd, right_n), 1e-6))
    return passed(name, right, method + ". Give the first n where it holds, and the half-widths with "
                               "n − 1 and with n seeds (the first at least |mean|, the second below it).")
