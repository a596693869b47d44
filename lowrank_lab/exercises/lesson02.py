"""Self-checking exercises of lesson 02 (LoRA-Pro). Each check computes its reference a different way from the
lesson's code: the equivalent gradient from an actual tiny SGD step, the projection from orthonormal bases instead of
inverses, the Sylvester solution by its residual. A wrong answer raises :class:`ExerciseError` with a hint.

The exercises ask for plain tensor operations, without the library's LoRA-Pro functions (and exercise 3 without
any Sylvester solver). Each check also takes the answer as a function of ``(A, B, G, s)`` (exercise 2: ``(A, B,
G)``), which it runs with ``lrl.equivalent_gradient``, ``lrl.adjusted_gradients``, ``lrl.solve_sylvester`` (and
scipy's ``solve_sylvester``) made to raise and autograd disabled, on the exercise's matrices and on a set of
another shape, so the rule is enforced and a pasted matrix does not pass."""

from __future__ import annotations

import torch

from . import ExerciseError, call_answer, function_not_attempted, matrix_answer, not_attempted, passed, require


def _matrix_answer(name: str, answer, shape: tuple, what: str) -> torch.Tensor:
    """The answer as a float64 tensor of ``shape``, or the hint naming the shape it must have."""
    return matrix_answer(name, answer, shape, f"the answer must be {what}, shape {tuple(shape)}")


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).norm() / reference.norm().clamp_min(1e-300)).item()


def _forbidden_functions() -> dict:
    """The library functions the three exercises ask to do without (scipy's solver too, when scipy is installed)."""
    from lowrank_lab.methods import lora_pro

    functions = {f"lrl.{f.__name__}": f for f in (lora_pro.equivalent_gradient, lora_pro.adjusted_gradients,
                                                   lora_pro.solve_sylvester, lora_pro.symmetric_pinv)}
    try:
        import scipy.linalg  # loaded now, so that an import inside the answer finds the stub too
    except ImportError:
        pass
    else:
        functions["scipy.linalg.solve_sylvester"] = scipy.linalg.solve_sylvester
    return functions


def _hidden_case(seed: int = 11) -> tuple:
    """Matrices of another shape (r = 2, 6 x 4 layer) on which a function answer must be right too."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    B = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    G = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    return A, B, G, 0.7


def _function_answer(name: str, function, A, B, G, s, judge, with_s: bool = True) -> bool:
    """Run a function answer on the exercise's matrices and on the hidden case, judging each result."""
    for index, case in enumerate(((A, B, G, s), _hidden_case())):
        args = tuple(torch.as_tensor(x, dtype=torch.float64).clone() for x in case[:3]) + ((case[3],) if with_s else ())
        result = call_answer(name, function, *args, functions=_forbidden_functions(), autograd=False,
                             rule="build it from A, B, G (and s) with tensor operations")
        if index == 0 and function_not_attempted(name, result):
            return False
        where = "" if index == 0 else ("right on the exercise's matrices, but not on another set (r = 2, a 6 x 4 "
                                       "layer): use only the function's arguments, no fixed sizes or values; ")
        try:
            ok, hint = judge(result, *case)
        except ExerciseError as error:  # a shape hint: say that it is about the second set
            if index == 0:
                raise
            raise ExerciseError(f"{name}: not yet. {where}{str(error).split('not yet. ', 1)[-1]}") from None
        require(name, ok, where + hint)
    return passed(name, True, "")


def _judge_equivalent(name: str, G_eq, A, B, G, s) -> tuple[bool, str]:
    A, B, G = (torch.as_tensor(x, dtype=torch.float64) for x in (A, B, G))
    value = _matrix_answer(name, G_eq, G.shape, "an m x n matrix like G")
    with torch.enable_grad():
        A_p, B_p = A.clone().requires_grad_(True), B.clone().requires_grad_(True)
        (s * B_p @ A_p * G).sum().backward()  # dL/dW = G for the linear loss L = <G, W>: these are G_A and G_B
    lr = 1e-7
    moved = s * (B - lr * B_p.grad) @ (A - lr * A_p.grad) - s * B @ A
    reference = moved / -lr
    error = _relative_error(value, reference)
    return error <= 1e-5, (f"relative error {error:.1e}. Differentiate W = W0 + s B A by the chain rule to get G_A and "
                           "G_B (mind where the scale s appears), then combine them as the first-order change of s B A.")


