"""Self-checking exercises of lesson 01 (LoRA from scratch).

Each ``check_...`` computes its reference its own way (the library's layer and its parameter list, autograd,
the layer's own forward, a Monte-Carlo sweep), never from the formula the student is asked to apply, and its
hint says where to look, not what the answer is. Exercise 2 ("without autograd") also takes the answer as a function
``lora_gradients(X, target, W0, b, A, B, s) -> (G_A, G_B)``, run with autograd disabled on the exercise's layer and
on one of another shape; exercise 4 takes the slope as a function of ψ, checked at ψ values the student is not
told, so neither can be passed by trying a few numbers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from lowrank_lab.exercises import (call_answer, function_not_attempted, judge_pair_function, not_attempted,
                                   number_answer, passed, require, tensor_answer, whole_answer)
from lowrank_lab.adapters import count_parameters, inject
from lowrank_lab.layers.lora import LoRAConfig, LoRALinear

# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: LoRA's parameter count
# ---------------------------------------------------------------------------------------------------------------
def check_lora_parameter_count(count, fraction, in_features: int = 384, out_features: int = 1536,
                               r: int = 8) -> bool:
    """Exercise 1: ``count`` = trainable parameters LoRA rank ``r`` adds to ``nn.Linear(in_features,
    out_features)``; ``fraction`` = ``count`` divided by the number of entries of that layer's weight."""
    name = "Exercise 1 (LoRA parameter count)"
    if not_attempted(name, count, fraction):
        return False
    dense = nn.Sequential(nn.Linear(in_features, out_features, bias=False))
    n_weight = dense[0].weight.numel()
    ref_count, _ = count_parameters(inject(dense, LoRAConfig(r=r, target_modules=("0",))))  # trainable ones
    ref_fraction = ref_count / n_weight
    count, fraction = whole_answer(name, count, "the count"), number_answer(name, fraction, "the fraction")
    require(name, count == ref_count,
            "the count is not right: write down the shapes of A and B for this layer (which one has in_features "
            "columns, which one out_features rows?) and count their entries; the frozen W0 is not trained.")
    return passed(name, math.isclose(fraction, ref_fraction, rel_tol=1e-6),
                  "the count is right but the fraction is not: divide by the number of entries of W0 (m·n), "
                  "not by W0 plus the adapter.")


# ---------------------------------------------------------------------------------------------------------------
# Exercises 2 and 3: a LoRA layer with non-zero factors
# ---------------------------------------------------------------------------------------------------------------
TOY_SHAPE = (8, 6, 5, 3)  # (N, n, m, r)
TOY_ALPHA = 6.0


def lora_toy(seed: int = 0, shape: tuple = TOY_SHAPE) -> tuple[torch.Tensor, torch.Tensor, LoRALinear]:
    """``(X, target, layer)`` for exercises 2 and 3: a float64 ``LoRALinear`` (s = alpha/r) whose A AND B are
    non-zero, and the loss ``L = ((layer(X) - target) ** 2).sum() / 2``. Same seed, same tensors. ``shape`` =
    (N, n, m, r)."""
    N, n, m, r = shape
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(N, n, generator=gen, dtype=torch.float64)
    target = torch.randn(N, m, generator=gen, dtype=torch.float64)
    base = nn.Linear(n, m).double()
    layer = LoRALinear(base, r, scaling=TOY_ALPHA / r)
    with torch.no_grad():
        base.weight.copy_(torch.randn(m, n, generator=gen, dtype=torch.float64))
        base.bias.copy_(torch.randn(m, generator=gen, dtype=torch.float64))
        layer.lora_A.copy_(0.5 * torch.randn(r, n, generator=gen, dtype=torch.float64))
        layer.lora_B.copy_(0.5 * torch.randn(m, r, generator=gen, dtype=torch.float64))
    return X, target, layer


# A second layer, of another shape, on which a function answer must be right too (not shown in the lesson).
_HIDDEN_TOY = (7, (10, 7, 4, 2))


