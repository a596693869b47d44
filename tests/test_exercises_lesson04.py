"""Lesson 04's exercise checks: a right answer passes, a wrong one raises its hint, an unanswered one is reported."""

import math

import pytest
import torch

from lowrank_lab.exercises import ExerciseError
from lowrank_lab.exercises import lesson04 as ex


def _tiled(r, n):
    return torch.tensor([[1.0 if i % r == k else 0.0 for i in range(n)] for k in range(r)], dtype=torch.float64)


def test_bone_parameter_count(capsys):
    assert ex.check_bone_parameter_count(None) is False and "not attempted" in capsys.readouterr().out
    assert ex.check_bone_parameter_count([r * out for _, out, r in ex.BONE_SHAPES])
    with pytest.raises(ExerciseError, match="Exercise 1"):
        ex.check_bone_parameter_count([r * n_in for n_in, _, r in ex.BONE_SHAPES])      # the wrong dimension
    with pytest.raises(ExerciseError):
        ex.check_bone_parameter_count([r * (n_in + out) for n_in, out, r in ex.BONE_SHAPES])  # LoRA's count
    with pytest.raises(ExerciseError):
        ex.check_bone_parameter_count([1, 2])


def test_bone_as_lora():
    D = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ex.check_bone_as_lora(D, 14, None, None) is False
    assert ex.check_bone_as_lora(D, 14, _tiled(4, 14), D.T)
    with pytest.raises(ExerciseError, match="shape"):
        ex.check_bone_as_lora(D, 14, _tiled(4, 16), D.T)
    with pytest.raises(ExerciseError):
        ex.check_bone_as_lora(D, 14, _tiled(4, 14), D.T.flip(1))                        # B's columns permuted
    shifted = torch.roll(_tiled(4, 14), 1, dims=1)                                      # shard boundaries off by one
    with pytest.raises(ExerciseError):
        ex.check_bone_as_lora(D, 14, shifted, D.T)


def test_bat_unmerge():
    W_merged, D = ex.bat_unmerge_problem(seed=0)
    assert ex.check_bat_unmerge(W_merged, D, None) is False
    r = D.shape[1]
    eye = torch.eye(r, dtype=torch.float64)
    blocks = [[(W_merged[i * r:(i + 1) * r, j * r:(j + 1) * r] - D[i]) @ torch.linalg.inv(eye + D[i])
               for j in range(W_merged.shape[1] // r)] for i in range(D.shape[0])]
    W0 = torch.cat([torch.cat(row, dim=1) for row in blocks], dim=0)
    assert ex.check_bat_unmerge(W_merged, D, W0)
    wrong_side = torch.cat([torch.cat([torch.linalg.inv(eye + D[i]) @ (W_merged[i * r:(i + 1) * r, j * r:(j + 1) * r] - D[i])
                                       for j in range(W_merged.shape[1] // r)], dim=1) for i in range(D.shape[0])], dim=0)
    for answer in (W_merged, wrong_side, W0[:, :-1]):
        with pytest.raises(ExerciseError, match="Exercise 3"):
            ex.check_bat_unmerge(W_merged, D, answer)
    assert not math.isclose(float((W0 - W_merged).abs().max()), 0.0)


# ------------------------------------------------------------------ issue 22, items 19-21


def test_22_counts_compare_by_value_not_by_the_answers_eq():
    import numpy as np

    from test_exercises import AlwaysEqual

    right = [r * out for _, out, r in ex.BONE_SHAPES]
    assert ex.check_bone_parameter_count(np.array(right)) and ex.check_bone_parameter_count(tuple(map(float, right)))
    with pytest.raises(ExerciseError, match="list of finite numbers"):
        ex.check_bone_parameter_count([AlwaysEqual()] * len(ex.BONE_SHAPES))  # __eq__ always True passed
    with pytest.raises(ExerciseError, match="whole number"):
        ex.check_bone_parameter_count([c + 0.5 for c in right])
    D = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ExerciseError, match="E must be a tensor of numbers"):
        ex.check_bone_as_lora(D, 14, "E", D.T)
