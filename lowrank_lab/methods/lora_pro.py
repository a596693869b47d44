"""LoRA-Pro: "Are Low-Rank Adapters Properly Optimized?" (Wang, Liang, He, Wang, Tan; arXiv 2407.18242, ICLR 2025).

One SGD step on LoRA's factors moves W = W0 + s·B·A by (to first order) −η·g̃ with the *equivalent gradient*

    g̃ = s·B·g_A + s·g_B·A                                                  (m×n, rank ≤ 2r)

LoRA-Pro replaces (g_A, g_B) by the pair that makes g̃ the best approximation of the full gradient g:

    min_{g_A, g_B} ‖ s·B·g_A + s·g_B·A − g ‖_F²

With P_B = B(BᵀB)⁻¹Bᵀ and P_A = Aᵀ(AAᵀ)⁻¹A (Theorem 2.1), for any r×r matrix X,

    g_A* = (1/s²)(BᵀB)⁻¹ ∂L/∂A + X·A
    g_B* = (1/s²)(I − P_B) ∂L/∂B (AAᵀ)⁻¹ − B·X
    g̃*  = P_B g + (I − P_B) g P_A        (independent of X; ⟨g, g̃*⟩ ≥ 0)

using ∂L/∂A = s·Bᵀg and ∂L/∂B = s·g·Aᵀ, so g itself (m×n) is never needed. X is free; LoRA-Pro picks the X
that keeps the adjusted gradients closest to LoRA's own (the official code's choice, stage_1_and_2.py; the
paper's number for this result is not confirmed), a Sylvester equation

    (BᵀB)·X + X·(AAᵀ) = −(1/s²)(BᵀB)⁻¹ ∂L/∂A · Aᵀ,

solved here with two symmetric eigendecompositions (both sides are symmetric positive definite), not the
official code's complex ``eig``.

Shapes follow the rest of lowrank_lab: A (r, in) = (r, n), B (out, r) = (m, r).

**B = 0 (the first step of a standard LoRA init).** BᵀB is singular. We use the pseudo-inverse of BᵀB (an
eigendecomposition with a relative cut-off), which is the exact minimiser in that case: with B = 0 only g_B
matters, g_A* = 0, X = 0, and g_B* = (1/s²)∂L/∂B (AAᵀ)⁻¹ gives g̃* = g·P_A, the best approximation of g by
matrices of the form s·g_B·A. The same rule covers any rank-deficient B (and A). When BᵀB and AAᵀ are both
singular (r larger than both dimensions of the layer, duplicated rows of A or columns of B), the Sylvester
equation has no unique solution; :func:`solve_sylvester` returns the minimum-norm one. g̃* does not depend
on X, so it is still P_B g + (I − P_B) g P_A with P_B, P_A the orthogonal projectors onto col(B), row(A).
"""

from __future__ import annotations

import torch

from ..layers.base import NonFiniteError
from ..layers.lora import LoRALinear

# The layer kinds LoRA-Pro's adjustment is derived for (exact types: see _LoRAProOptimizer).
SUPPORTED_LAYERS = (LoRALinear,)

X_MODES = ("sylvester", "zero", "symmetric")

# Eigenvalues of a Gram matrix below this fraction of its largest are treated as zero (pseudo-inverse).
PINV_RTOL = 1e-6


def _check_shapes(A, B, grad_A, grad_B) -> None:
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
        raise ValueError(f"A must be (r, in) and B (out, r) with the same r, got A {tuple(A.shape)} and B {tuple(B.shape)}")
    if grad_A.shape != A.shape or grad_B.shape != B.shape:
        raise ValueError(
            f"gradients must match their factors: grad_A {tuple(grad_A.shape)} vs A {tuple(A.shape)}, "
            f"grad_B {tuple(grad_B.shape)} vs B {tuple(B.shape)}"
        )


def _check_scaling(scaling) -> float:
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not scaling > 0 or scaling == float("inf"):
        raise ValueError(f"scaling must be a positive finite number, got {scaling!r}")
    return float(scaling)


def symmetric_pinv(M: torch.Tensor, rtol: float = PINV_RTOL) -> torch.Tensor:
    """Pseudo-inverse of a symmetric positive semi-definite matrix via ``eigh``."""
    eigenvalues, Q = torch.linalg.eigh(M)
    cutoff = rtol * eigenvalues.abs().max().clamp_min(torch.finfo(M.dtype).tiny)
    inverse = torch.where(eigenvalues > cutoff, 1.0 / eigenvalues, torch.zeros_like(eigenvalues))
    return (Q * inverse) @ Q.T


