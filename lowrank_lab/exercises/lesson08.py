"""Self-checking exercises of lesson 08 (what fine-tuning forgets): intruder dimensions by hand, the shape of an
update's spectrum, building updates with and without an intruder, and where a LoRA step and a LoRA-Pro step leave
the task's input subspace.

Each check computes its reference its own way (``lowrank_lab.forgetting``'s Gram-matrix spectra, LoRA-Pro's
library gradients, the definitions re-evaluated on the student's own matrices) and never prints the answer. A
wrong answer raises :class:`~lowrank_lab.exercises.ExerciseError` (``Hint`` here), which IPython shows as one line
(no traceback); the worked solutions are in ``lessons/solutions/08_what_finetuning_forgets_solutions.ipynb``.
Every answer is a list of real numbers, a matrix, or a pair of them, so none can be found by trying the few
possible values one after another. Exercises 1, 2 and 4 say "without ``forgetting``" (1, 2) or "with plain tensor
operations" (4): their checks also take the answer as a function (``intruders(W0, W) -> (max_cos, count)``,
``update_ranks(delta) -> (effective_rank, rank_90)``, ``leaks(A, B, G, basis, s) -> (lora, lora_pro)``), which they
run with ``lowrank_lab.forgetting`` (and the lesson's own helpers, and LoRA-Pro's library functions) made to raise,
on the exercise's matrices and on others the student has not seen.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lowrank_lab import forgetting

from . import ExerciseError, judge_pair_function, not_attempted, passed, require

K = forgetting.DEFAULT_K            # top-k singular vectors of W examined (PEFT's top_k)
EPSILON = forgetting.HEADLINE_EPSILON  # the intruder threshold (PEFT's threshold_epsilon)


Hint = ExerciseError  # a wrong answer: one line, ✗ (the name the lesson's tests and older notebooks use)


def _fail(name: str, hint: str):
    raise ExerciseError(f"{name}: not yet. {hint}")


def _forgetting_functions() -> dict:
    """Every public function of ``lowrank_lab.forgetting``: exercises 1 and 2 are to be done without them."""
    import inspect

    return {f"forgetting.{key}": value for key, value in vars(forgetting).items()
            if inspect.isfunction(value) and not key.startswith("_") and value.__module__ == forgetting.__name__}


def _numbers(answer) -> np.ndarray | None:
    """The answer as a float64 array (a number, a list, a numpy array or a torch tensor, of any float dtype), or None
    when it is not numbers (a string, a bool, None inside, not finite)."""
    if isinstance(answer, (str, bytes, bool)) or answer is None:
        return None
    if isinstance(answer, torch.Tensor):
        answer = answer.detach().cpu().double().numpy()
    elif isinstance(answer, (list, tuple)):
        items = []
        for x in answer:
            if isinstance(x, (str, bytes, bool)) or x is None:
                return None
            items.append(x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else x)
        answer = items
    try:
        value = np.asarray(answer, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value).all() else None


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0]


def _max_cos(U: torch.Tensor, U0: torch.Tensor) -> np.ndarray:
    return (U.T @ U0).abs().amax(dim=1).numpy()


# ================================================================================================ exercise 1
def intruder_exercise(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 1's pair (W0, W), float64, 24 x 32: W0 has well separated singular values 4·0.85^i; W adds three
    rank-1 changes: W0's 15th singular direction raised to the top, a new direction spread evenly over all of W0's
    left singular vectors, and a rotation inside the plane of W0's first two."""
    gen = torch.Generator().manual_seed(1000 + seed)
    m, n = 24, 32
    U0, V0 = _orthonormal(m, m, gen), _orthonormal(n, m, gen)
    sigma = 4.0 * 0.85 ** torch.arange(m, dtype=torch.float64)
    W0 = U0 @ torch.diag(sigma) @ V0.T
    signs = torch.where(torch.rand(m, generator=gen) < 0.5, -1.0, 1.0).double()
    spread = U0 @ signs / math.sqrt(m)                      # |cos| = 1/sqrt(24) with every u_0,i
    free = torch.linalg.qr(torch.cat([V0, torch.randn(n, 1, generator=gen, dtype=torch.float64)], 1))[0][:, m]
    angle = 0.6
    rotation = torch.tensor([[math.cos(angle) - 1, -math.sin(angle)], [math.sin(angle), math.cos(angle) - 1]],
                            dtype=torch.float64)
    W = (W0 + (1.6 * sigma[0] - sigma[14]) * torch.outer(U0[:, 14], V0[:, 14])
         + 1.3 * sigma[0] * torch.outer(spread, free)
         + U0[:, :2] @ rotation @ torch.diag(sigma[:2]) @ V0[:, :2].T)
    return W0, W


