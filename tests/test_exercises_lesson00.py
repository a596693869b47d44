"""Lesson 00's exercise checks: a right answer passes, a wrong one raises its hint, None is 'not attempted'."""

import pytest
import torch

from lowrank_lab.exercises import ExerciseError
from lowrank_lab.exercises import lesson00 as ex


def test_full_gradient_by_hand():
    X, target, layer = ex.gradient_toy()
    with torch.no_grad():
        delta = layer(X) - target  # L = sum((Y - target)^2) / 2
    assert ex.check_full_gradient(delta.T @ X, delta.sum(0))
    with pytest.raises(ExerciseError, match="shape"):
        ex.check_full_gradient(X.T @ delta, delta.sum(0))  # transposed
    with pytest.raises(ExerciseError, match="right shape but not the right values"):
        ex.check_full_gradient(2 * delta.T @ X, delta.sum(0))  # forgot the 1/2
    with pytest.raises(ExerciseError, match="∂L/∂b"):
        ex.check_full_gradient(delta.T @ X, delta.mean(0))
    assert ex.check_full_gradient(None, None) is False


def test_linear_parameter_count():
    assert ex.check_linear_parameter_count(384 * 1536, 384 * 1536 + 1536)
    with pytest.raises(ExerciseError, match="total"):
        ex.check_linear_parameter_count(384 * 1536, 384 * 1536 + 384)  # bias of the wrong length
    with pytest.raises(ExerciseError, match="weight count"):
        ex.check_linear_parameter_count(384 + 1536, 384 * 1536 + 1536)
    assert ex.check_linear_parameter_count(None, 1) is False


def test_scale_predictions(monkeypatch):
    monkeypatch.setenv("LOWRANK_LAB_SCALE", "smoke")
    right = ["cpu", "full", "smoke", "cpu", "full", "cpu"]
    assert ex.check_scale_predictions(right)
    with pytest.raises(ExerciseError, match="not every prediction is right") as info:
        ex.check_scale_predictions(["cpu", "full", "smoke", "smoke", "full", "cpu"])  # env beating the parameter
    assert "[3]" not in str(info.value) and "case" not in str(info.value)  # no case is named: three scales per case could be tried one by one
    with pytest.raises(ExerciseError, match="one prediction per case"):
        ex.check_scale_predictions(right[:-1])
    assert ex.check_scale_predictions(None) is False
    import os
    assert os.environ["LOWRANK_LAB_SCALE"] == "smoke"  # the check restores the environment


def test_resolved_scale_uses_the_library():
    assert ex.resolved_scale(None, None, True) == "full" and ex.resolved_scale(None, None, False) == "cpu"


# ------------------------------------------------------------------ issue 22, items 19-21


def test_22_counts_are_whole_numbers_and_hostile_answers_get_the_hint():
    from test_exercises import AlwaysEqual

    assert ex.check_linear_parameter_count(589824.0, torch.tensor(589824 + 1536))  # a right value in any number type
    for weights in (589824.9, float("nan"), "1.5e6", AlwaysEqual()):  # int() would truncate 589824.9 to a pass
        with pytest.raises(ExerciseError, match="weight count must be a whole number"):
            ex.check_linear_parameter_count(weights, 589824 + 1536)
    with pytest.raises(ExerciseError, match="must be a string"):
        ex.check_scale_predictions([AlwaysEqual()] * len(ex.SCALE_CASES))  # __eq__ always True
    with pytest.raises(ExerciseError, match="list of 6 scale names"):
        ex.check_scale_predictions(3)
    with pytest.raises(ExerciseError, match="G must be a tensor of numbers"):
        ex.check_full_gradient("G", [1.0, 2.0, 3.0])