def check_equivalent_gradient(G_eq, A, B, G, s) -> bool:
    """Exercise 1: ``G_eq`` = s B G_A + s G_B A, with G_A = s Bᵀ G and G_B = s G Aᵀ (the chain rule).

    Reference: the weight change of a real SGD step on (A, B) with a tiny learning rate, divided by -lr, which
    approaches the equivalent gradient to first order (float64; the O(lr) remainder is far below the tolerance).
    ``G_eq`` may be a function ``(A, B, G, s) -> G_eq``, run without the library's LoRA-Pro functions or autograd.
    """
    name = "Exercise 1 (equivalent gradient)"
    judge = lambda value, *case: _judge_equivalent(name, value, *case)
    if callable(G_eq):
        return _function_answer(name, G_eq, A, B, G, s, judge)
    if not_attempted(name, G_eq):
        return False
    ok, hint = judge(G_eq, A, B, G, s)
    return passed(name, ok, hint)


def _orthonormal_basis(M: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """Orthonormal columns spanning M's column space (left singular vectors above a relative cut)."""
    U, S, _ = torch.linalg.svd(M, full_matrices=False)
    rank = int((S > rtol * S.max()).sum()) if S.numel() and S.max() > 0 else 0
    return U[:, :rank]


def _judge_projection(name: str, G_star, A, B, G) -> tuple[bool, str]:
    A, B, G = (torch.as_tensor(x, dtype=torch.float64) for x in (A, B, G))
    value = _matrix_answer(name, G_star, G.shape, "an m x n matrix like G")
    QB, QA = _orthonormal_basis(B), _orthonormal_basis(A.T)
    on_B = QB @ (QB.T @ G)
    on_A = (G @ QA) @ QA.T
    reference = on_B + on_A - QB @ (QB.T @ G @ QA) @ QA.T
    error = _relative_error(value, reference)
    return error <= 1e-8, (f"relative error {error:.1e}. P_B projects onto the column space of B (an m x m matrix), "
                           "P_A onto the row space of A (n x n); check that each is symmetric and idempotent before "
                           "combining them.")


def check_projection(G_star, A, B, G) -> bool:
    """Exercise 2: ``G_star`` = P_B G + (I - P_B) G P_A, the projection of G onto the tangent space at BA.

    Reference: orthonormal bases of B's columns and A's rows (from SVDs), and the inclusion-exclusion form
    P_B G + G P_A - P_B G P_A (no matrix inverse). ``G_star`` may be a function ``(A, B, G) -> G_star``, run without
    the library's LoRA-Pro functions.
    """
    name = "Exercise 2 (LoRA-Pro's projection)"
    judge = lambda value, A_, B_, G_, *_: _judge_projection(name, value, A_, B_, G_)
    if callable(G_star):
        return _function_answer(name, G_star, A, B, G, None, judge, with_s=False)
    if not_attempted(name, G_star):
        return False
    ok, hint = judge(G_star, A, B, G)
    return passed(name, ok, hint)


def _judge_sylvester(name: str, Xi, A, B, G, s) -> tuple[bool, str]:
    A, B, G = (torch.as_tensor(x, dtype=torch.float64) for x in (A, B, G))
    r = A.shape[0]
    value = _matrix_answer(name, Xi, (r, r), "an r x r matrix")
    BtB, AAt = B.T @ B, A @ A.T
    G_A = s * B.T @ G
    Psi = -torch.linalg.solve(BtB, G_A @ A.T) / s**2
    residual = _relative_error(BtB @ value + value @ AAt, Psi)
    return residual <= 1e-8, (f"residual {residual:.1e} x ||Psi||. Build Psi from G_A (not from G_B), then solve in the "
                              "eigenbases of the two symmetric coefficient matrices, or vectorise with Kronecker "
                              "products.")


def check_sylvester(Xi, A, B, G, s) -> bool:
    """Exercise 3: ``Xi`` solves Bᵀ B Ξ + Ξ A Aᵀ = Ψ with Ψ = -(1/s²) (BᵀB)⁻¹ G_A Aᵀ and G_A = s Bᵀ G.

    Reference: the residual of the equation itself (any correct solver passes), relative to ||Ψ||. ``Xi`` may be a
    function ``(A, B, G, s) -> Xi``, run with ``lrl.solve_sylvester`` and scipy's ``solve_sylvester`` made to raise.
    """
    name = "Exercise 3 (the Sylvester matrix)"
    judge = lambda value, *case: _judge_sylvester(name, value, *case)
    if callable(Xi):
        return _function_answer(name, Xi, A, B, G, s, judge)
    if not_attempted(name, Xi):
        return False
    ok, hint = judge(Xi, A, B, G, s)
    return passed(name, ok, hint)
