"""Lesson 02's exercise checks: right answers pass, wrong ones raise ExerciseError, None is 'not attempted'."""

import pytest
import torch

import lowrank_lab as lrl
from lowrank_lab.exercises import ExerciseError
from lowrank_lab.exercises import lesson02 as ex


@pytest.fixture
def matrices():
    gen = torch.Generator().manual_seed(2)
    A = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    B = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    G = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    return A, B, G, 1.5


def test_unanswered_exercises_are_reported_not_failed(capsys, matrices):
    A, B, G, s = matrices
    assert ex.check_equivalent_gradient(None, A, B, G, s) is False
    assert ex.check_projection(None, A, B, G) is False
    assert ex.check_sylvester(None, A, B, G, s) is False
    assert capsys.readouterr().out.count("not attempted yet") == 3


def test_equivalent_gradient(matrices):
    A, B, G, s = matrices
    G_A, G_B = s * B.T @ G, s * G @ A.T
    assert ex.check_equivalent_gradient(s * B @ G_A + s * G_B @ A, A, B, G, s)
    assert ex.check_equivalent_gradient(lrl.equivalent_gradient(A, B, G_A, G_B, s), A, B, G, s)
    with pytest.raises(ExerciseError, match="chain rule"):
        ex.check_equivalent_gradient(B @ G_A + G_B @ A, A, B, G, s)  # forgot the outer s
    with pytest.raises(ExerciseError, match="shape"):
        ex.check_equivalent_gradient(G_A, A, B, G, s)


def test_projection(matrices):
    A, B, G, _ = matrices
    P_B = B @ torch.linalg.inv(B.T @ B) @ B.T
    P_A = A.T @ torch.linalg.inv(A @ A.T) @ A
    right = P_B @ G + (torch.eye(5, dtype=G.dtype) - P_B) @ G @ P_A
    assert ex.check_projection(right, A, B, G)
    assert ex.check_projection(right.tolist(), A, B, G)  # nested lists are accepted
    with pytest.raises(ExerciseError, match="column space"):
        ex.check_projection(P_B @ G + G @ P_A, A, B, G)  # counts the overlap twice
    # B = 0: the projector onto B's (empty) column space is 0 and the answer is G P_A
    zero_B = torch.zeros_like(B)
    assert ex.check_projection(G @ P_A, A, zero_B, G)


def test_sylvester(matrices):
    A, B, G, s = matrices
    C = -torch.linalg.inv(B.T @ B) @ (s * B.T @ G) @ A.T / s**2
    assert ex.check_sylvester(lrl.solve_sylvester(B.T @ B, A @ A.T, C), A, B, G, s)
    with pytest.raises(ExerciseError, match="residual"):
        ex.check_sylvester(torch.zeros(3, 3), A, B, G, s)
    with pytest.raises(ExerciseError, match="residual"):
        ex.check_sylvester(lrl.solve_sylvester(B.T @ B, A @ A.T, -C), A, B, G, s)  # sign of C
    with pytest.raises(ExerciseError, match="r x r"):
        ex.check_sylvester(torch.zeros(3, 4), A, B, G, s)
