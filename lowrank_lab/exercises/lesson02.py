"""Self-checking exercises of lesson 02 (LoRA-Pro). Each check computes its reference a different way from the
lesson's code: the equivalent gradient from an actual tiny SGD step, the projection from orthonormal bases instead of
inverses, the Sylvester solution by its residual. A wrong answer raises :class:`ExerciseError` with a hint."""

from __future__ import annotations

import torch

from . import matrix_answer, not_attempted, passed


def _matrix_answer(name: str, answer, shape: tuple, what: str) -> torch.Tensor:
    """The answer as a float64 tensor of ``shape``, or the hint naming the shape it must have."""
    return matrix_answer(name, answer, shape, f"the answer must be {what}, shape {tuple(shape)}")


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).norm() / reference.norm().clamp_min(1e-300)).item()


def check_equivalent_gradient(G_eq, A, B, G, s) -> bool:
    """Exercise 1: ``G_eq`` = s B G_A + s G_B A, with G_A = s Bᵀ G and G_B = s G Aᵀ (the chain rule).

    Reference: the weight change of a real SGD step on (A, B) with a tiny learning rate, divided by -lr, which
    approaches the equivalent gradient to first order (float64; the O(lr) remainder is far below the tolerance).
    """
    name = "Exercise 1 (equivalent gradient)"
    if not_attempted(name, G_eq):
        return False
    A, B, G = (torch.as_tensor(x, dtype=torch.float64) for x in (A, B, G))
    value = _matrix_answer(name, G_eq, G.shape, "an m x n matrix like G")
    A_p, B_p = A.clone().requires_grad_(True), B.clone().requires_grad_(True)
    (s * B_p @ A_p * G).sum().backward()  # dL/dW = G for the linear loss L = <G, W>, so these are G_A and G_B
    lr = 1e-7
    moved = s * (B - lr * B_p.grad) @ (A - lr * A_p.grad) - s * B @ A
    reference = moved / -lr
    error = _relative_error(value, reference)
    return passed(name, error <= 1e-5,
                  f"relative error {error:.1e}. Differentiate W = W0 + s B A by the chain rule to get G_A and G_B "
                  "(mind where the scale s appears), then combine them as the first-order change of s B A.")


def _orthonormal_basis(M: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """Orthonormal columns spanning M's column space (left singular vectors above a relative cut)."""
    U, S, _ = torch.linalg.svd(M, full_matrices=False)
    rank = int((S > rtol * S.max()).sum()) if S.numel() and S.max() > 0 else 0
    return U[:, :rank]


def check_projection(G_star, A, B, G) -> bool:
    """Exercise 2: ``G_star`` = P_B G + (I - P_B) G P_A, the projection of G onto the tangent space at BA.

    Reference: orthonormal bases of B's columns and A's rows (from SVDs), and the inclusion-exclusion form
    P_B G + G P_A - P_B G P_A (no matrix inverse).
    """
    name = "Exercise 2 (LoRA-Pro's projection)"
    if not_attempted(name, G_star):
        return False
    A, B, G = (torch.as_tensor(x, dtype=torch.float64) for x in (A, B, G))
    value = _matrix_answer(name, G_star, G.shape, "an m x n matrix like G")
    QB, QA = _orthonormal_basis(B), _orthonormal_basis(A.T)
    on_B = QB @ (QB.T @ G)
    on_A = (G @ QA) @ QA.T
    reference = on_B + on_A - QB @ (QB.T @ G @ QA) @ QA.T
    error = _relative_error(value, reference)
    return passed(name, error <= 1e-8,
                  f"relative error {error:.1e}. P_B projects onto the column space of B (an m x m matrix), P_A onto "
                  "the row space of A (n x n); check that each is symmetric and idempotent before combining them.")


def check_sylvester(Xi, A, B, G, s) -> bool:
    """Exercise 3: ``Xi`` solves Bᵀ B Ξ + Ξ A Aᵀ = C with C = -(1/s²) (BᵀB)⁻¹ G_A Aᵀ and G_A = s Bᵀ G.

    Reference: the residual of the equation itself (any correct solver passes), relative to ||C||.
    """
    name = "Exercise 3 (the Sylvester matrix)"
    if not_attempted(name, Xi):
        return False
    A, B, G = (torch.as_tensor(x, dtype=torch.float64) for x in (A, B, G))
    r = A.shape[0]
    value = _matrix_answer(name, Xi, (r, r), "an r x r matrix")
    BtB, AAt = B.T @ B, A @ A.T
    G_A = s * B.T @ G
    C = -torch.linalg.solve(BtB, G_A @ A.T) / s**2
    residual = _relative_error(BtB @ value + value @ AAt, C)
    return passed(name, residual <= 1e-8,
                  f"residual {residual:.1e} x ||C||. Build C from G_A (not from G_B), then solve in the eigenbases of "
                  "the two symmetric coefficient matrices, or vectorise with Kronecker products.")
