"""Lesson 06 exercises: read a study the way its protocol says (select on validation, pair the seeds, three
answers, enough seeds). Each check recomputes the reference from the definitions, not from the student's steps."""

from __future__ import annotations

import math
import statistics

from lowrank_lab import stats
from lowrank_lab.exercises import not_attempted, number_answer, passed, require, text_answer, whole_answer


def _close(a, b, tol=1e-9) -> bool:
    return a is not None and b is not None and abs(a - b) <= tol * max(1.0, abs(b))


def check_selected_rate(lr_grid: list[dict], answer: float | None) -> bool:
    """Exercise 1: the rate the protocol selects from one method's ``lr_grid`` (validation accuracy, ties by the
    lower validation loss, then by the smaller rate; a run that did not finish is never selected)."""
    if not_attempted("Exercise 1 (select the rate)", answer):
        return False
    answer = number_answer("Exercise 1 (select the rate)", answer, "the selected rate")
    finished = [g for g in lr_grid if g["status"] == "ok" and g["validation"] is not None]
    loss = lambda g: g["validation_loss"] if g.get("validation_loss") is not None else math.inf
    best = min(finished, key=lambda g: (-g["validation"], loss(g), g["lr"]))["lr"] if finished else None
    test_peek = any("test" in key for g in lr_grid for key in g)
    return passed("Exercise 1 (select the rate)", _close(answer, best, 1e-12),
                  "rank the finished runs by validation accuracy; break ties by the lower validation loss. "
                  "Diverged runs are out." + (" The grid carries no test numbers on purpose." if not test_peek else ""))


def check_paired_interval(method: dict, baseline: dict, mean: float | None, low: float | None,
                          high: float | None) -> bool:
    """Exercise 2: the mean of the per-seed differences method − baseline and its 95% paired-t interval."""
    name = "Exercise 2 (paired interval)"
    if not_attempted(name, mean, low, high):
        return False
    mean, low, high = (number_answer(name, value, what) for value, what in
                       ((mean, "the mean"), (low, "the lower end"), (high, "the upper end")))
    seeds = sorted(set(method) & set(baseline))
    d = [float(method[s]) - float(baseline[s]) for s in seeds]
    n = len(d)
    require(name, n >= 2, f"a paired interval needs at least 2 seeds that both arms have; these have {n} "
                          f"({seeds}): with one difference there is no spread to estimate (n − 1 = 0 degrees "
                          "of freedom)")
    centre = statistics.fmean(d)
    half = stats.t_quantile(0.975, n - 1) * statistics.stdev(d) / math.sqrt(n)
    if not _close(mean, centre, 1e-9):
        return passed("Exercise 2 (paired interval)", False,
                      "the centre is the mean of d_s = method(s) − baseline(s) over the seeds both have")
    return passed("Exercise 2 (paired interval)", _close(low, centre - half, 1e-6) and _close(high, centre + half, 1e-6),
                  f"the half-width is t(0.975, n − 1) · sd(d) / sqrt(n) with n = {n} paired seeds; sd uses n − 1")


def check_verdict(ci95: list[float], threshold: float, answer: str | None) -> bool:
    """Exercise 3: the three-way verdict of a claim "difference > threshold" from its 95% interval."""
    if not_attempted("Exercise 3 (verdict)", answer):
        return False
    low, high = ci95
    right = "reproduced" if low > threshold else "contradicted" if high < threshold else "inconclusive"
    answer = text_answer("Exercise 3 (verdict)", answer, "the verdict ('reproduced', 'contradicted' or 'inconclusive')")
    return passed("Exercise 3 (verdict)", answer == right,
                  "where does the whole interval lie relative to the threshold: above it, below it, or across it?")


def seeds_needed(sd: float, mean: float, most: int = 10_000) -> int | None:
    """The fewest paired seeds n >= 2 whose 95% interval half-width t(0.975, n−1)·sd/sqrt(n) is below |mean|
    (so the interval would exclude 0 if the mean and sd stayed as measured); None beyond ``most``."""
    for n in range(2, most + 1):
        if stats.t_quantile(0.975, n - 1) * sd / math.sqrt(n) < abs(mean):
            return n
    return None


def check_seeds_needed(sd: float, mean: float, answer: int | None) -> bool:
    """Exercise 4: how many seeds would make a difference of this mean and spread leave 'inconclusive'."""
    if not_attempted("Exercise 4 (seeds needed)", answer):
        return False
    answer = whole_answer("Exercise 4 (seeds needed)", answer, "the number of seeds")
    return passed("Exercise 4 (seeds needed)", answer == seeds_needed(sd, mean),
                  "increase n until t(0.975, n − 1) · sd / sqrt(n) < |mean|; t itself shrinks as n grows, so a "
                  "1/sqrt(n) estimate alone is slightly off for small n")
