"""Self-checking exercises of lesson 01 (LoRA from scratch).

Each ``check_...`` computes its reference its own way (the library's layer and its parameter list, autograd,
the layer's own forward, a Monte-Carlo sweep), never from the formula the student is asked to apply, and its
hint says where to look, not what the answer is.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from lowrank_lab.exercises import not_attempted, number_answer, passed, tensor_answer, whole_answer
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
    passed(name, count == ref_count,
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


def lora_toy(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, LoRALinear]:
    """``(X, target, layer)`` for exercises 2 and 3: a float64 ``LoRALinear`` (s = alpha/r) whose A AND B are
    non-zero, and the loss ``L = ((layer(X) - target) ** 2).sum() / 2``. Same seed, same tensors."""
    N, n, m, r = TOY_SHAPE
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


def check_lora_gradients(grad_A, grad_B, seed: int = 0) -> bool:
    """Exercise 2: ``grad_A`` = ∂L/∂A (r × n) and ``grad_B`` = ∂L/∂B (m × r) of :func:`lora_toy`'s loss."""
    name = "Exercise 2 (closed-form G_A and G_B)"
    if not_attempted(name, grad_A, grad_B):
        return False
    X, target, layer = lora_toy(seed)
    (((layer(X) - target) ** 2).sum() / 2).backward()
    ref_A, ref_B = layer.lora_A.grad.detach(), layer.lora_B.grad.detach()
    grad_A, grad_B = tensor_answer(name, grad_A, "∂L/∂A"), tensor_answer(name, grad_B, "∂L/∂B")
    passed(name, tuple(grad_A.shape) == tuple(ref_A.shape) and tuple(grad_B.shape) == tuple(ref_B.shape),
           f"a gradient has its parameter's shape: A is {tuple(ref_A.shape)}, B is {tuple(ref_B.shape)}; got "
           f"{tuple(grad_A.shape)} and {tuple(grad_B.shape)}")
    ok_A, ok_B = (torch.allclose(g, ref, rtol=1e-9, atol=1e-9) for g, ref in ((grad_A, ref_A), (grad_B, ref_B)))
    hint = ("start from δ = ∂L/∂Y of this loss, form the full gradient G = δᵀX, then compress it through the "
            "OTHER factor; did you keep the scale s (layer.scaling)?")
    passed(name, ok_A or ok_B, "neither gradient is right: " + hint)
    return passed(name, ok_A and ok_B, f"∂L/∂{'A' if ok_A else 'B'} is right but ∂L/∂{'B' if ok_A else 'A'} is "
                                       "not: which side of G does each factor multiply, and is it transposed?")


def check_merged_weight(W_merged, seed: int = 0) -> bool:
    """Exercise 3: ``W_merged`` (m × n) such that ``F.linear(x, W_merged, layer.base_layer.bias) == layer(x)``
    for :func:`lora_toy`'s layer and every input x."""
    name = "Exercise 3 (merged weight)"
    if not_attempted(name, W_merged):
        return False
    _, _, layer = lora_toy(seed)
    m, n = layer.base_layer.weight.shape
    W_merged = tensor_answer(name, W_merged, "the merged weight")
    passed(name, tuple(W_merged.shape) == (m, n),
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


def check_rank_stabilization(beta, slope_lora) -> bool:
    """Exercise 4: ``beta`` = the exponent in s = α/r^beta that keeps the one-step update Θ(1) in r (SGD from
    B = 0); ``slope_lora`` = the log-log slope in r of that update's size with LoRA's s = α/r."""
    name = "Exercise 4 (rank-stabilising scale)"
    if not_attempted(name, beta, slope_lora):
        return False
    beta, slope_lora = number_answer(name, beta, "the exponent"), number_answer(name, slope_lora, "the slope")
    slope_unscaled = coherent_step_slope(0.0)  # s = 1: the update grows like r^slope_unscaled
    slope_alpha_over_r = coherent_step_slope(1.0)
    passed(name, abs(slope_lora - slope_alpha_over_r) < 0.1,
           "the slope for s = α/r is not right: with s fixed, how does Σ_i a_i a_iᵀ grow with the number of "
           "terms r, and how many factors of s does the one-step update B₁A carry?")
    return passed(name, abs(beta - slope_unscaled / 2) < 0.05,
                  "the exponent is not right: the update carries s twice; which power of r cancels the growth "
                  "of AᵀA?")