def _judge_intruders(name: str, W0: torch.Tensor, W: torch.Tensor, max_cos, n_intruders, where: str = "") -> None:
    """Raise the hint (naming the common mistake when it is one) unless the answer is right; silent when it is."""
    reference = forgetting.intruder_dimensions(W0, W, k=K, epsilons=(EPSILON,))
    want = np.asarray(reference["max_cos"])
    value = _numbers(max_cos)
    require(name, value is not None and value.shape == want.shape,
            f"{where}max_cos must be {len(want)} numbers: one per top-{K} left singular vector of W")
    if np.allclose(value, want, atol=1e-4):
        count = _numbers(n_intruders)
        require(name, count is not None and count.shape == () and float(count) == int(reference["count"]),
                f"{where}your max_cos is right; an intruder is a vector whose max |cos| is below epsilon = {EPSILON}: "
                "count them")
        return
    U0 = torch.linalg.svd(W0, full_matrices=False)[0]
    U, _, Vh = torch.linalg.svd(W, full_matrices=False)
    V0h = torch.linalg.svd(W0, full_matrices=False)[2]
    mistakes = [
        (_max_cos(U[:, :K], U0[:, :K]), "compare with every left singular vector of W0, not only its top k"),
        (_max_cos(Vh[:K].T, V0h.T), "use the LEFT singular vectors (columns of U, the output space), not the right ones"),
        ((U[:, :K].T @ U0).amax(dim=1).numpy(), "a singular vector's sign is arbitrary: take |cos| before the maximum"),
        (np.sort(want), "keep W's vectors in the order of its singular values, largest first"),
    ]
    for variant, hint in mistakes:
        if np.allclose(value, variant, atol=1e-4):
            _fail(name, where + hint)
    _fail(name, f"{where}for each of W's top-k left singular vectors u_j, max over i of |u_j . u_0,i| with ALL of W0's "
                "left singular vectors (unit columns of U from the reduced SVD)")


def check_intruders(W0, W, max_cos, n_intruders=None) -> bool:
    """Exercise 1: ``max_cos`` = for each of W's top-k left singular vectors (largest singular value first), its
    largest |cosine| with all of W0's left singular vectors; ``n_intruders`` = how many are below epsilon = 0.5.

    Reference: :func:`lowrank_lab.forgetting.intruder_dimensions` (eigenvectors of the Gram matrices, not an SVD).
    ``max_cos`` may be a function ``intruders(W0, W) -> (max_cos, count)`` (``n_intruders`` left out), run with
    ``forgetting`` and the lesson's ``intruders_teaching`` made to raise, on (W0, W) and on another pair."""
    name = "Exercise 1 (intruder dimensions by hand)"
    W0, W = (torch.as_tensor(x, dtype=torch.float64) for x in (W0, W))
    if callable(max_cos):
        def cases():  # lazily: the unseen pair is built only once the answer was tried
            yield (W0.clone(), W.clone()), "", (W0, W)
            A0, A = intruder_exercise(seed=17)
            yield ((A0.clone(), A.clone()), "right on the exercise's pair, but not on another one: use only the "
                   "arguments; ", (A0, A))

        return judge_pair_function(
            name, max_cos, cases(), lambda got, where, pair: _judge_intruders(name, *pair, got[0], got[1], where),
            "things: (max_cos, count)", functions=_forgetting_functions(),
            names={"intruders_teaching": "the lesson's intruders_teaching"}, rule="use torch.linalg.svd")
    if not_attempted(name, max_cos, n_intruders):
        return False
    _judge_intruders(name, W0, W, max_cos, n_intruders)
    return passed(name, True, "")