def _lora_reference(seed: int, shape: tuple = TOY_SHAPE):
    X, target, layer = lora_toy(seed, shape)
    with torch.enable_grad():
        (((layer(X) - target) ** 2).sum() / 2).backward()
    return layer.lora_A.grad.detach(), layer.lora_B.grad.detach()


def _judge_lora_gradients(name: str, grad_A, grad_B, ref_A, ref_B, where: str = "") -> None:
    grad_A, grad_B = tensor_answer(name, grad_A, "∂L/∂A"), tensor_answer(name, grad_B, "∂L/∂B")
    require(name, tuple(grad_A.shape) == tuple(ref_A.shape) and tuple(grad_B.shape) == tuple(ref_B.shape),
            f"{where}a gradient has its parameter's shape: A is {tuple(ref_A.shape)}, B is {tuple(ref_B.shape)}; got "
            f"{tuple(grad_A.shape)} and {tuple(grad_B.shape)}")
    ok_A, ok_B = (torch.allclose(g, ref, rtol=1e-9, atol=1e-9) for g, ref in ((grad_A, ref_A), (grad_B, ref_B)))
    hint = ("start from δ = ∂L/∂Y of this loss, form the full gradient G = δᵀX, then compress it through the "
            "OTHER factor; did you keep the scale s (layer.scaling)?")
    require(name, ok_A or ok_B, f"{where}neither gradient is right: " + hint)
    require(name, ok_A and ok_B, f"{where}∂L/∂{'A' if ok_A else 'B'} is right but ∂L/∂{'B' if ok_A else 'A'} is "
                                 "not: which side of G does each factor multiply, and is it transposed?")


def check_lora_gradients(grad_A, grad_B=None, seed: int = 0) -> bool:
    """Exercise 2: ``grad_A`` = ∂L/∂A (r × n) and ``grad_B`` = ∂L/∂B (m × r) of :func:`lora_toy`'s loss.

    ``grad_A`` may instead be a function ``lora_gradients(X, target, W0, b, A, B, s) -> (G_A, G_B)`` (``grad_B``
    left out): the check runs it with autograd disabled, on the exercise's layer and on one of another shape."""
    name = "Exercise 2 (closed-form G_A and G_B)"
    if callable(grad_A):
        def cases():
            for index, (case_seed, shape) in enumerate(((seed, TOY_SHAPE), _HIDDEN_TOY)):
                X, target, layer = lora_toy(case_seed, shape)
                args = (X, target, layer.base_layer.weight, layer.base_layer.bias, layer.lora_A, layer.lora_B)
                where = "" if index == 0 else (f"right on the exercise's layer, but on one of shape (N, n, m, r) = "
                                               f"{shape}: use only the function's arguments (no fixed sizes or scale); ")
                yield (*(t.detach().clone() for t in args), layer.scaling), where, (case_seed, shape)

        return judge_pair_function(
            name, grad_A, cases(), lambda result, where, case: _judge_lora_gradients(
                name, result[0], result[1], *_lora_reference(*case), where=where),
            "tensors: (G_A, G_B)", autograd=False, rule="compute δ, G and the two factor gradients with tensor operations")
    if not_attempted(name, grad_A, grad_B):
        return False
    _judge_lora_gradients(name, grad_A, grad_B, *_lora_reference(seed))
    return passed(name, True, "")


