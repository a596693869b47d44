"""Self-checking exercises of lesson 03 (XGBLoRA). Each check computes its reference its own way: merged ranks by
building random boosters and measuring the rank, rounds and trained numbers by building an ``XGBLoRA`` schedule on a
small model and asking it, the truncated SVD from an eigendecomposition of MᵀM. A wrong answer raises
:class:`ExerciseError` with a hint that never gives the answer away."""

from __future__ import annotations

import torch
from torch import nn

from . import matrix_answer, not_attempted, number_list, passed, require, whole_answer


def check_merged_ranks(answer, r: int, m: int, n: int, max_picks: int) -> bool:
    """Exercise 1: ``answer[p - 1]`` is the largest rank the merged update ΔW = Σ_k s B_k A_k of an m x n layer can
    reach after it was picked in p = 1..max_picks rounds with rank-r boosters.

    Reference: p random (generic) rank-r boosters, summed in float64, and their measured rank.
    """
    name = "Exercise 1 (merged rank after p picks)"
    if not_attempted(name, answer):
        return False
    values = number_list(name, answer, f"the answer (one rank per number of picks p = 1..{max_picks})")
    require(name, len(values) == max_picks and all(v.is_integer() for v in values),
            f"give a list of {max_picks} integers, one per number of picks p = 1..{max_picks}")
    values = [int(v) for v in values]
    gen = torch.Generator().manual_seed(0)
    reference, delta = [], torch.zeros(m, n, dtype=torch.float64)
    for _ in range(max_picks):
        delta = delta + torch.randn(m, r, generator=gen, dtype=torch.float64) @ torch.randn(r, n, generator=gen,
                                                                                           dtype=torch.float64)
        reference.append(int(torch.linalg.matrix_rank(delta).item()))
    # No p is named: each entry has only a few possible values, so naming the wrong ones would let them be found
    # by trying; the hint gives the two limits instead.
    return passed(name, values == reference,
                  "not every entry is right. Each merge adds a matrix of rank at most r; what else limits the rank of "
                  "an m x n matrix, and from which p on does it bind?")


class _Block(nn.Module):
    def __init__(self, shapes: dict[str, tuple[int, int]]):
        super().__init__()
        for proj, (out_features, in_features) in shapes.items():
            self.add_module(proj, nn.Linear(in_features, out_features, bias=False))


class _Blocks(nn.Module):
    """n_blocks blocks named like transformer layers ("layers.3.query"), each with the given projections."""

    def __init__(self, n_blocks: int, shapes: dict[str, tuple[int, int]]):
        super().__init__()
        self.layers = nn.ModuleList(_Block(shapes) for _ in range(n_blocks))


def check_rounds_and_trained(rounds, trained_per_step, T: int, kappa: int, n_blocks: int, blocks_per_round: int,
                             r: int, shapes: dict[str, tuple[int, int]]) -> bool:
    """Exercise 2: the number of rounds R for T steps of kappa steps each, and how many booster numbers (entries of
    the A and B factors) are trained at each step when ``blocks_per_round`` of ``n_blocks`` blocks get rank-r
    boosters on every projection of ``shapes`` ({name: (out, in)}).

    Reference: an ``XGBLoRA`` schedule built on a small model with those blocks, asked for its ``n_rounds`` and
    ``active_parameter_count()``.
    """
    name = "Exercise 2 (rounds and trained numbers per step)"
    if not_attempted(name, rounds, trained_per_step):
        return False
    from lowrank_lab import LoRAConfig, XGBLoRA, inject

    torch.manual_seed(0)
    model = inject(_Blocks(n_blocks, shapes), LoRAConfig(r=r, alpha=2 * r, target_modules=tuple(shapes)))
    schedule = XGBLoRA(model, total_steps=T, steps_per_round=kappa, blocks_per_round=blocks_per_round, seed=0)
    rounds = whole_answer(name, rounds, "the number of rounds")
    trained_per_step = whole_answer(name, trained_per_step, "the trained numbers per step")
    # The count (a large number) first: the rounds (a small one) are judged only once it is right.
    require(name, trained_per_step == schedule.active_parameter_count(),
            "the trained numbers per step are wrong: count the entries of A (r x in) and B (out x r) of every "
            "projection in one block, then multiply by the blocks active in a round (not all blocks)")
    return passed(name, rounds == schedule.n_rounds,
                  "the trained count is right, the number of rounds is not: how many rounds of kappa steps fit in T "
                  "steps, counting a last, shorter one?")


def check_boosting(F, M, R: int) -> bool:
    """Exercise 3: ``F`` is the model after R rounds of exact rank-1 boosting of 1/2 ||M - F||_F^2 (shrinkage 1,
    starting from F = 0).

    Reference: the rank-R truncated SVD, built from the top-R eigenvectors of MᵀM (float64).
    """
    name = "Exercise 3 (rank-1 boosting = truncated SVD)"
    if not_attempted(name, F):
        return False
    M = torch.as_tensor(M, dtype=torch.float64)
    value = matrix_answer(name, F, M.shape, f"F must be a matrix of M's shape {tuple(M.shape)}")
    _, vectors = torch.linalg.eigh(M.T @ M)           # ascending eigenvalues
    top = vectors[:, -R:] if R > 0 else vectors[:, :0]
    reference = M @ top @ top.T
    error = ((value - reference).norm() / M.norm()).item()
    return passed(name, error <= 1e-8,
                  f"||F - reference|| / ||M|| = {error:.1e}. Each round must fit the current residual M - F (not M "
                  "itself) with its best rank-1 approximation, and add all of it.")
