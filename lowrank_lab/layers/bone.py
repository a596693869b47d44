"""Bone and Bat: "Bone: Block-Affine Adaptation of Large Language Models" / "DiSHA: Dimension-Sharding
Adaptation of Large Language Models with Fast Convergence and Fast Computation" (Jiale Kang; arXiv 2409.15371),
later "MiSS: Balancing LoRA Performance and Efficiency with Simple Shard Sharing" (Jiale Kang, Qingyu Yin).

The name moved between paper versions; we follow the DiSHA version (HF PEFT calls it MiSS):

* **Bone** (PEFT ``MissConfig(init_weights=True)``). Cut the input dimension of W0 (m×n) into shards of r
  columns; every shard gets the SAME trainable update Dᵀ, with D (r, m) initialised to zero:

      ΔW = [Dᵀ | Dᵀ | ... | Dᵀ]  (n/r copies, the last one cut to n mod r columns when r does not divide n)

  so ΔW·x = Dᵀ·S(x) with S(x) = Σ_j x[j·r:(j+1)·r] (zero-padding the last shard). The forward never forms ΔW:
  one pass over x for the shard sum, one thin (N×r)(r×m) product. Equivalently ΔW = Dᵀ·E with E (r, n),
  E[k, i] = 1 iff i mod r = k: Bone is LoRA with A frozen to a tiled identity and B = Dᵀ (``bone_to_lora``).
  Unlike LoRA's ∂L/∂A at B = 0, ∂L/∂D = S(X)ᵀδ is not zero at init: the one matrix learns from step 1.
  r·m trainable numbers per layer (LoRA: r·(m+n)), no alpha.

* **Bat** (the paper's first "Bone", PEFT ``init_weights="bat"``): the "weight guide". Cut W0 into r×r blocks
  W_ij (i over the m/r output blocks, j over the n/r input blocks); each output block-row i owns one r×r
  matrix D_i, zero-initialised, and

      W'_ij = W_ij·(I + D_i) + D_i,   i.e.  ΔW_ij = (W_ij + I)·D_i,

  an update that depends on the frozen weight (not low rank in general). Needs r | m and r | n. Also r·m
  trainable numbers. The forward uses W' (a function of D), so training computes the full weight gradient
  G = δᵀX each step, like full fine-tuning, and ∂L/∂D_i = Σ_j (W_ij + I)ᵀ·G_ij.

Shapes and names follow PEFT (``miss_block``: Bone (r, out), Bat (out/r, r, r)); ours is ``bone_block``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    AdapterConfig,
    AdapterLayer,
    check_bool,
    check_fraction,
    check_positive_int,
    module_matches,
    normalize_module_names,
)

BONE_VARIANTS = ("bone", "bat")


def check_layer_fits(module_name: str, base_layer: nn.Linear, r: int, variant: str) -> None:
    """Bone needs r <= in_features (a shard wider than the input is all padding); Bat needs r | in and r | out."""
    n, m = base_layer.in_features, base_layer.out_features
    if r > n:
        raise ValueError(f"r must be <= in_features of module {module_name!r} (Linear in={n}, out={m}), got r={r}")
    if variant == "bat" and (n % r or m % r):
        raise ValueError(
            f"variant 'bat' needs r to divide both in_features and out_features (r×r blocks); module "
            f"{module_name!r} is Linear(in={n}, out={m}), got r={r}"
        )


@dataclass
class BoneConfig(AdapterConfig):
    """Configuration of Bone / Bat adapters; validated on construction (shapes are checked at ``inject``)."""

    r: int = field(default=64, metadata={"help": "shard width: Bone D is (r, out); Bat blocks are r×r"})
    target_modules: tuple[str, ...] | str = field(
        default=("q_proj", "v_proj"),
        metadata={"help": "module-name suffixes to adapt, or one regex matched against the full module path"},
    )
    variant: str = field(default="bone", metadata={"help": "'bone' (shared shards) or 'bat' (weight guide)"})
    dropout: float = field(default=0.0, metadata={"help": "Bone only: dropout on the input of the shard sum"})
    modules_to_save: tuple[str, ...] = field(
        default=(), metadata={"help": "modules kept fully trainable and saved with the adapter (e.g. a new head)"}
    )
    recompute_weight: bool = field(
        default=True,
        metadata={"help": "Bat only: rebuild W' in backward instead of keeping one out×in tensor per layer"},
    )

    # dropout shapes training; recompute_weight trades memory for time: neither changes what D computes
    training_only_fields: ClassVar[tuple[str, ...]] = ("dropout", "recompute_weight")

    def __post_init__(self):
        check_positive_int("r", self.r)
        self.target_modules = normalize_module_names("target_modules", self.target_modules, allow_empty=False)
        if self.variant not in BONE_VARIANTS:
            raise ValueError(f"variant must be one of {BONE_VARIANTS}, got {self.variant!r}")
        self.dropout = check_fraction("dropout", self.dropout)
        if self.variant == "bat" and self.dropout > 0:
            # Bat has no side branch to drop: its input meets W' directly (PEFT ignores the setting silently).
            raise ValueError(f"dropout must be 0 with variant 'bat' (it has no adapter branch), got {self.dropout!r}")
        modules = normalize_module_names("modules_to_save", self.modules_to_save, allow_empty=True)
        if isinstance(modules, str):
            raise ValueError(f"modules_to_save must be a list of module names, got {self.modules_to_save!r}")
        self.modules_to_save = modules
        check_bool("recompute_weight", self.recompute_weight)

    @property
    def method(self) -> str:  # the name saved in adapter files and used by the CLI: "bone" or "bat"
        return self.variant

    def create_layer(self, module_name: str, base_layer: nn.Linear) -> "BoneLinear | BatLinear":
        if self.variant == "bone":
            return BoneLinear(base_layer, self.r, self.dropout, module_name=module_name)
        return BatLinear(base_layer, self.r, self.recompute_weight, module_name=module_name)


# ---------------------------------------------------------------------------------------------------
# Bone
# ---------------------------------------------------------------------------------------------------
def shard_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    """S(x) = Σ_j x[..., j·r:(j+1)·r] for x (N, n), the last shard zero-padded: (N, r).

    The full shards are a view of x reshaped to (N, n // r, r), so x is never copied; only the n mod r
    leftover columns are padded (an N×r tensor) instead of padding all of x as the reference code does.
    """
    rows, n = x.shape
    aligned = n - n % r
    total = x[:, :aligned].reshape(rows, aligned // r, r).sum(dim=1)
    if aligned < n:
        total = total + F.pad(x[:, aligned:], (0, aligned + r - n))
    return total


def add_to_every_shard(grad_x: torch.Tensor, grad_sums: torch.Tensor, r: int) -> torch.Tensor:
    """In place: every r-column shard of grad_x (N, n) gets grad_sums (N, r) added, the last one cut.

    This is the adjoint of :func:`shard_sum` (∂S/∂x copies the gradient to every shard), written into an
    existing gradient instead of materialising an N×n copy and adding it afterwards.
    """
    rows, n = grad_x.shape
    aligned = n - n % r
    grad_x[:, :aligned].view(rows, aligned // r, r).add_(grad_sums.unsqueeze(1))
    if aligned < n:
        grad_x[:, aligned:].add_(grad_sums[:, : n - aligned])
    return grad_x


class _BoneLinearFunction(torch.autograd.Function):
    """y = x·W0ᵀ + b + S(x)·D with a hand-written backward (no dropout, one dtype).

    Autograd alone would expand ∂L/∂S to an N×n tensor (and, with padding, copy it into zeros for the
    column slice) before adding it to W0's input gradient; here it is added in place into g·W0. Only S(x)
    (N×r) is kept for backward, not x, unless W0 itself trains.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, block, r):
        sums = shard_sum(x, r)
        result = F.linear(x, weight, bias)
        result.addmm_(sums, block)
        ctx.r = r
        ctx.save_for_backward(sums, weight, block, x if ctx.needs_input_grad[1] else None)
        return result

    @staticmethod
    def backward(ctx, grad_out):
        sums, weight, block, x = ctx.saved_tensors
        need_x, need_weight, need_bias, need_block, _ = ctx.needs_input_grad
        grad_x = grad_weight = grad_bias = grad_block = None
        if need_x:
            # (D·δᵀ)ᵀ rather than δ·Dᵀ: same numbers, but CPU BLAS runs the (N×out)(out×r) product with an odd r
            # (r = 15) several times slower than the (r×out)(out×N) one.
            grad_sums = (block @ grad_out.t()).t()
            grad_x = add_to_every_shard(grad_out @ weight, grad_sums, ctx.r)
        if need_weight:
            grad_weight = grad_out.t() @ x
        if need_bias:
            grad_bias = grad_out.sum(dim=0)
        if need_block:
            grad_block = sums.t() @ grad_out  # S(X)ᵀ·δ = Σ_j (shard j of G)ᵀ
        return grad_x, grad_weight, grad_bias, grad_block, None


