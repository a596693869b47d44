"""Self-checking exercises of lesson 04 (Bone and Bat). Each check computes its reference its own way (building
the library's layers, or re-merging an answer), never from the formula the student is asked to write. Exercise 2
("without ``tiled_identity`` or ``bone_to_lora``") also takes the answer as a function ``bone_as_lora(D, n) -> (E,
B)``, which the check runs with those (and ``shard_sum``) made to raise, on the exercise's block and on blocks of
other shapes."""

from __future__ import annotations

import torch
from torch import nn

from . import judge_pair_function, not_attempted, number_list, passed, require, tensor_answer

# (in_features, out_features, r) of the layers in exercise 1: a square MiniLM projection, a SmolLM2 up
# projection, and a down projection whose input is not a multiple of r (Bone pads the last shard).
BONE_SHAPES = ((384, 384, 16), (576, 1536, 16), (1536, 576, 40))


def _trainable(layer) -> int:
    return sum(p.numel() for p in layer.adapter_parameters().values())


def check_bone_parameter_count(answers) -> bool:
    """Exercise 1: the trainable numbers of one Bone layer for each (in, out, r) of :data:`BONE_SHAPES`."""
    name = "Exercise 1 (Bone's trainable count)"
    if not_attempted(name, answers):
        return False
    from ..layers.bone import BoneLinear

    answers = number_list(name, answers, "the counts (one per shape of BONE_SHAPES)")
    if len(answers) != len(BONE_SHAPES):
        return passed(name, False, f"give one count per shape of BONE_SHAPES ({len(BONE_SHAPES)} numbers)")
    require(name, all(a.is_integer() for a in answers), f"a count is a whole number, got {answers}")
    wanted = [_trainable(BoneLinear(nn.Linear(n_in, n_out, bias=False), r)) for n_in, n_out, r in BONE_SHAPES]
    wrong = [i for i, (a, w) in enumerate(zip(answers, wanted)) if a != w]
    return passed(name, not wrong,
                  f"shape(s) {[BONE_SHAPES[i] for i in wrong]} are off. Which dimension does D share across the "
                  "shards, and which one does it span? Does the padded input change the count?")


def _judge_bone_as_lora(name: str, D: torch.Tensor, n_in: int, E, B, where: str = "") -> None:
    """Raise the hint unless B @ E is the update of a Bone layer with block D and E is zeros and ones."""
    from ..layers.bone import BoneLinear

    r, n_out = D.shape
    E, B = tensor_answer(name, E, "E"), tensor_answer(name, B, "B")
    require(name, tuple(E.shape) == (r, n_in), f"{where}E has shape {tuple(E.shape)}; A of a LoRA on this layer is "
                                               f"(r, in) = {(r, n_in)}")
    require(name, tuple(B.shape) == (n_out, r), f"{where}B has shape {tuple(B.shape)}; B of a LoRA on this layer is "
                                                f"(out, r) = {(n_out, r)}")
    require(name, bool(torch.all((E == 0) | (E == 1))),
            f"{where}E should hold only zeros and ones: it copies input coordinates into shard sums")
    layer = BoneLinear(nn.Linear(n_in, n_out, bias=False).to(D.dtype), r)
    with torch.no_grad():
        layer.bone_block.copy_(D)
    reference = layer.delta_weight().detach()
    got = B.to(reference.dtype) @ E.to(reference.dtype)
    require(name, torch.allclose(got, reference, atol=1e-10, rtol=0),
            f"{where}B @ E differs from the Bone update [D^T | D^T | ...]. Input column i lands in shard sum "
            "coordinate i mod r; check the last, partial shard too.")


# Blocks of other shapes, (r, out, in), on which a function answer must be right too: a padded last shard and an
# exact fit.
_HIDDEN_BONE_CASES = ((3, 4, 11), (2, 3, 8))


