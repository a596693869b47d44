"""Lesson 05's exercise checks: a right answer passes, a wrong one raises its hint, an unanswered one is reported."""

import numpy as np
import pytest

from lowrank_lab.exercises import ExerciseError
from lowrank_lab.exercises import lesson05 as ex


def _twonn(X, discard_fraction=0.1):
    X = np.unique(X, axis=0)
    dist = np.linalg.norm(X[:, None, :] - X[None, :, :], axis=-1)
    np.fill_diagonal(dist, np.inf)
    rho1, rho2 = np.sort(dist, axis=1)[:, :2].T
    mu = np.sort(rho2 / rho1)
    keep = min(int(len(mu) * (1 - discard_fraction)), len(mu) - 1)
    x, y = np.log(mu[:keep]), -np.log(1 - np.arange(1, keep + 1) / len(mu))
    return float(x @ y / (x @ x))


def test_twonn(capsys):
    cloud = ex.twonn_cloud(seed=0, n_pts=300)
    assert ex.check_twonn(cloud, None) is False and "not attempted" in capsys.readouterr().out
    assert ex.check_twonn(cloud, _twonn(cloud))
    for wrong in (_twonn(cloud, 0.0), 4.0, "4"):
        with pytest.raises(ExerciseError, match="Exercise 1"):
            ex.check_twonn(cloud, wrong)


def test_lower_bounds():
    d = ex.ID_PROFILE
    right = [max(b - a, 0.0) for a, b in zip(d[:-1], d[1:])]
    assert ex.check_lower_bounds(None) is False
    assert ex.check_lower_bounds(right)
    for wrong in ([b - a for a, b in zip(d[:-1], d[1:])], [abs(b - a) for a, b in zip(d[:-1], d[1:])], right[:-1]):
        with pytest.raises(ExerciseError, match="Exercise 2"):
            ex.check_lower_bounds(wrong)


def test_rank_allocation():
    lb = [max(b - a, 0.0) for a, b in zip(ex.ID_PROFILE[:-1], ex.ID_PROFILE[1:])]
    cost = ex.MATRICES_PER_BLOCK * (ex.MATRIX_IN + ex.MATRIX_OUT)
    right = ex.proportional_ranks(lb, ex.UNIFORM_R * cost * len(lb), cost)
    assert ex.check_rank_allocation(None) is False
    assert ex.check_rank_allocation(right)
    uniform = [ex.UNIFORM_R] * len(lb)                       # meets the budget, ignores the bounds
    too_big = [r + 1 for r in right]                         # proportional-ish, over budget
    for wrong in (uniform, too_big, [float(r) for r in right], right[:-1]):
        with pytest.raises(ExerciseError, match="Exercise 3"):
            ex.check_rank_allocation(wrong)


# ------------------------------------------------------------------ issue 22, items 19-21


def test_22_the_exact_value_passes_in_any_scalar_container():
    import torch

    cloud = ex.twonn_cloud(seed=0, n_pts=300)
    value = _twonn(cloud)
    for right in (np.float64(value), np.array(value), torch.tensor(value, dtype=torch.float64), np.array([value])):
        assert ex.check_twonn(cloud, right)  # 0-d tensors and arrays were rejected
    for wrong in (float("nan"), torch.tensor([value, value]), True):
        with pytest.raises(ExerciseError, match="Exercise 1"):
            ex.check_twonn(cloud, wrong)
    with pytest.raises(ExerciseError, match="lower bounds must be a list of finite numbers"):
        ex.check_lower_bounds(["a"] * 6)
    with pytest.raises(ExerciseError, match="list of positive integer ranks"):
        ex.check_rank_allocation(8)
    with pytest.raises(ExerciseError, match="one positive integer rank per block"):
        ex.check_rank_allocation([True] * 6)
