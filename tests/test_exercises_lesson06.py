"""Lesson 06's checks: the right answer passes, a wrong one raises its hint; the references agree with the
library (compare's selection rule, stats.paired_difference)."""

import pytest

from lowrank_lab import stats
from lowrank_lab.exercises import ExerciseError
from lowrank_lab.exercises import lesson06 as ex

GRID = [{"lr": 5e-4, "status": "ok", "validation": 0.80, "validation_loss": 0.50},
        {"lr": 1e-3, "status": "ok", "validation": 0.84, "validation_loss": 0.45},
        {"lr": 2e-3, "status": "ok", "validation": 0.84, "validation_loss": 0.41},
        {"lr": 5e-3, "status": "diverged", "validation": None, "validation_loss": None}]


def test_selected_rate_uses_validation_with_the_loss_as_tie_break():
    assert ex.check_selected_rate(GRID, None) is False
    assert ex.check_selected_rate(GRID, 2e-3)
    with pytest.raises(ExerciseError, match="ties by the lower validation loss"):
        ex.check_selected_rate(GRID, 1e-3)


def test_paired_interval_matches_the_library():
    a, b = {0: 0.90, 1: 0.91, 2: 0.89, 3: 0.92, 4: 0.90}, {0: 0.88, 1: 0.90, 2: 0.89, 3: 0.90, 4: 0.88}
    ref = stats.paired_difference(a, b)
    assert ex.check_paired_interval(a, b, ref["mean"], *ref["ci95"])
    with pytest.raises(ExerciseError, match="the centre is the mean"):
        ex.check_paired_interval(a, b, ref["mean"] + 0.01, *ref["ci95"])
    with pytest.raises(ExerciseError, match="half-width"):
        ex.check_paired_interval(a, b, ref["mean"], ref["ci95"][0] - 0.01, ref["ci95"][1])


@pytest.mark.parametrize("ci, threshold, right", [([0.01, 0.03], 0.0, "reproduced"), ([-0.03, -0.01], 0.0, "contradicted"),
                                                   ([-0.01, 0.02], 0.0, "inconclusive"), ([-0.015, 0.01], -0.02, "reproduced")])
def test_verdict_is_three_way(ci, threshold, right):
    assert ex.check_verdict(ci, threshold, right)
    assert right == stats.verdict(ci, threshold)
    with pytest.raises(ExerciseError):
        ex.check_verdict(ci, threshold, next(v for v in ("reproduced", "contradicted", "inconclusive") if v != right))


def test_seeds_needed_is_the_first_n_whose_interval_excludes_zero():
    n = ex.seeds_needed(sd=0.01, mean=0.006)
    assert stats.t_quantile(0.975, n - 1) * 0.01 / n ** 0.5 < 0.006 <= stats.t_quantile(0.975, n - 2) * 0.01 / (n - 1) ** 0.5
    assert ex.check_seeds_needed(0.01, 0.006, n)
    with pytest.raises(ExerciseError, match="increase n"):
        ex.check_seeds_needed(0.01, 0.006, n - 1)


# ------------------------------------------------------------------ issue 22, items 19-21


class AlwaysEqual:
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = object.__hash__


def test_22_an_answer_equal_to_everything_does_not_pass():
    with pytest.raises(ExerciseError, match="verdict .* must be a string"):
        ex.check_verdict([0.01, 0.03], 0.0, AlwaysEqual())
    with pytest.raises(ExerciseError, match="number of seeds must be a whole number"):
        ex.check_seeds_needed(0.01, 0.006, AlwaysEqual())
    n = ex.seeds_needed(sd=0.01, mean=0.006)
    with pytest.raises(ExerciseError, match="whole number"):
        ex.check_seeds_needed(0.01, 0.006, n + 0.5)
    assert ex.check_seeds_needed(0.01, 0.006, float(n))
    with pytest.raises(ExerciseError, match="selected rate must be a finite number"):
        ex.check_selected_rate(GRID, "2e-3")


def test_22_one_seed_gets_a_hint_not_a_statistics_error():
    with pytest.raises(ExerciseError, match="at least 2 seeds"):  # was ValueError: df must be positive
        ex.check_paired_interval({0: 0.9}, {0: 0.8}, 0.1, 0.0, 0.2)
    with pytest.raises(ExerciseError, match="the mean must be a finite number"):
        ex.check_paired_interval({0: 0.9, 1: 0.8}, {0: 0.8, 1: 0.8}, float("nan"), 0.0, 0.2)