def check_bone_as_lora(D: torch.Tensor, n_in: int, E, B=None) -> bool:
    """Exercise 2: a frozen ``E`` (r × n_in, the tiled identity) and ``B`` (out × r) with ``B @ E`` equal to the
    update of a Bone layer whose block is ``D`` (r × out).

    ``E`` may instead be a function ``bone_as_lora(D, n) -> (E, B)`` (``B`` left out): the check runs it with the
    library's ``tiled_identity``, ``bone_to_lora`` and ``shard_sum`` made to raise, on ``D`` and on other blocks."""
    name = "Exercise 2 (Bone = LoRA with a frozen tiled-identity A)"
    D = torch.as_tensor(D, dtype=torch.float64)
    if callable(E):
        from ..layers import bone

        functions = {f"lowrank_lab.layers.bone.{f.__name__}": f for f in (bone.tiled_identity, bone.bone_to_lora,
                                                                         bone.shard_sum)}
        def cases():
            gen = torch.Generator().manual_seed(41)
            blocks = [(D, n_in)] + [(torch.randn(r, m, generator=gen, dtype=torch.float64), n)
                                    for r, m, n in _HIDDEN_BONE_CASES]
            for index, (block, n) in enumerate(blocks):
                where = "" if index == 0 else (f"right on the exercise's block, but not for r = {block.shape[0]}, "
                                               f"{block.shape[1]} outputs and n = {n} inputs: use only the arguments; ")
                yield (block.clone(), n), where, (block, n)

        return judge_pair_function(
            name, E, cases(), lambda result, where, case: _judge_bone_as_lora(name, *case, result[0], result[1], where),
            "matrices: (E, B)", functions=functions, rule="build E from zeros and ones yourself")
    if not_attempted(name, E, B):
        return False
    _judge_bone_as_lora(name, D, n_in, E, B)
    return passed(name, True, "")


def check_bat_unmerge(W_merged: torch.Tensor, D: torch.Tensor, W0) -> bool:
    """Exercise 3: the frozen weight ``W0`` recovered from a Bat-merged weight ``W_merged`` and its blocks ``D``
    ((out/r) × r × r). Checked by merging the answer again (block loop) and comparing with ``W_merged``."""
    name = "Exercise 3 (Bat's unmerge through (I + D_i)^-1)"
    if not_attempted(name, W0):
        return False
    W0 = tensor_answer(name, W0, "W0").to(W_merged.dtype)
    if W0.shape != W_merged.shape:
        return passed(name, False, f"W0 has shape {tuple(W0.shape)}, the merged weight {tuple(W_merged.shape)}")
    n_blocks, r, _ = D.shape
    eye = torch.eye(r, dtype=W_merged.dtype)
    again = torch.empty_like(W_merged)
    for i in range(n_blocks):
        for j in range(W_merged.shape[1] // r):
            block = W0[i * r:(i + 1) * r, j * r:(j + 1) * r]
            again[i * r:(i + 1) * r, j * r:(j + 1) * r] = block @ (eye + D[i]) + D[i]
    same = torch.allclose(again, W_merged, atol=1e-9, rtol=0)
    moved = not torch.allclose(W0, W_merged, atol=1e-9, rtol=0)
    return passed(name, same and moved,
                  "merging your W0 with D does not give W_merged back. Solve W'_ij = W_ij (I + D_i) + D_i for W_ij "
                  "block by block: subtract first, then multiply by an inverse on the correct side.")


def bat_unmerge_problem(seed: int = 0, out_features: int = 8, in_features: int = 12, r: int = 4):
    """A Bat-merged weight and its blocks for exercise 3: ``(W_merged, D)`` in float64 (W0 stays hidden)."""
    from ..layers.bone import BatLinear

    gen = torch.Generator().manual_seed(seed)
    base = nn.Linear(in_features, out_features, bias=False).double()
    with torch.no_grad():
        base.weight.copy_(torch.randn(out_features, in_features, generator=gen, dtype=torch.float64))
    layer = BatLinear(base, r)
    with torch.no_grad():
        layer.bone_block.copy_(0.3 * torch.randn(layer.bone_block.shape, generator=gen, dtype=torch.float64))
    W_merged = layer.merged_weight(base.weight.detach()).detach().clone()
    return W_merged, layer.bone_block.detach().clone()
