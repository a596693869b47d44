"""Lesson 03's exercise checks: right answers pass, wrong ones raise ExerciseError, None is 'not attempted'."""

import math

import pytest
import torch

from lowrank_lab.exercises import ExerciseError
from lowrank_lab.exercises import lesson03 as ex

MINILM_QV = {"query": (384, 384), "value": (384, 384)}


def test_unanswered_exercises_are_reported_not_failed(capsys):
    assert ex.check_merged_ranks(None, 2, 12, 10, 8) is False
    assert ex.check_rounds_and_trained(None, 5, 128, 4, 6, 2, 1, MINILM_QV) is False
    assert ex.check_boosting(None, torch.eye(3), 1) is False
    assert capsys.readouterr().out.count("not attempted yet") == 3


def test_merged_ranks():
    assert ex.check_merged_ranks([min(2 * p, 10) for p in range(1, 9)], 2, 12, 10, 8)
    assert ex.check_merged_ranks([min(3 * p, 7) for p in range(1, 5)], 3, 7, 9, 4)
    with pytest.raises(ExerciseError, match="what else limits"):
        ex.check_merged_ranks([2 * p for p in range(1, 9)], 2, 12, 10, 8)  # ignores the matrix's own size
    with pytest.raises(ExerciseError, match="list of 8"):
        ex.check_merged_ranks([2, 4], 2, 12, 10, 8)


def test_rounds_and_trained():
    per_step = 2 * sum(1 * (m + n) for m, n in MINILM_QV.values())
    assert ex.check_rounds_and_trained(32, per_step, 128, 4, 6, 2, 1, MINILM_QV)
    assert ex.check_rounds_and_trained(math.ceil(130 / 4), per_step, 130, 4, 6, 2, 1, MINILM_QV)  # a shorter last round
    with pytest.raises(ExerciseError, match="number of rounds"):
        ex.check_rounds_and_trained(130 // 4, per_step, 130, 4, 6, 2, 1, MINILM_QV)
    with pytest.raises(ExerciseError, match="active in a round"):
        ex.check_rounds_and_trained(32, 3 * per_step, 128, 4, 6, 2, 1, MINILM_QV)  # every block, not L_s
    shapes = {"up": (8, 3), "down": (3, 8)}
    assert ex.check_rounds_and_trained(5, 1 * 2 * (11 + 11), 10, 2, 3, 1, 2, shapes)


def test_boosting():
    M = torch.randn(10, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    F = torch.zeros_like(M)
    for _ in range(3):
        U, S, Vh = torch.linalg.svd(M - F)
        F = F + S[0] * torch.outer(U[:, 0], Vh[0])
    assert ex.check_boosting(F, M, 3)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    with pytest.raises(ExerciseError, match="residual"):
        ex.check_boosting(3 * S[0] * torch.outer(U[:, 0], Vh[0]), M, 3)  # fitted M, not the residual, each round
    with pytest.raises(ExerciseError, match="shape"):
        ex.check_boosting(F.T, M, 3)


# ------------------------------------------------------------------ issue 22, items 19-21


def test_22_counts_are_whole_numbers():
    per_step = 2 * sum(1 * (m + n) for m, n in MINILM_QV.values())
    assert ex.check_rounds_and_trained(torch.tensor(32), float(per_step), 128, 4, 6, 2, 1, MINILM_QV)
    with pytest.raises(ExerciseError, match="number of rounds must be a whole number"):
        ex.check_rounds_and_trained(32.7, per_step, 128, 4, 6, 2, 1, MINILM_QV)  # int() truncated it to 32
    with pytest.raises(ExerciseError, match="must be a whole number"):
        ex.check_rounds_and_trained(32, "1.5e6", 128, 4, 6, 2, 1, MINILM_QV)
    right = [min(2 * p, 10) for p in range(1, 9)]
    assert ex.check_merged_ranks(torch.tensor(right), 2, 12, 10, 8)
    with pytest.raises(ExerciseError, match="list of 8 integers"):
        ex.check_merged_ranks([r + 0.5 for r in right], 2, 12, 10, 8)
    with pytest.raises(ExerciseError, match="list of finite numbers"):
        ex.check_merged_ranks("2468", 2, 12, 10, 8)