# ================================================================================================ exercise 2
UPDATE_VALUES = (5.0, 3.0, 2.0, 1.0, 0.5, 0.25)


def update_exercise(seed: int = 0, values=UPDATE_VALUES, shape: tuple = (30, 20)) -> torch.Tensor:
    """Exercise 2's update dW (30 x 20, float64): rank 6, singular values 5, 3, 2, 1, 0.5, 0.25 in random bases."""
    gen = torch.Generator().manual_seed(2000 + seed)
    values = torch.tensor(values, dtype=torch.float64)
    k = len(values)
    return _orthonormal(shape[0], k, gen) @ torch.diag(values) @ _orthonormal(shape[1], k, gen).T


def _judge_update_ranks(name: str, delta: torch.Tensor, effective_rank, energy_rank_90, where: str = "") -> None:
    sigma = forgetting.singular_values(delta)
    reference = forgetting.spectrum_ranks(sigma)
    value = _numbers(effective_rank)
    require(name, value is not None and value.shape == (), f"{where}effective_rank must be one number")
    value = float(value)
    s = sigma[sigma > 1e-9 * sigma.max()].numpy()
    p, q = s / s.sum(), s ** 2 / (s ** 2).sum()
    if not math.isclose(value, reference["effective_rank"], rel_tol=1e-5):
        for variant, hint in ((math.exp(-(q * np.log(q)).sum()), "normalise the singular values themselves, not their squares"),
                              (-(p * np.log(p)).sum(), "that is the entropy: the effective rank is its exponential"),
                              (2 ** (-(p * np.log(p)).sum()), "exp undoes the natural logarithm (2** undoes log2)")):
            if math.isclose(value, variant, rel_tol=1e-5):
                _fail(name, where + hint)
        _fail(name, f"{where}p_i = sigma_i / sum(sigma), then exp(-sum p_i log p_i) over the non-zero singular values")
    energy = _numbers(energy_rank_90)
    require(name, energy is not None and energy.shape == () and float(energy) == int(reference["energy_rank_90"]),
            f"{where}your effective rank is right. For the 90% rank: sort the squared singular values (the energy), "
            "accumulate, and find the fewest whose sum reaches 90% of ||dW||_F^2")


# An update of another spectrum and shape on which a function answer must be right too (not shown in the lesson).
_HIDDEN_UPDATE = dict(seed=23, values=(4.0, 3.5, 1.0, 0.3), shape=(25, 18))


def check_update_ranks(delta, effective_rank, energy_rank_90=None) -> bool:
    """Exercise 2: Roy & Vetterli's effective rank of ``delta`` (exp of the entropy of its singular values
    normalised to sum 1) and the fewest singular values whose squares hold 90% of ||delta||_F^2.

    Reference: :func:`lowrank_lab.forgetting.spectrum_ranks` on the eigenvalues of the Gram matrix.
    ``effective_rank`` may be a function ``ranks(delta) -> (effective_rank, rank_90)`` (``energy_rank_90`` left
    out), run with ``forgetting`` and the lesson's ``update_ranks`` made to raise, on ``delta`` and on another update."""
    name = "Exercise 2 (the shape of an update)"
    delta = torch.as_tensor(delta, dtype=torch.float64)
    if callable(effective_rank):
        def cases():  # lazily: the unseen update is built only once the answer was tried
            yield (delta.clone(),), "", delta
            hidden = update_exercise(**_HIDDEN_UPDATE)
            yield (hidden.clone(),), ("right on the exercise's update, but not on another one (25 x 18, rank 4): use "
                                      "only the argument; "), hidden

        return judge_pair_function(
            name, effective_rank, cases(),
            lambda got, where, matrix: _judge_update_ranks(name, matrix, got[0], got[1], where),
            "things: (effective_rank, rank_90)", functions=_forgetting_functions(),
            names={"update_ranks": "the lesson's update_ranks"}, rule="use torch.linalg.svdvals and the definitions")
    if not_attempted(name, effective_rank, energy_rank_90):
        return False
    _judge_update_ranks(name, delta, effective_rank, energy_rank_90)
    return passed(name, True, "")