def tiled_identity(r: int, n: int, dtype=None, device=None) -> torch.Tensor:
    """E (r, n) with E[k, i] = 1 iff i mod r = k (the tiled identity [I_r I_r ...]): S(x) = E·x, Bone's ΔW = Dᵀ·E."""
    columns = torch.arange(n, device=device)
    return (torch.arange(r, device=device)[:, None] == columns % r).to(dtype or torch.get_default_dtype())


class BoneLinear(AdapterLayer):
    """``nn.Linear`` + Dᵀ·S(x): every r-column shard of the input shares the update Dᵀ (D: (r, out), zero init)."""

    adapter_parameter_names = ("bone_block",)

    def __init__(self, base_layer: nn.Linear, r: int, dropout: float = 0.0, module_name: str = "base_layer"):
        check_positive_int("r", r)
        check_layer_fits(module_name, base_layer, r, "bone")
        super().__init__(base_layer)
        weight = base_layer.weight
        self.r = r
        self.bone_block = nn.Parameter(torch.zeros(r, base_layer.out_features, device=weight.device, dtype=weight.dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # 2-D rows: the Linear output is then a fresh tensor, safe to add into
        weight, block = self.base_layer.weight, self.bone_block
        dropping = isinstance(self.dropout, nn.Dropout) and self.training
        if not dropping and x2.dtype == weight.dtype == block.dtype and not torch.is_autocast_enabled(x.device.type):
            result = _BoneLinearFunction.apply(x2, weight, self.base_layer.bias, block, self.r)
        else:  # dropout or mixed dtypes (autocast): plain autograd
            result = self.base_layer(x2) + shard_sum(self.dropout(x2), self.r) @ block
        return result.reshape(*x.shape[:-1], result.shape[-1])

    def delta_weight(self) -> torch.Tensor:
        n = self.in_features
        shards = math.ceil(n / self.r)
        return self.bone_block.to(self.compute_dtype).t().repeat(1, shards)[:, :n]

    @torch.no_grad()
    def to_lora(self) -> nn.Module:
        """The same update as a LoRA layer, exactly: A = tiled identity (r, in), B = Dᵀ, scaling 1."""
        from .lora import LoRALinear

        if self.merged:
            raise ValueError("cannot convert a merged Bone layer; unmerge it first")
        lora = LoRALinear(self.base_layer, self.r, scaling=1.0)
        lora.lora_A.copy_(tiled_identity(self.r, self.in_features, lora.lora_A.dtype, lora.lora_A.device))
        lora.lora_B.copy_(self.bone_block.t())
        lora.dropout = self.dropout
        return lora

    def extra_repr(self) -> str:
        return f"r={self.r}, " + super().extra_repr()


# ---------------------------------------------------------------------------------------------------
# Bat
# ---------------------------------------------------------------------------------------------------
# Layout trick: W (m, n) viewed as (m/r, n, r) is free (no copy), and row a·(n/r) + j of slice i is row a of
# the block W_ij. So "W_ij · M_i for every j" is ONE batched matmul (m/r, n, r) @ (m/r, r, r), and
# "Σ_j W_ijᵀ G_ij" is (m/r, r, n) @ (m/r, n, r). No permute, so no copy of W.
def bat_weight(weight: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """W' with W'_ij = W_ij·(I + D_i) + D_i, for W (m, n) and D (m/r, r, r); one new m×n tensor."""
    m, n = weight.shape
    count, r, _ = block.shape
    rows = weight.reshape(count, n, r)
    merged = torch.baddbmm(rows, rows, block)  # W_ij + W_ij·D_i
    merged.view(count, r, n // r, r).add_(block.unsqueeze(2))  # + D_i in every block of row i
    return merged.view(m, n)


def bat_unmerged_weight(merged: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """Invert :func:`bat_weight`: W_ij = (W'_ij − D_i)·(I + D_i)⁻¹; refuses singular or ill-conditioned I + D_i."""
    m, n = merged.shape
    count, r, _ = block.shape
    affine = torch.eye(r, dtype=block.dtype, device=block.device) + block
    inverse, info = torch.linalg.inv_ex(affine)
    condition = torch.linalg.cond(affine).nan_to_num(nan=float("inf"))  # an exactly singular block gives nan
    # Beyond 1/√eps the restored W0 would keep less than half its digits: call that singular.
    limit = torch.finfo(block.dtype).eps ** -0.5
    bad = (info != 0) | (condition > limit)
    if bad.any():
        indices = bad.nonzero().flatten().tolist()
        worst = condition[bad].max().item()
        raise ValueError(
            f"unmerge: I + D_i is singular or ill-conditioned for output block(s) {indices[:8]} "
            f"(condition number up to {worst:.3g} > {limit:.3g}); cannot restore W0, weight unchanged"
        )
    shifted = merged.reshape(count, r, n // r, r) - block.unsqueeze(2)
    return torch.bmm(shifted.reshape(count, n, r), inverse).reshape(m, n)


def bat_block_grad(weight: torch.Tensor, grad_merged: torch.Tensor, r: int) -> torch.Tensor:
    """∂L/∂D_i = Σ_j (W_ij + I)ᵀ·G_ij from G = ∂L/∂W' (m, n): (m/r, r, r)."""
    m, n = weight.shape
    count = m // r
    grad_rows = grad_merged.reshape(count, n, r)
    block_sums = grad_merged.reshape(count, r, n // r, r).sum(dim=2)  # Σ_j G_ij
    return torch.baddbmm(block_sums, weight.reshape(count, n, r).transpose(1, 2), grad_rows)


class _BatLinearFunction(torch.autograd.Function):
    """y = x·W'ᵀ + b with W' = bat_weight(W, D), differentiated by hand.

    Autograd through ``bat_weight`` + ``F.linear`` would keep W' (one out×in tensor per layer) alive until
    backward. Here backward rebuilds W' from (W, D) when ``keep_weight`` is False: 2·m·n·r flops, against
    the 2·N·m·n of the matmuls themselves. torch.utils.checkpoint would recompute the whole forward instead,
    including its N×m×n product.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, block, keep_weight):
        merged = bat_weight(weight, block)
        ctx.save_for_backward(x, weight, block, merged if keep_weight else None)
        return F.linear(x, merged, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, block, merged = ctx.saved_tensors
        need_x, need_weight, need_bias, need_block, _ = ctx.needs_input_grad
        grad_x = grad_weight = grad_bias = grad_block = None
        if need_x:
            grad_x = grad_out @ (merged if merged is not None else bat_weight(weight, block))
        if need_weight or need_block:
            grad_merged = grad_out.t() @ x  # G = δᵀX (m, n), the weight gradient full fine-tuning computes
            r = block.shape[-1]
            if need_block:
                grad_block = bat_block_grad(weight, grad_merged, r)
            if need_weight:  # ∂L/∂W_ij = G_ij·(I + D_i)ᵀ (only if someone unfroze W0)
                rows = grad_merged.reshape(block.shape[0], -1, r)
                grad_weight = torch.baddbmm(rows, rows, block.transpose(1, 2)).reshape(weight.shape)
        if need_bias:
            grad_bias = grad_out.sum(dim=0)
        return grad_x, grad_weight, grad_bias, grad_block, None


class BatLinear(AdapterLayer):
    """``nn.Linear`` with W' = W·(I + D_i) + D_i per r×r block (D: (out/r, r, r), zero init)."""

    adapter_parameter_names = ("bone_block",)

    def __init__(self, base_layer: nn.Linear, r: int, recompute_weight: bool = True, module_name: str = "base_layer"):
        check_positive_int("r", r)
        check_layer_fits(module_name, base_layer, r, "bat")
        super().__init__(base_layer)
        weight = base_layer.weight
        self.r = r
        self.recompute_weight = check_bool("recompute_weight", recompute_weight)
        self.bone_block = nn.Parameter(
            torch.zeros(base_layer.out_features // r, r, r, device=weight.device, dtype=weight.dtype)
        )

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.base_layer.weight
        x2 = x.reshape(-1, x.shape[-1]).to(weight.dtype)
        # Under autocast the hand-written backward would meet mixed dtypes: run in the weight's dtype.
        autocast = torch.is_autocast_enabled(x.device.type)
        with torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext():
            result = _BatLinearFunction.apply(x2, weight, self.base_layer.bias, self.bone_block, not self.recompute_weight)
        return result.to(x.dtype).reshape(*x.shape[:-1], result.shape[-1])

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        return bat_weight(weight.to(dtype), self.bone_block.to(dtype))

    def unmerged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype  # the inverse in fp32 at least
        return bat_unmerged_weight(weight.to(dtype), self.bone_block.to(dtype))

    def delta_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight.to(self.compute_dtype)
        return self.merged_weight(weight) - weight

    def extra_repr(self) -> str:
        return f"r={self.r}, recompute_weight={self.recompute_weight}, " + super().extra_repr()


# ---------------------------------------------------------------------------------------------------
# Model-level helpers
# ---------------------------------------------------------------------------------------------------
def bone_to_lora(model: nn.Module) -> nn.Module:
    """Replace every Bone layer by the LoRA layer with the same update (A = tiled identity, B = Dᵀ, s = 1).

    Exact (no SVD): the outputs do not change. The model then carries a ``LoRAConfig`` (alpha = r, so
    s = alpha/r = 1), so ``save_adapter`` / ``export_peft`` write a plain LoRA adapter. A is trainable
    afterwards, as in any LoRA. Bat's update depends on W0 and is not low rank: it has no exact conversion.
    """
    from ..adapters import adapter_layers, get_config, install
    from .lora import LoRAConfig

    config = get_config(model)
    if not isinstance(config, BoneConfig) or config.variant != "bone":
        raise ValueError(f"bone_to_lora needs a model with Bone adapters (variant 'bone'), got {config!r}")
    layers = adapter_layers(model)
    if any(layer.merged for layer in layers.values()):
        raise ValueError("cannot convert merged Bone layers; unmerge(model) first")
    lora_config = LoRAConfig(r=config.r, alpha=float(config.r), target_modules=config.target_modules,
                             dropout=config.dropout, modules_to_save=config.modules_to_save)
    planned = {name: layer.to_lora() for name, layer in layers.items()}  # built first: nothing changes on failure
    return install(model, lora_config, planned)


def bone_parameter_count(out_features: int, r: int) -> int:
    """Trainable numbers of one Bone or Bat layer: r·out (LoRA at rank r: r·(in + out))."""
    return r * out_features


def bone_rank_matching_lora(model: nn.Module, target_modules, lora_r: int, variant: str = "bone") -> int:
    """Bone/Bat r whose trainable count on the targeted layers is closest to LoRA at ``lora_r``.

    The rule: LoRA trains lora_r·Σ(in + out) numbers, Bone/Bat r·Σ out, so r ≈ lora_r·Σ(in + out)/Σ out
    (2·lora_r for square layers). Ties go to the smaller r. Bone takes any r <= min in_features (padding
    handles the rest); Bat only r dividing every in and out. Adapters' head modules are not counted.
    """
    check_positive_int("lora_r", lora_r)
    if variant not in BONE_VARIANTS:
        raise ValueError(f"variant must be one of {BONE_VARIANTS}, got {variant!r}")
    targets = normalize_module_names("target_modules", target_modules, allow_empty=False)
    shapes = [(module.in_features, module.out_features) for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and module_matches(targets, name)]
    if not shapes:
        raise ValueError(f"target_modules={target_modules!r} matched no nn.Linear module")
    lora_total = lora_r * sum(n + m for n, m in shapes)
    out_total = sum(m for _, m in shapes)
    candidates = [r for r in range(1, min(n for n, _ in shapes) + 1)
                  if variant == "bone" or all(n % r == 0 and m % r == 0 for n, m in shapes)]
    return min(candidates, key=lambda r: (abs(r * out_total - lora_total), r))


# ---------------------------------------------------------------------------------------------------
# The lab's recipes for Bone and Bat, their PEFT export and their registration (lowrank_lab.registry).
# ---------------------------------------------------------------------------------------------------
def bone_config(model_name, task, options, variant: str) -> BoneConfig:
    """Bone/Bat on the model's default target modules; the task's new head trains whole."""
    from lowrank_lab.assets import model_spec

    spec = model_spec(model_name)
    return BoneConfig(r=options.r, variant=variant, target_modules=tuple(options.target_modules or spec.default_target_modules),
                      dropout=options.dropout, modules_to_save=tuple(spec.head_modules.get(task.kind, ())))


def prepare_bone(model, model_name, task, options):
    """Bone (Kang 2024, DiSHA/MiSS): every r-column shard shares D^T (D: r x out). ``options.r`` is Bone's own r:
    for LoRA rank r_L's parameter count use :func:`bone_rank_matching_lora` (2 r_L on square layers)."""
    from lowrank_lab.adapters import inject

    return inject(model, bone_config(model_name, task, options, "bone"))


def prepare_bat(model, model_name, task, options):
    """Bat (Kang 2024): W'_ij = W_ij (I + D_i) + D_i per r x r block; r must divide every in and out."""
    from lowrank_lab.adapters import inject

    return inject(model, bone_config(model_name, task, options, "bat"))


def miss_to_peft(model: nn.Module, config: BoneConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    """Bone -> PEFT ``MissConfig(init_weights=True)``, Bat -> ``init_weights="bat"``; same tensor layout."""
    from lowrank_lab.adapters import adapter_layers

    peft_config = {
        "peft_type": "MISS",
        "r": config.r,
        "miss_dropout": config.dropout,
        "mini_r": 1,
        "init_weights": True if config.variant == "bone" else "bat",
        "target_modules": config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules),
        "bias": "none",
    }
    tensors = {f"base_model.model.{name}.miss_block": layer.bone_block for name, layer in adapter_layers(model).items()}
    return peft_config, tensors


BONE_CLAIMS = (
    {"paper": "Bone (arXiv 2409.15371)", "claim": "Bone beats LoRA at a similar parameter count",
     "paper_evidence": "GSM8K Llama-2-7B: 49.36 (87.0M) vs LoRA 38.97 (89.9M)", "baseline": "lora", "kind": "better",
     "sesoi": 0.01},
    # Judged from benchmarks/step_time.py (methods alternated in one process), never from training runs that
    # shared the cores; sesoi: 5% of LoRA's step time.
    {"paper": "Bone (arXiv 2409.15371)", "claim": "Bone computes faster than LoRA",
     "paper_evidence": "README: 'faster computation' (PEFT bench: about the same time)", "baseline": "lora",
     "kind": "faster", "sesoi": 0.05},
)
BAT_CLAIMS = (
    {"paper": "Bone/Bat (arXiv 2409.15371)", "claim": "the weight guide (Bat) beats plain Bone",
     "paper_evidence": "PEFT MetaMathQA bench, Llama-3.2-3B: 50.42 vs 48.67", "baseline": "bone", "kind": "better",
     "sesoi": 0.01},
)


def _register() -> None:
    from lowrank_lab.registry import register_method

    # LoRA's learning rates. Probe (MiniLM sentiment, cpu preset: 128 steps, seed 0, r=16 on query/value = LoRA r=8's
    # parameter count; validation accuracy on 1,000): Bone 3e-4 -> 0.664, 1e-3 -> 0.750, 2e-3 -> 0.750 (higher val
    # loss); Bat 1e-3 -> 0.756, 2e-3 -> 0.769 (one seed: within noise). 1e-3 is within ~1 point of the best for both:
    # all three share a rate. causal_lm: LoRA's 2e-4, not probed (SmolLM2 costs ~8 s/step on 2 cores).
    rates = {"classification": 1e-3, "causal_lm": 2e-4}
    # BoneConfig.method is its variant: files say "bone" or "bat", both read by BoneConfig.
    register_method("bone", prepare_bone, style="layer", paper="arXiv 2409.15371", lr=rates, config_class=BoneConfig,
                    peft_exporter=miss_to_peft, budget="search_r", order=7, claims=BONE_CLAIMS, color="C6")
    register_method("bat", prepare_bat, style="layer", paper="arXiv 2409.15371", lr=rates, config_class=BoneConfig,
                    peft_exporter=miss_to_peft, budget="search_r", order=8, claims=BAT_CLAIMS, color="C7")


_register()