def check_merged_weight(W_merged, seed: int = 0) -> bool:
    """Exercise 3: ``W_merged`` (m × n) such that ``F.linear(x, W_merged, layer.base_layer.bias) == layer(x)``
    for :func:`lora_toy`'s layer and every input x."""
    name = "Exercise 3 (merged weight)"
    if not_attempted(name, W_merged):
        return False
    _, _, layer = lora_toy(seed)
    m, n = layer.base_layer.weight.shape
    W_merged = tensor_answer(name, W_merged, "the merged weight")
    require(name, tuple(W_merged.shape) == (m, n),
            f"the merged weight has W0's shape (m, n) = {(m, n)}, got {tuple(W_merged.shape)}")
    # The reference is the layer's own forward: on 4n random inputs (enough to pin down every entry of W).
    x = torch.randn(4 * n, n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    with torch.no_grad():
        expected, got = layer(x), torch.nn.functional.linear(x, W_merged, layer.base_layer.bias)
    return passed(name, torch.allclose(got, expected, rtol=1e-9, atol=1e-9),
                  "F.linear(x, W_merged, b) does not reproduce layer(x): the update is s·B·A (which order makes "
                  "an (m, n) matrix?), added to W0, and s is layer.scaling.")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 4: the rank-stabilising exponent
# ---------------------------------------------------------------------------------------------------------------
def coherent_step_slope(exponent: float, ranks=(1, 2, 4, 8, 16, 32, 64, 128, 256), n: int = 32, m: int = 24,
                        draws: int = 32, seed: int = 0) -> float:
    """Log-log slope in r of the first SGD step's component along −G, E[s²·‖A Gᵀ‖_F²]/‖G‖_F, with
    s = r^(−exponent) (α = 1, η = 1), B = 0 and A's entries iid U(−1/√n, 1/√n): the reference of exercise 4,
    measured by Monte Carlo over ``draws`` draws of A per rank (not from the formula)."""
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(m, n, generator=gen, dtype=torch.float64)
    sizes = []
    for r in ranks:
        A = (2 * torch.rand(draws, r, n, generator=gen, dtype=torch.float64) - 1) / math.sqrt(n)
        s = r ** (-exponent)
        sizes.append((s ** 2 * (A @ G.T).pow(2).sum((-2, -1))).mean().item() / G.norm().item())
    return float(np.polyfit(np.log(ranks), np.log(sizes), 1)[0])


# ψ values at which a slope function is checked, besides 0, 1/2 and 1 (none is announced to the student).
_SLOPE_PSIS = (1.0, 0.0, 0.5, 0.3, 0.85, 1.7)


def check_rank_stabilization(psi, slope_lora) -> bool:
    """Exercise 4: ``psi`` = the exponent in s = α/r^ψ that keeps the one-step update Θ(1) in r (SGD from
    B = 0); ``slope_lora`` = the log-log slope in r of that update's size with LoRA's s = α/r.

    ``slope_lora`` may instead be a function ``slope(psi)``: the log-log slope of the update's size with
    s = α/r^ψ, for any ψ; the check compares it with the Monte-Carlo measurement at several ψ, so the
    answer is a derivation, not a number found by trying a few. A number is read as the slope at ψ = 1 (LoRA)."""
    name = "Exercise 4 (rank-stabilising scale)"
    if not_attempted(name, psi, slope_lora):
        return False
    slope_unscaled = coherent_step_slope(0.0)  # s = 1: the update grows like r^slope_unscaled
    # s = r^-ψ multiplies every size by r^-2ψ exactly, so the measured slope at ψ is slope_unscaled − 2ψ
    if callable(slope_lora):
        values = []
        for b in _SLOPE_PSIS:
            value = call_answer(name, slope_lora, b)
            if function_not_attempted(name, value):
                return False
            values.append(number_answer(name, value, f"your slope function's value at ψ = {b}"))
        require(name, all(abs(v - (slope_unscaled - 2 * b)) < 0.1 for v, b in zip(values, _SLOPE_PSIS)),
                "your slope function is off at some ψ: from B = 0, how does Σ_i a_i a_iᵀ grow with the number of "
                "terms r, and how many factors of s = α/r^ψ does the one-step update B₁A carry?")
        psi = number_answer(name, psi, "the exponent")
        return passed(name, abs(psi - slope_unscaled / 2) < 0.05,
                      "your slope function is right; the exponent is not: at which ψ is that slope zero?")
    psi, slope_lora = number_answer(name, psi, "the exponent"), number_answer(name, slope_lora, "the slope")
    right = abs(slope_lora - (slope_unscaled - 2.0)) < 0.1 and abs(psi - slope_unscaled / 2) < 0.05
    # One hint for both numbers: telling which one is wrong would let each be found by trying a few values.
    return passed(name, right,
                  "not both right. With s fixed, how does Σ_i a_i a_iᵀ grow with the number of terms r, and how many "
                  "factors of s does the one-step update B₁A carry? The slope for s = α/r follows, and the exponent "
                  "is the one that cancels the growth.")