# ================================================================================================ exercise 3
def build_exercise(seed: int = 0) -> tuple[torch.Tensor, float]:
    """Exercise 3's pre-trained matrix W0 (16 x 16, singular values 4·0.8^i) and the Frobenius norm both updates
    must have (1.5 x W0's largest singular value)."""
    gen = torch.Generator().manual_seed(3000 + seed)
    sigma = 4.0 * 0.8 ** torch.arange(16, dtype=torch.float64)
    W0 = _orthonormal(16, 16, gen) @ torch.diag(sigma) @ _orthonormal(16, 16, gen).T
    return W0, float(1.5 * sigma[0])


def _rank_one(name: str, which: str, answer, W0: torch.Tensor, norm: float) -> torch.Tensor:
    value = _numbers(answer)
    require(name, value is not None and value.shape == tuple(W0.shape), f"{which} must be a matrix of W0's shape "
            f"{tuple(W0.shape)}")
    delta = torch.from_numpy(value)
    s = torch.linalg.svdvals(delta)
    require(name, s[0] > 0 and s[1] <= 1e-6 * s[0], f"{which} must have rank 1: an outer product c * outer(u, v)")
    require(name, abs(float(s[0]) - norm) <= 0.01 * norm, f"{which} must have Frobenius norm {norm:.4g} (within 1%): "
            "||c u v^T||_F = |c| ||u|| ||v||")
    return delta


def check_built_updates(W0, norm, kept, intruder) -> bool:
    """Exercise 3: two rank-1 updates of Frobenius norm ``norm`` (within 1%): ``kept`` leaves W0 + kept without an
    intruder at epsilon = 0.5 (k = 10), ``intruder`` gives W0 + intruder at least one.

    Reference: :func:`lowrank_lab.forgetting.intruder_dimensions` on the two matrices the student built."""
    name = "Exercise 3 (build an update with and without an intruder)"
    if not_attempted(name, kept, intruder):
        return False
    W0 = torch.as_tensor(W0, dtype=torch.float64)
    a = _rank_one(name, "kept", kept, W0, norm)
    b = _rank_one(name, "intruder", intruder, W0, norm)
    require(name, forgetting.intruder_dimensions(W0, W0 + a, k=K, epsilons=(EPSILON,))["count"] == 0,
            "W0 + kept has an intruder: put the change along W0's own singular directions (one of them, or a mix of "
            "at most three, whose max |cos| stays >= 1/sqrt(3))")
    require(name, forgetting.intruder_dimensions(W0, W0 + b, k=K, epsilons=(EPSILON,))["count"] >= 1,
            "W0 + intruder has none: its new top output direction must be one that no single left singular vector "
            "of W0 owns (spread evenly over many of them), read from an input direction W0 itself barely uses (so "
            "it does not mix with W0's own top outputs)")
    return passed(name, True, "")