def solve_sylvester(P: torch.Tensor, Q: torch.Tensor, C: torch.Tensor, rtol: float = PINV_RTOL) -> torch.Tensor:
    """Solve P·X + X·Q = C for symmetric positive (semi-)definite P (p×p) and Q (q×q): the minimum-norm
    least-squares solution.

    With P = U diag(λ) Uᵀ and Q = V diag(μ) Vᵀ, the equation becomes diag(λ)Y + Y diag(μ) = UᵀCV for
    Y = UᵀXV, so Y_ij = (UᵀCV)_ij / (λ_i + μ_j). Unique when every λ_i + μ_j > 0 (e.g. one side definite).
    When both P and Q are singular (r above both dimensions of the layer, duplicated rows of A or columns of
    B), some λ_i + μ_j vanish: those Y_ij are set to 0. The change of basis is orthogonal, so this is exactly
    the pseudo-inverse solution of the Kronecker system (I⊗P + Qᵀ⊗I) vec X = vec C: it solves the equation
    on the range and has the least norm. "Vanish" means ≤ ``rtol`` × the largest |λ_i + μ_j| (round-off of a
    zero eigenvalue); a clearly negative sum means P or Q is not PSD, and raises.
    """
    if P.ndim != 2 or P.shape[0] != P.shape[1] or Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
        raise ValueError(f"P and Q must be square, got P {tuple(P.shape)} and Q {tuple(Q.shape)}")
    if C.shape != (P.shape[0], Q.shape[0]):
        raise ValueError(f"C must be {P.shape[0]}×{Q.shape[0]}, got {tuple(C.shape)}")
    lam, U = torch.linalg.eigh(P)
    mu, V = torch.linalg.eigh(Q)
    denominator = lam[:, None] + mu[None, :]
    cutoff = rtol * denominator.abs().max().clamp_min(torch.finfo(denominator.dtype).tiny)
    if bool((denominator < -cutoff).any()):
        raise ValueError(
            f"solve_sylvester needs P and Q symmetric positive semi-definite; λ_i(P) + μ_j(Q) reaches "
            f"{denominator.min().item():.3g} (largest |λ_i + μ_j| {denominator.abs().max().item():.3g})"
        )
    solvable = denominator > cutoff
    # where() alone would still evaluate 0/0 in the other branch: divide by 1 there, then zero it
    Y = torch.where(solvable, (U.T @ C @ V) / torch.where(solvable, denominator, torch.ones_like(denominator)),
                    torch.zeros_like(denominator))
    return U @ Y @ V.T


