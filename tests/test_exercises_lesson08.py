"""Lesson 08's exercise checks: a right answer passes in any numeric form, a wrong one raises its one-line hint (the
common mistakes get a hint of their own), an unanswered one is reported."""

import math

import numpy as np
import pytest
import torch

from lowrank_lab.exercises import ExerciseError
from lowrank_lab.exercises import lesson08 as ex


def _max_cos(W0, W, k=10):
    U0 = torch.linalg.svd(W0, full_matrices=False)[0]
    U = torch.linalg.svd(W, full_matrices=False)[0][:, :k]
    return (U.T @ U0).abs().amax(dim=1)


def test_unanswered_exercises_are_reported_not_failed(capsys):
    W0, W = ex.intruder_exercise()
    W0b, norm = ex.build_exercise()
    assert ex.check_intruders(W0, W, None, None) is False
    assert ex.check_update_ranks(ex.update_exercise(), None, 3) is False
    assert ex.check_built_updates(W0b, norm, None, None) is False
    assert ex.check_off_subspace(ex.projection_exercise(), None, None) is False
    assert capsys.readouterr().out.count("not attempted yet") == 4


def test_a_hint_is_one_line_and_still_an_assertion():
    W0, W = ex.intruder_exercise()
    with pytest.raises(ex.Hint) as info:
        ex.check_intruders(W0, W, [0.5] * 10, 1)
    assert isinstance(info.value, ExerciseError) and isinstance(info.value, AssertionError)
    lines = info.value._render_traceback_()  # what IPython prints instead of a traceback
    assert len(lines) == 1 and lines[0].startswith("✗ Exercise 1") and "\n" not in lines[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_intruders(seed):
    W0, W = ex.intruder_exercise(seed)
    right = _max_cos(W0, W)
    count = int((right < 0.5).sum())
    assert 1 <= count < 10  # the construction has an intruder and vectors that are not
    for form in (right, right.float(), right.numpy(), right.tolist(), [torch.tensor(x) for x in right.tolist()]):
        assert ex.check_intruders(W0, W, form, count)
    assert ex.check_intruders(W0, W, right, float(count)) and ex.check_intruders(W0, W, right, np.int64(count))
    U0 = torch.linalg.svd(W0, full_matrices=False)[0]
    U, _, Vh = torch.linalg.svd(W, full_matrices=False)
    V0h = torch.linalg.svd(W0, full_matrices=False)[2]
    mistakes = {
        "not only its top k": (U[:, :10].T @ U0[:, :10]).abs().amax(dim=1),
        "LEFT singular vectors": (Vh[:10] @ V0h.T).abs().amax(dim=1),
        "take \\|cos\\|": (U[:, :10].T @ U0).amax(dim=1),
        "largest first": right.sort().values,
        "max over i": right + 0.01,
        "10 numbers": right[:9],
    }
    for hint, wrong in mistakes.items():
        with pytest.raises(ex.Hint, match=f"Exercise 1.*{hint}"):
            ex.check_intruders(W0, W, wrong, count)
    for wrong_count in (count + 1, "1", [count]):
        with pytest.raises(ex.Hint, match="count them"):
            ex.check_intruders(W0, W, right, wrong_count)


def test_update_ranks():
    delta = ex.update_exercise()
    s = torch.linalg.svdvals(delta)
    s = s[s > 1e-9 * s[0]]
    p = s / s.sum()
    entropy = float(-(p * p.log()).sum())
    energy = int(np.searchsorted(np.cumsum((s ** 2).numpy()) / float((s ** 2).sum()), 0.9) + 1)
    assert energy == 3
    bits = float(2 ** -(p * torch.log2(p)).sum())  # the same number: 2^(entropy in bits) = e^(entropy in nats)
    for form in (math.exp(entropy), bits, torch.tensor(math.exp(entropy)), np.float32(math.exp(entropy))):
        assert ex.check_update_ranks(delta, form, energy)
    assert ex.check_update_ranks(delta, math.exp(entropy), torch.tensor(energy))
    q = s ** 2 / (s ** 2).sum()
    mistakes = {
        "not their squares": math.exp(float(-(q * q.log()).sum())),
        "its exponential": entropy,
        "exp undoes the natural logarithm": float(2 ** -(p * p.log()).sum()),
        "exp\\(-sum p_i log p_i\\)": math.exp(entropy) + 0.1,
        "one number": [math.exp(entropy)] * 2,
    }
    for hint, wrong in mistakes.items():
        with pytest.raises(ex.Hint, match=f"Exercise 2.*{hint}"):
            ex.check_update_ranks(delta, wrong, energy)
    for wrong in (energy + 1, 4, "3"):  # 4 = the count from the singular values instead of their squares
        with pytest.raises(ex.Hint, match="90% rank"):
            ex.check_update_ranks(delta, math.exp(entropy), wrong)


def test_built_updates():
    W0, norm = ex.build_exercise()
    U0, _, V0h = torch.linalg.svd(W0)
    kept = norm * torch.outer(U0[:, 0], V0h[0])                                   # along W0's top direction
    mixed = norm * torch.outer(U0[:, :3] @ torch.ones(3, dtype=torch.float64) / math.sqrt(3), V0h[0])
    spread = U0 @ torch.ones(16, dtype=torch.float64) / 4
    intruder = norm * torch.outer(spread, V0h[-1])                                # new output, unused input
    assert ex.check_built_updates(W0, norm, kept, intruder)
    assert ex.check_built_updates(W0, norm, mixed.numpy(), intruder.tolist())
    assert ex.check_built_updates(W0, norm, kept.float(), intruder.float())      # float32 answers pass too
    for kept_wrong, intruder_wrong, hint in (
        (intruder, intruder, "W0 \\+ kept has an intruder"),
        (kept, kept, "W0 \\+ intruder has none"),
        (2 * kept, intruder, "Frobenius norm"),
        (kept + norm * torch.outer(U0[:, 1], V0h[1]) / 10, intruder, "rank 1"),
        (kept[:4], intruder, "W0's shape"),
    ):
        with pytest.raises(ex.Hint, match=f"Exercise 3.*{hint}"):
            ex.check_built_updates(W0, norm, kept_wrong, intruder_wrong)


def test_off_subspace():
    M = ex.projection_exercise()
    A, B, G, basis, s = (M[key] for key in ("A", "B", "G", "basis", "s"))
    off = torch.eye(A.shape[1], dtype=torch.float64) - basis @ basis.T
    assert (G @ off).norm() < 1e-12 * G.norm()                                    # the full step stays in S
    P_B = B @ torch.linalg.inv(B.T @ B) @ B.T
    P_A = A.T @ torch.linalg.inv(A @ A.T) @ A
    lora = s ** 2 * (B @ B.T @ G + G @ A.T @ A)
    pro = P_B @ G + (torch.eye(B.shape[0], dtype=torch.float64) - P_B) @ G @ P_A
    fraction = [float((T @ off).norm() / T.norm()) for T in (lora, pro)]
    assert fraction[1] < fraction[0]                                              # LoRA-Pro leaks less here
    assert ex.check_off_subspace(M, *fraction)
    assert ex.check_off_subspace(M, torch.tensor(fraction[0]), np.float32(fraction[1]))
    unscaled = B @ B.T @ G + G @ A.T @ A                                          # the ratio does not see s^2
    assert ex.check_off_subspace(M, float((unscaled @ off).norm() / unscaled.norm()), fraction[1])
    for wrong, hint in (([fraction[0] ** 2, fraction[1]], "squared norms"),
                        ([fraction[0], math.sqrt(1 - fraction[1] ** 2)], "the part inside S"),
                        ([fraction[1], fraction[0]], "plain LoRA's fraction is off"),
                        ([fraction[0], "0.1"], "two numbers")):
        with pytest.raises(ex.Hint, match=f"Exercise 4.*{hint}"):
            ex.check_off_subspace(M, *wrong)