# ================================================================================================ exercise 4
def projection_exercise(seed: int = 0) -> dict:
    """Exercise 4's matrices (float64), a state early in training like the lesson's toy: LoRA factors A (r x n,
    LoRA's random init) and a small B (m x r) whose columns already lean toward the residual's top output directions,
    scale s, an orthonormal basis ``basis`` (n x d_S) of the task's input subspace S, and a full gradient G whose
    rows lie in S (as every full gradient of the toy does: G = (W - W*) X^T X / N with the rows of X in S)."""
    gen = torch.Generator().manual_seed(4000 + seed)
    m, n, r, d_S, N = 20, 24, 3, 5, 40
    basis = _orthonormal(n, d_S, gen)
    X = torch.randn(N, d_S, generator=gen, dtype=torch.float64) @ basis.T
    G = torch.randn(m, n, generator=gen, dtype=torch.float64) @ X.T @ X / N
    A = (torch.rand(r, n, generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(n)
    top = torch.linalg.svd(G, full_matrices=False)[0][:, :r]
    B = 0.05 * (top @ torch.randn(r, r, generator=gen, dtype=torch.float64)
                + 0.3 * torch.randn(m, r, generator=gen, dtype=torch.float64))
    return {"A": A, "B": B, "s": 2.0, "basis": basis, "G": G}


def _off_fraction(step: torch.Tensor, basis: torch.Tensor) -> float:
    return float((step - (step @ basis) @ basis.T).norm() / step.norm())


def _judge_off_subspace(name: str, matrices: dict, lora_fraction, lora_pro_fraction, where: str = "") -> None:
    from lowrank_lab.methods.lora_pro import adjusted_gradients, equivalent_gradient

    A, B, G, basis, s = (matrices[key] for key in ("A", "B", "G", "basis", "s"))
    G_A, G_B = s * B.T @ G, s * G @ A.T
    lora = equivalent_gradient(A, B, G_A, G_B, s)
    pro = equivalent_gradient(A, B, *adjusted_gradients(A, B, G_A, G_B, s), s)
    want = (_off_fraction(lora, basis), _off_fraction(pro, basis))
    values = [_numbers(lora_fraction), _numbers(lora_pro_fraction)]
    require(name, all(v is not None and v.shape == () for v in values),
            f"{where}give two numbers, one per equivalent gradient")
    values = [float(v) for v in values]
    squared = [w * w for w in want]
    inside = [math.sqrt(max(0.0, 1 - w * w)) for w in want]
    for got, ref, sq, ins, which in zip(values, want, squared, inside, ("plain LoRA's", "LoRA-Pro's")):
        if math.isclose(got, ref, rel_tol=1e-4, abs_tol=1e-9):
            continue
        if math.isclose(got, sq, rel_tol=1e-4, abs_tol=1e-9):
            _fail(name, f"{where}{which} fraction: a ratio of Frobenius norms, not of squared norms")
        if math.isclose(got, ins, rel_tol=1e-4, abs_tol=1e-9):
            _fail(name, f"{where}{which} fraction: that is the part inside S; multiply by (I - P_S) on the right, "
                        "P_S = basis basis^T")
        _fail(name, f"{where}{which} fraction is off. Form the m x n equivalent gradient first (P_B = B (B^T B)^-1 B^T, "
                    "P_A = A^T (A A^T)^-1 A), then ||G~ (I - P_S)||_F / ||G~||_F")


def check_off_subspace(matrices: dict, lora_fraction, lora_pro_fraction=None) -> bool:
    """Exercise 4: ||G~ (I - P_S)||_F / ||G~||_F for plain LoRA's equivalent gradient s^2 (B B^T G + G A^T A) and for
    LoRA-Pro's P_B G + (I - P_B) G P_A.

    Reference: the library's ``equivalent_gradient`` of LoRA's own factor gradients and of ``adjusted_gradients``.
    ``lora_fraction`` may be a function ``leaks(A, B, G, basis, s) -> (lora, lora_pro)`` (``lora_pro_fraction`` left
    out), run with the library's LoRA-Pro functions made to raise, on these matrices and on another set."""
    name = "Exercise 4 (where a LoRA step and a LoRA-Pro step leave the task's subspace)"
    if callable(lora_fraction):
        from lowrank_lab.methods import lora_pro

        functions = {f"lrl.{f.__name__}": f for f in (lora_pro.equivalent_gradient, lora_pro.adjusted_gradients,
                                                       lora_pro.solve_sylvester)}
        def args(mats):
            return tuple(mats[key].clone() for key in ("A", "B", "G", "basis")) + (mats["s"],)

        def cases():  # lazily: the unseen set is built only once the answer was tried
            yield args(matrices), "", matrices
            hidden = projection_exercise(seed=29)
            yield args(hidden), ("right on the exercise's matrices, but not on another set: use only the "
                                 "arguments; "), hidden

        return judge_pair_function(
            name, lora_fraction, cases(),
            lambda got, where, mats: _judge_off_subspace(name, mats, got[0], got[1], where), "things: (lora, lora_pro)",
            functions=functions, rule="form both equivalent gradients with tensor operations")
    if not_attempted(name, lora_fraction, lora_pro_fraction):
        return False
    _judge_off_subspace(name, matrices, lora_fraction, lora_pro_fraction)
    return passed(name, True, "")