def equivalent_gradient(A: torch.Tensor, B: torch.Tensor, grad_A: torch.Tensor, grad_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """g̃ = s·B·g_A + s·g_B·A: the full-weight (m×n) direction a step on (A, B) with these gradients takes."""
    _check_shapes(A, B, grad_A, grad_B)
    s = _check_scaling(scaling)
    return s * (B @ grad_A) + s * (grad_B @ A)


def adjusted_gradients(
    A: torch.Tensor,
    B: torch.Tensor,
    grad_A: torch.Tensor,
    grad_B: torch.Tensor,
    scaling: float,
    x_mode: str = "sylvester",
) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA-Pro's closed-form gradients (Theorems 2.1 and 2.3) from LoRA's own ∂L/∂A and ∂L/∂B.

    ``x_mode``: "sylvester" (the paper's X, closest to LoRA's gradients), "zero" (X = 0) or "symmetric"
    (X balancing the two terms of g̃, with the inverse Gram (AAᵀ)⁻¹ the derivation gives). g̃ is the same for
    all three. The r×r algebra runs in float64 (it is tiny) and the results come back in the inputs' dtype.
    """
    _check_shapes(A, B, grad_A, grad_B)
    s = _check_scaling(scaling)
    if x_mode not in X_MODES:
        raise ValueError(f"x_mode must be one of {X_MODES}, got {x_mode!r}")
    out_dtype = grad_A.dtype
    # The m×r and r×n products stay in (at least) fp32; the r×r Grams and inverses go to float64.
    work = torch.promote_types(A.dtype, torch.float32)
    A, B, grad_A, grad_B = (t.to(work) for t in (A, B, grad_A, grad_B))
    BtB = (B.T @ B).double()
    AAt = (A @ A.T).double()
    BtB_pinv = symmetric_pinv(BtB)
    AAt_pinv = symmetric_pinv(AAt)
    inv_s2 = 1.0 / (s * s)

    new_A = inv_s2 * (BtB_pinv.to(work) @ grad_A)  # (1/s²)(BᵀB)⁻¹ ∂L/∂A
    # (I − P_B)·∂L/∂B without forming the m×m projector: ∂L/∂B − B (BᵀB)⁺ Bᵀ ∂L/∂B
    grad_B_perp = grad_B - B @ (BtB_pinv.to(work) @ (B.T @ grad_B))
    new_B = inv_s2 * (grad_B_perp @ AAt_pinv.to(work))

    if x_mode == "sylvester":
        rhs = -inv_s2 * (BtB_pinv @ (grad_A.double() @ A.T.double()))
        X = solve_sylvester(BtB, AAt, rhs) if rhs.abs().max() > 0 else torch.zeros_like(rhs)
    elif x_mode == "symmetric":
        X = -0.5 * inv_s2 * (BtB_pinv @ (B.T.double() @ grad_B.double()) @ AAt_pinv)
    else:
        X = None
    if X is not None:
        X = X.to(work)
        new_A = new_A + X @ A
        new_B = new_B - B @ X
    return new_A.to(out_dtype), new_B.to(out_dtype)


# ---------------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------------
class _LoRAProOptimizer(torch.optim.Optimizer):
    """Shared plumbing: pair each LoRA layer's A and B *by module* (never by parameter order), read each
    layer's own scale s, and keep every other trainable parameter (a classifier head, say) in its own group.

    The adjustment runs inside ``step()``, i.e. once per optimizer step: after gradient accumulation and
    after DDP's all-reduce (both happen in ``backward``), on the averaged gradients. The frozen base weight is
    never touched. Gradients are checked finite for every parameter *before* anything is updated.
    """

    def __init__(self, model: torch.nn.Module, defaults: dict, x_mode: str):
        from ..adapters import adapter_layers

        if x_mode not in X_MODES:
            raise ValueError(f"x_mode must be one of {X_MODES}, got {x_mode!r}")
        lr = defaults["lr"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        layers = adapter_layers(model)
        # Exact kinds, not isinstance: a LoRA subclass (DoRA: a magnitude too) has an update this adjustment does
        # not know; stepping it as plain LoRA would be silently wrong, so it is refused.
        unsupported = sorted({type(layer).__name__ for layer in layers.values() if type(layer) not in SUPPORTED_LAYERS})
        if unsupported:
            raise ValueError(f"LoRA-Pro adjusts plain LoRA layers ({', '.join(c.__name__ for c in SUPPORTED_LAYERS)}); "
                             f"the model has {unsupported}")
        self.layers = {name: layer for name, layer in layers.items() if layer.lora_A.requires_grad}
        if not self.layers:
            raise ValueError("LoRA-Pro needs a model with trainable LoRA layers; inject(model, LoRAConfig(...)) first")
        self.x_mode = x_mode
        lora_ids = {id(p) for layer in self.layers.values() for p in (layer.lora_A, layer.lora_B)}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in lora_ids]
        groups = [{"params": [p for layer in self.layers.values() for p in (layer.lora_A, layer.lora_B)], "lora": True}]
        if others:
            groups.append({"params": others, "lora": False})
        super().__init__(groups, defaults)

    def _check_finite(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and not torch.isfinite(p.grad).all():
                    name = next((n for n, l in self.layers.items() if p is l.lora_A or p is l.lora_B), "a non-LoRA parameter")
                    raise NonFiniteError(f"non-finite gradient in {name}; step refused, no weight changed")

    def _lora_direction(self, layer, group: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The (A, B) update directions of one LoRA layer; the step is −lr times them."""
        raise NotImplementedError

    def _other_direction(self, param: torch.Tensor, group: dict) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _apply(param: torch.Tensor, direction: torch.Tensor, group: dict) -> None:
        if group["weight_decay"]:
            param.mul_(1 - group["lr"] * group["weight_decay"])  # decoupled decay
        param.add_(direction.to(param.dtype), alpha=-group["lr"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_finite()
        lora_group = next(g for g in self.param_groups if g["lora"])
        updates = [
            (layer, self._lora_direction(layer, lora_group))
            for layer in self.layers.values()
            if layer.lora_A.grad is not None and layer.lora_B.grad is not None
        ]
        for layer, (delta_A, delta_B) in updates:  # every adjustment computed before any write
            self._apply(layer.lora_A, delta_A, lora_group)
            self._apply(layer.lora_B, delta_B, lora_group)
        for group in self.param_groups:
            if not group["lora"]:
                for param in group["params"]:
                    if param.grad is not None:
                        self._apply(param, self._other_direction(param, group), group)
        return loss


class LoRAProSGD(_LoRAProOptimizer):
    """SGD with LoRA-Pro's adjusted gradients (the paper's Algorithm 1); plain SGD for other parameters."""

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float = 0.0, x_mode: str = "sylvester"):
        super().__init__(model, dict(lr=lr, weight_decay=weight_decay), x_mode)

    def _lora_direction(self, layer, group):
        return adjusted_gradients(layer.lora_A, layer.lora_B, layer.lora_A.grad, layer.lora_B.grad, layer.scaling, self.x_mode)

    def _other_direction(self, param, group):
        return param.grad


def _adam_direction(state: dict, grad: torch.Tensor, betas, eps: float) -> torch.Tensor:
    """Bias-corrected Adam direction m̂ / (√v̂ + ε); the step counter starts at 1 on the first call."""
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(grad, dtype=torch.float32)
        state["exp_avg_sq"] = torch.zeros_like(grad, dtype=torch.float32)
    state["step"] += 1
    beta1, beta2 = betas
    m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
    g = grad.float()
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    return (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt_().add_(eps))


LORA_PRO_MODES = ("full", "efficient")


class LoRAProAdamW(_LoRAProOptimizer):
    """AdamW for LoRA-Pro.

    ``mode="full"`` (the reference algorithm): keep Adam moments of the m×n equivalent gradient g̃, form the
    Adam direction U in weight space, and project it back onto the LoRA factors with the same closed form
    (U plays the full gradient: ∂/∂A = s·BᵀU, ∂/∂B = s·U·Aᵀ). The weight moves by −lr·[P_B U + (I−P_B) U P_A].
    Memory: two fp32 m×n tensors per adapted matrix, like full fine-tuning's Adam state.

    ``mode="efficient"``: adjust the raw gradients, then plain AdamW on A and B (LoRA-sized state). Adam's
    elementwise normalisation breaks the projection argument, so it carries no equivalence guarantee.

    Weight decay is decoupled and applied to A and B (never to the frozen W0, unlike the official code).
    Non-LoRA trainable parameters get plain AdamW.
    """

    def __init__(self, model: torch.nn.Module, lr: float, mode: str = "full", betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, x_mode: str = "sylvester"):
        if mode not in LORA_PRO_MODES:
            raise ValueError(f"mode must be one of {LORA_PRO_MODES}, got {mode!r}")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"betas must be two floats in [0, 1), got {betas!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be non-negative, got {eps!r}")
        self.mode = mode
        super().__init__(model, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay), x_mode)

    def _lora_direction(self, layer, group):
        A, B, s = layer.lora_A, layer.lora_B, layer.scaling
        if self.mode == "full":
            # g̃ does not depend on X, so the cheap X = 0 is enough here.
            grad_A, grad_B = adjusted_gradients(A, B, A.grad, B.grad, s, x_mode="zero")
            U = _adam_direction(self.state[A], equivalent_gradient(A, B, grad_A, grad_B, s), group["betas"], group["eps"])
            return adjusted_gradients(A, B, s * (B.float().T @ U), s * (U @ A.float().T), s, self.x_mode)
        grad_A, grad_B = adjusted_gradients(A, B, A.grad, B.grad, s, self.x_mode)
        return (_adam_direction(self.state[A], grad_A, group["betas"], group["eps"]),
                _adam_direction(self.state[B], grad_B, group["betas"], group["eps"]))

    def _other_direction(self, param, group):
        return _adam_direction(self.state[param], param.grad, group["betas"], group["eps"])


