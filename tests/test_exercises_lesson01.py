"""Lesson 01's exercise checks: a right answer passes, a wrong one raises its hint, None is 'not attempted'."""

import pytest
import torch

from lowrank_lab.exercises import ExerciseError
from lowrank_lab.exercises import lesson01 as ex


def test_lora_parameter_count():
    count = 8 * (384 + 1536)
    assert ex.check_lora_parameter_count(count, count / (384 * 1536))
    with pytest.raises(ExerciseError, match="count is not right"):
        ex.check_lora_parameter_count(8 * 384 * 2, 0.01)
    with pytest.raises(ExerciseError, match="fraction"):
        ex.check_lora_parameter_count(count, count / (384 * 1536 + count))
    assert ex.check_lora_parameter_count(None, 0.1) is False


def _closed_form(seed=0):
    X, target, layer = ex.lora_toy(seed)
    with torch.no_grad():
        delta = layer(X) - target
        G = delta.T @ X
        A, B, s = layer.lora_A, layer.lora_B, layer.scaling
        return s * B.T @ G, s * G @ A.T, layer


def test_lora_gradients():
    grad_A, grad_B, layer = _closed_form()
    assert ex.check_lora_gradients(grad_A, grad_B)
    with pytest.raises(ExerciseError, match="∂L/∂A is right but ∂L/∂B"):
        ex.check_lora_gradients(grad_A, grad_B / layer.scaling)  # forgot s on one factor
    with pytest.raises(ExerciseError, match="neither"):
        ex.check_lora_gradients(2 * grad_A, 2 * grad_B)
    with pytest.raises(ExerciseError, match="shape"):
        ex.check_lora_gradients(grad_A.T, grad_B)
    assert ex.check_lora_gradients(grad_A, None) is False


def test_merged_weight():
    _, _, layer = ex.lora_toy()
    with torch.no_grad():
        W0, A, B, s = layer.base_layer.weight, layer.lora_A, layer.lora_B, layer.scaling
        assert ex.check_merged_weight(W0 + s * B @ A)
        with pytest.raises(ExerciseError, match="does not reproduce"):
            ex.check_merged_weight(W0 + B @ A)  # forgot s
        with pytest.raises(ExerciseError, match="shape"):
            ex.check_merged_weight((W0 + s * B @ A).T)
    assert ex.check_merged_weight(None) is False


def test_rank_stabilization():
    assert abs(ex.coherent_step_slope(0.5)) < 0.1  # the Monte-Carlo reference itself: flat with alpha/sqrt(r)
    assert ex.check_rank_stabilization(0.5, -1.0)
    with pytest.raises(ExerciseError, match="exponent"):
        ex.check_rank_stabilization(1.0, -1.0)
    with pytest.raises(ExerciseError, match="slope for s = α/r"):
        ex.check_rank_stabilization(0.5, -0.5)  # the independent-terms heuristic
    assert ex.check_rank_stabilization(None, -1.0) is False


# ------------------------------------------------------------------ issue 22, items 19-21


def test_22_numbers_by_value_and_hints_instead_of_raw_errors():
    import numpy as np

    count = 8 * (384 + 1536)
    assert ex.check_lora_parameter_count(np.int64(count), torch.tensor(count / (384 * 1536)))
    with pytest.raises(ExerciseError, match="count must be a whole number"):
        ex.check_lora_parameter_count(count + 0.9, count / (384 * 1536))  # int() truncation let this pass
    with pytest.raises(ExerciseError, match="fraction must be a finite number"):
        ex.check_lora_parameter_count(count, "0.01")
    grad_A, grad_B, _ = _closed_form()
    with pytest.raises(ExerciseError, match="∂L/∂A must be a tensor of numbers"):
        ex.check_lora_gradients("G", grad_B)
    with pytest.raises(ExerciseError, match="exponent must be a finite number"):
        ex.check_rank_stabilization(float("nan"), -1.0)
