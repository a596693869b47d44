"""Self-checking exercises of lesson 05 (GeLoRA). Each check computes its reference its own way (the library's
estimator and profile, or the budget's closed form), never from the student's formula. Exercises 1 and 3 say
"without" a library function (``lrl.intrinsic_dimension`` / the lesson's ``twonn_teaching``; ``gelora.allocate_ranks``):
their checks also take the answer as a function (``twonn(X) -> d``; ``allocate(lower_bounds) -> ranks``), run with
those made to raise, on the exercise's data and on data the student has not seen."""

from __future__ import annotations

import math

import numpy as np

from . import _one_number, call_answer, function_not_attempted, not_attempted, number_answer, number_list, passed, require

# Exercise 2: an ID profile d_0 (embeddings), d_1, ..., d_6 (the outputs of six blocks).
ID_PROFILE = (6.1, 8.4, 7.9, 10.6, 10.2, 12.9, 12.4)
# Exercise 3: every block adapts two 384 x 384 matrices (query, value); the budget is uniform LoRA r = 8's.
MATRICES_PER_BLOCK, MATRIX_IN, MATRIX_OUT, UNIFORM_R = 2, 384, 384, 8
BUDGET_TOLERANCE = 0.01


def twonn_cloud(seed: int = 0, n_pts: int = 800, d: int = 4, n_emb: int = 12) -> np.ndarray:
    """Exercise 1's point cloud: ``n_pts`` Gaussian points on a random ``d``-dim subspace of R^``n_emb``."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((n_emb, d)))[0]
    return rng.standard_normal((n_pts, d)) @ basis.T


def _twonn_forbidden() -> tuple[dict, dict]:
    from ..methods import gelora

    functions = {f"gelora.{f.__name__}": f for f in (gelora.intrinsic_dimension, gelora.intrinsic_dimension_interval,
                                                     gelora.neighbour_ratios, gelora._dimension_from_ratios)}
    return functions, {"twonn_teaching": "the lesson's twonn_teaching", "twonn_from_ratios": "the lesson's twonn_from_ratios"}


# A second cloud (seed, n_pts, d, n_emb) on which a function answer must be right too (not shown in the lesson).
_HIDDEN_CLOUD = (5, 500, 3, 9)


def check_twonn(X, d_hat) -> bool:
    """Exercise 1: TwoNN by hand (discard the largest 10 % of the ratios) on the cloud ``X``.

    ``d_hat`` may be a function ``twonn(X) -> float``: the check runs it with ``lrl.intrinsic_dimension`` (and the
    library's other TwoNN pieces) and the lesson's ``twonn_teaching`` made to raise, on ``X`` and on another cloud."""
    name = "Exercise 1 (TwoNN by hand)"
    hint = ("your estimate differs from TwoNN's. Check: mu = rho2 / rho1 per point, sorted; the empirical CDF i / n_pts "
            "over all points; keep the smallest 90 %; a least-squares line through the origin.")
    from ..methods.gelora import intrinsic_dimension

    if callable(d_hat):
        functions, names = _twonn_forbidden()
        for index, cloud in enumerate((np.asarray(X, dtype=np.float64), twonn_cloud(*_HIDDEN_CLOUD))):
            reference = intrinsic_dimension(cloud, discard_fraction=0.1)
            result = call_answer(name, d_hat, cloud.copy(), functions=functions, names=names,
                                 rule="compute the ratios and the fit with numpy")
            if index == 0 and function_not_attempted(name, result):
                return False
            value = number_answer(name, result, "your function's estimate")
            where = "" if index == 0 else ("right on the exercise's cloud, but not on another one (500 points in "
                                           "R^9): use only the function's argument; ")
            require(name, abs(value - reference) <= 1e-6 * reference, where + hint)
        return passed(name, True, "")
    if not_attempted(name, d_hat):
        return False
    reference = intrinsic_dimension(X, discard_fraction=0.1)
    value = _one_number(d_hat)  # a float, a numpy scalar, a 0-d array or tensor; a string or NaN never passes
    ok = value is not None and abs(float(value) - reference) <= 1e-6 * reference
    return passed(name, ok, hint)


def check_lower_bounds(lb) -> bool:
    """Exercise 2: GeLoRA's lower bound of every block from :data:`ID_PROFILE`."""
    name = "Exercise 2 (lower bounds from an ID profile)"
    if not_attempted(name, lb):
        return False
    from ..methods.gelora import IDProfile

    d = list(ID_PROFILE)
    reference = IDProfile([f"block{i}" for i in range(1, len(d))], d[:-1], d[1:], 0, "twonn", 0.1).lower_bounds
    lb = number_list(name, lb, "the lower bounds")
    if len(lb) != len(reference):
        return passed(name, False, f"a profile of {len(d)} sets has {len(reference)} blocks: one bound per block")
    return passed(name, all(abs(a - b) <= 1e-9 for a, b in zip(lb, reference)),
                  "compare each block's output with its input; what does GeLoRA do where the ID shrinks?")


def _judge_allocation(name: str, ranks, lb, where: str = "") -> None:
    """Raise the hint unless ``ranks`` are positive ints, spend the budget within ±1 % and are within 1 of the
    real-valued proportional ranks."""
    try:
        ranks = None if isinstance(ranks, (str, bytes, dict)) else list(ranks)
    except TypeError:
        ranks = None
    require(name, ranks is not None, f"{where}give a list of positive integer ranks, one per block ({len(lb)} blocks)")
    cost = MATRICES_PER_BLOCK * (MATRIX_IN + MATRIX_OUT)          # parameters per unit of rank in one block
    budget = UNIFORM_R * cost * len(lb)
    # an int type per rank (not 3.0, not True); compared as a plain int
    integral = all(isinstance(r, (int, np.integer)) and not isinstance(r, (bool, np.bool_)) for r in ranks)
    require(name, len(ranks) == len(lb) and integral and all(int(r) >= 1 for r in ranks),
            f"{where}give one positive integer rank per block ({len(lb)} blocks)")
    ranks = [int(r) for r in ranks]
    spent = sum(int(r) * cost for r in ranks)
    scale = budget / (cost * sum(b + 1 for b in lb))              # r_l = scale * (lb_l + 1) spends the budget exactly
    require(name, abs(spent - budget) <= BUDGET_TOLERANCE * budget,
            f"{where}your ranks spend {spent:,} parameters; the budget is uniform r = {UNIFORM_R} on every matrix. "
            "Count r (in + out) for each adapted matrix.")
    require(name, all(abs(r - scale * (b + 1)) <= 1 + 1e-9 for r, b in zip(ranks, lb)),
            f"{where}the budget is met, but the ranks are not proportional to lb + 1: find the scale that spends the "
            "budget, then round each block's rank to a neighbouring integer.")


# Bounds of another six-block profile on which a function answer must be right too (not shown in the lesson).
_HIDDEN_BOUNDS = (0.0, 5.3, 0.4, 1.2, 0.0, 2.7)


def check_rank_allocation(ranks, lb=None) -> bool:
    """Exercise 3: integer ranks per block, proportional to lb + 1 and spending uniform LoRA r = 8's budget
    (two 384 x 384 matrices per block) within ±1 %. ``lb`` defaults to the bounds of :data:`ID_PROFILE`.

    ``ranks`` may be a function ``allocate(lower_bounds) -> ranks``: the check runs it with
    ``gelora.allocate_ranks`` made to raise, on these bounds and on another profile's."""
    name = "Exercise 3 (rank allocation at a budget)"
    if lb is None:
        lb = [max(b - a, 0.0) for a, b in zip(ID_PROFILE[:-1], ID_PROFILE[1:])]
    if callable(ranks):
        from ..methods import gelora

        functions = {f"gelora.{f.__name__}": f for f in (gelora.allocate_ranks, gelora.gelora_ranks,
                                                         gelora._round_to_budget)}
        for index, bounds in enumerate((list(lb), list(_HIDDEN_BOUNDS))):
            result = call_answer(name, ranks, list(bounds), functions=functions,
                                 rule="scale lb + 1 to the budget and round it yourself")
            if index == 0 and function_not_attempted(name, result):
                return False
            where = "" if index == 0 else (f"right for these bounds, but not for lb = {list(_HIDDEN_BOUNDS)}: use "
                                           "only the function's argument; ")
            _judge_allocation(name, result, bounds, where)
        return passed(name, True, "")
    if not_attempted(name, ranks):
        return False
    _judge_allocation(name, ranks, lb)
    return passed(name, True, "")


def proportional_ranks(lb, budget: float, cost: int) -> list[int]:
    """A reference allocation (used by the tests): floor of scale·(lb+1), then +1 by largest remainder while the total
    gets closer to the budget."""
    scale = budget / (cost * sum(b + 1 for b in lb))
    real = [scale * (b + 1) for b in lb]
    ranks = [max(1, math.floor(x)) for x in real]
    for i in sorted(range(len(real)), key=lambda k: -(real[k] - math.floor(real[k]))):
        total = sum(r * cost for r in ranks)
        if abs(total + cost - budget) < abs(total - budget):
            ranks[i] += 1
    return ranks