# ---------------------------------------------------------------------------------------------------
# Registration (lowrank_lab.registry): LoRA's layers and recipe, this file's optimizer.
# ---------------------------------------------------------------------------------------------------
def _lora_pro_optimizer(mode: str):
    def make(model, config):
        return LoRAProAdamW(model, lr=config.lr, mode=mode, weight_decay=config.weight_decay)

    make.__qualname__ = f"lora_pro_optimizer_{mode}"
    return make


LORA_PRO_CLAIMS = (
    {"paper": "LoRA-Pro (arXiv 2407.18242)", "claim": "adjusted gradients beat LoRA, closing most of the gap to full FT",
     "paper_evidence": "GSM8K Llama-2-7B r=8: 54.23 vs LoRA 42.08", "baseline": "lora", "kind": "better",
     "gap_to": "full", "sesoi": 0.01},
)


def _register() -> None:
    from ..layers.lora import prepare_lora
    from ..presets import LEARNING_RATES
    from ..registry import register_method

    # Both modes start from LoRA's prior rate, as in the paper (LoRA, LoRA-Pro and full FT all at 2e-5 on Llama-2);
    # compare --tune-lr gives each its own. Full mode moves W by Adam's direction projected onto LoRA's tangent
    # space, a fraction of a full-FT Adam step, so full FT's own rate under-trains it. Probe (cpu preset, MiniLM
    # sentiment, seed 0, 128 steps, val acc on 1,000): lora-pro at 5e-5 0.638, 2e-4 0.779, 1e-3 0.801; LoRA 1e-3: 0.789.
    for name, mode, order, color, claims in (("lora-pro", "full", 3, "C3", LORA_PRO_CLAIMS),
                                             ("lora-pro-efficient", "efficient", 4, "C4", ())):
        register_method(name, prepare_lora, make_optimizer=_lora_pro_optimizer(mode), lr=LEARNING_RATES["lora"],
                        style="optimizer", paper="arXiv 2407.18242", budget="same_r", order=order, claims=claims,
                        color=color)


_register()
