"""DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv 2402.09353).

DoRA splits each adapted weight into a magnitude and a direction, trains the magnitude directly and the direction
through a LoRA update:

    W' = m ⊙ (W0 + s·B·A) / ‖W0 + s·B·A‖,     A: (r, in),  B: (out, r),  m: (out,)

The norm is taken per output feature. The paper writes W as d×k (k outputs) and ‖·‖_c as "the vector-wise norm
of a matrix across each column", with m ∈ R^{1×k}; in PyTorch's (out, in) layout that column is a ROW:
``torch.linalg.norm(W, dim=1)``, one magnitude per output feature. This is HF PEFT's convention
(``DoraLinearLayer.get_weight_norm``), and PEFT's ``lora_magnitude_vector`` has shape (out,).

Initialisation: A, B, s exactly as LoRA (A Kaiming-uniform, B = 0, s = α/r or α/√r); m = ‖W0 + s·B·A‖ (= ‖W0‖
while B = 0), so the layer starts as the base layer. PEFT computes m the same way, at the layer's creation.

Where this layer follows PEFT (0.21, ``peft/tuners/lora/dora.py`` and ``variants.DoraLinearVariant``) rather than
anything the paper pins down:

* **The norm is detached.** Paper §4.3 suggests treating ‖V + ΔV‖_c "as a constant, thereby detaching it from the
  gradient graph" to save training memory (the norm still reflects the current ΔV; it just gets no gradient).
  PEFT always does so; so do we (the norm is computed under ``no_grad``). Hence ∂L/∂A and ∂L/∂B flow only
  through the numerator s·B·A x, and ∂L/∂m = Σ_tokens G ⊙ (W0 x + s·B·A x) / ‖W0 + s·B·A‖.
* **The forward never forms W'.** It adds a correction to the frozen layer's output:
  ``y = base(x) + (m/‖·‖ − 1) ⊙ W0 x̃ + (m/‖·‖) ⊙ s·B·A x̃`` with ``x̃ = dropout(x)``. Without dropout
  (p = 0 or eval mode) x̃ = x and W0 x is the base output minus its bias (no second matmul), so
  y = (m/‖·‖) ⊙ (W0 + s·B·A) x + b exactly as the formula above. With dropout in training mode only the
  correction sees the dropped-out input (the base path W0 x + b keeps the full x): PEFT's choice, matched here.
* Merging writes W' = (m/‖W0 + s·B·A‖) ⊙ (W0 + s·B·A) into the weight, the norm taken from the unmerged W0.
  Unmerging needs that per-row factor (W0 is gone), so the merge saves it (``merge_state``, kept in
  ``saved_merge_state``) and the unmerge computes W0 = W'/factor − s·B·A. PEFT saves the norm and divides by the
  current m; saving the factor also survives a change of m while merged.
* Precision: in fp32/fp64 the norm is computed in the weight's dtype, as PEFT does. For bf16/fp16 weights (or under
  autocast) we form W0 + s·B·A and its norm in fp32 (``compute_dtype``); PEFT uses the input's dtype there.

A row whose W0 + s·B·A is all zero has no direction (0/0): such rows in W0 are refused when the layer is built.
The exported PEFT adapter is ``LoraConfig(use_dora=True)`` (``dora_to_peft``).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import NonFiniteError, check_fraction, check_positive_float, check_positive_int
from .lora import LoRAConfig, LoRALinear


def _rows(mask: torch.Tensor, limit: int = 8) -> str:
    rows = mask.nonzero().flatten().tolist()
    return f"{rows[:limit]}{' ...' if len(rows) > limit else ''} ({len(rows)} of {mask.numel()})"


@dataclass
class DoRAConfig(LoRAConfig):
    """DoRA's configuration: LoRA's fields (rank, alpha, rsLoRA, rank/alpha patterns, targets, dropout, head,
    A's init), validated the same way; the magnitude has no knob (it starts at ‖W0‖ per output feature)."""

    method: ClassVar[str] = "dora"

    def create_layer(self, module_name: str, base_layer: nn.Linear) -> "DoRALinear":
        rank = self.rank_for(module_name)
        full = min(base_layer.in_features, base_layer.out_features)
        if rank > full:  # as LoRA: allowed, but B·A cannot exceed rank min(in, out)
            warnings.warn(f"r={rank} exceeds min(in, out)={full} of module {module_name!r} "
                          f"(Linear in={base_layer.in_features}, out={base_layer.out_features}): the update is no "
                          f"longer low rank and costs more than a dense ΔW", stacklevel=3)
        return DoRALinear(base_layer, rank, self.scaling_for(rank, module_name), self.dropout, self.init,
                          module_name=module_name)


class DoRALinear(LoRALinear):
    """``nn.Linear`` with W' = m ⊙ (W0 + s·B·A) / ‖W0 + s·B·A‖ (row norms, detached). LoRA's A, B, s, dropout and
    init, plus ``lora_magnitude`` (out,). ``delta_weight()`` is the whole update W' − W0; ``lora_delta_weight()``
    is LoRA's part s·B·A."""

    adapter_parameter_names = ("lora_A", "lora_B", "lora_magnitude")

    def __init__(self, base_layer: nn.Linear, r: int, scaling: float, dropout: float = 0.0, init: str = "kaiming",
                 module_name: str = "base_layer"):
        check_positive_int("r", r)
        check_positive_float("scaling", scaling)
        check_fraction("dropout", dropout)
        super().__init__(base_layer, r, scaling, dropout, init)
        norm = self.weight_norm()
        if not norm.is_meta and not (norm > 0).all():  # 0 (or NaN) rows (meta tensors: shapes only, nothing to check): the direction W0/‖W0‖ is undefined there
            raise ValueError(f"module {module_name!r}: rows {_rows(~(norm > 0))} of its weight are all zero or not "
                             f"finite; DoRA's direction W/‖W‖ is undefined for them")
        self.lora_magnitude = nn.Parameter(norm.to(base_layer.weight.dtype))

    # --- parameters ------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, init: str = "kaiming") -> None:
        """LoRA's init (A random, B = 0) and m = ‖W0‖: the adapted model starts exactly at the base model."""
        super().reset_parameters(init)
        if "lora_magnitude" in self._parameters:  # not yet during __init__
            self.reset_magnitude()

    @torch.no_grad()
    def reset_magnitude(self) -> None:
        """m = ‖W0 + s·B·A‖ (PEFT's init): the layer then computes plain LoRA's W0 + s·B·A, for any A and B."""
        self.lora_magnitude.copy_(self.weight_norm())

    # --- the function ----------------------------------------------------------------------------
    def _no_autocast(self):
        device_type = self.lora_A.device.type
        if device_type in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(device_type):  # not "meta"
            return torch.autocast(device_type, enabled=False)
        return contextlib.nullcontext()

    @torch.no_grad()
    def weight_norm(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """‖W + s·B·A‖ per output feature (dim=1 of the (out, in) matrix), in ``compute_dtype``, without gradient
        (paper §4.3 / PEFT: a constant for backprop). ``weight`` defaults to the frozen base weight W0."""
        dtype = self.compute_dtype
        weight = self.base_layer.weight if weight is None else weight
        with self._no_autocast():
            return torch.linalg.vector_norm(weight.to(dtype) + self.lora_delta_weight(), dim=1)

    def magnitude_scale(self) -> torch.Tensor:
        """m / ‖W0 + s·B·A‖ (out,): differentiable in m only."""
        return self.lora_magnitude / self.weight_norm()

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        result = self.base_layer(x2)
        scale = self.magnitude_scale()
        x_lora = x2.to(self.lora_A.dtype)  # PEFT casts the adapter's input to A's dtype
        if self.training and not isinstance(self.dropout, nn.Identity):
            # PEFT: only the DoRA correction sees the dropped-out input; W0 x̃ then costs a second matmul
            x_lora = self.dropout(x_lora)
            base = F.linear(x_lora, self.base_layer.weight.to(x_lora.dtype))
        else:
            bias = self.base_layer.bias
            base = result if bias is None else result - bias  # W0 x, without recomputing it
        lora = F.linear(F.linear(x_lora, self.lora_A), self.lora_B)
        out = result + (scale - 1) * base + scale * lora * self.scaling  # PEFT's sum, term for term
        return out.to(result.dtype).reshape(*x.shape[:-1], out.shape[-1])

    # --- merge / unmerge -------------------------------------------------------------------------
    def lora_delta_weight(self) -> torch.Tensor:
        """LoRA's part s·B·A (out, in) in ``compute_dtype``: the update of the direction (the paper's ΔV)."""
        return LoRALinear.delta_weight(self)

    def _merge_factor(self, weight: torch.Tensor) -> torch.Tensor:
        """m / ‖W0 + s·B·A‖ per row in ``compute_dtype``, for the unmerged ``weight``; refuses a non-finite m."""
        magnitude = self.lora_magnitude.detach().to(self.compute_dtype)
        bad = ~torch.isfinite(magnitude)
        if bad.any():
            raise NonFiniteError(f"lora_magnitude has non-finite values in rows {_rows(bad)}: merge would write them "
                                 "into the weight; refusing (weight unchanged)")
        return magnitude / self.weight_norm(weight)

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        return self._merge_factor(weight).unsqueeze(1) * (weight.to(dtype) + self.lora_delta_weight())

    def merge_state(self) -> torch.Tensor:
        """The per-row factor m/‖W0 + s·B·A‖ the merge multiplies by: W0 is overwritten, so unmerge needs it."""
        return self._merge_factor(self.base_layer.weight)

    def unmerged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        factor = self.saved_merge_state
        if factor is None:
            raise ValueError("DoRA's unmerge needs the factor m/‖W0 + s·B·A‖ saved by merge() (saved_merge_state) and "
                             "this layer has none (was it marked merged by hand?); reload the base model instead")
        dtype = self.compute_dtype
        factor = factor.to(dtype)
        zero = factor == 0
        if zero.any():
            raise ValueError(f"lora_magnitude was 0 in rows {_rows(zero)} when merged: the merge wrote zeros there and "
                             "W0 cannot be recovered; refusing to unmerge (weight unchanged). Reload the base model")
        return weight.to(dtype) / factor.unsqueeze(1) - self.lora_delta_weight()

    def delta_weight(self) -> torch.Tensor:
        """The whole update W' − W0 (what merging adds), in ``compute_dtype``; meaningful while unmerged."""
        weight = self.base_layer.weight.to(self.compute_dtype)
        return self.merged_weight(weight) - weight


# ---------------------------------------------------------------------------------------------------
# The lab's recipe and PEFT export (registration is wired by lowrank_lab.registry's owner).
# ---------------------------------------------------------------------------------------------------
def dora_config(model_name, task, options) -> DoRAConfig:
    """LoRA's recipe config (``layers.lora.lora_config``: options' rank, alpha, targets, dropout on the model's
    defaults, the task's new head in ``modules_to_save``) as a DoRAConfig."""
    from .lora import lora_config

    lora = lora_config(model_name, task, options, use_rslora=False)
    return DoRAConfig(**{f.name: getattr(lora, f.name) for f in fields(lora)})


def prepare_dora(model, model_name, task, options):
    """DoRA (Liu et al. 2024): W0 frozen, m ⊙ (W0 + (alpha/r) B A)/‖·‖ on the target modules; the head trains too."""
    from lowrank_lab.adapters import inject

    return inject(model, dora_config(model_name, task, options))


def dora_to_peft(model: nn.Module, config: DoRAConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    """Our DoRA adapter as HF PEFT's ``LoraConfig(use_dora=True)`` and its tensor names (``io.export_peft``):
    LoRA's export plus ``use_dora`` and each layer's ``...<module>.lora_magnitude_vector`` (PEFT's saved key:
    no adapter name, no ``.weight``)."""
    from lowrank_lab.adapters import adapter_layers

    from .lora import lora_to_peft

    peft_config, tensors = lora_to_peft(model, config)
    peft_config["use_dora"] = True
    for name, layer in adapter_layers(model).items():
        tensors[f"base_model.model.{name}.lora_magnitude_vector"] = layer.lora_magnitude
    return peft_config, tensors


# One claim of the paper's, judged in the reproduction table like every other (sesoi: one accuracy point). The
# paper reports DoRA above LoRA at equal rank on commonsense reasoning (LLaMA-7B/13B, abstract); HF PEFT's
# MetaMathQA bench has DoRA r32 46.93 vs LoRA r32 47.84 (one seed, shared rate).
DORA_CLAIMS = (
    {"paper": "DoRA (arXiv 2402.09353)", "claim": "DoRA beats LoRA at the same rank",
     "paper_evidence": "abstract: consistently outperforms LoRA (LLaMA commonsense); PEFT MetaMathQA bench: r32 46.93 vs "
                       "LoRA 47.84 (one seed)", "baseline": "lora", "kind": "better", "sesoi": 0.01},
)


def _register() -> None:
    from lowrank_lab.registry import register_method

    # No learning rate of its own: LoRA's prior, and compare --tune-lr gives it its own like every method.
    register_method("dora", prepare_dora, style="layer", paper="arXiv 2402.09353", config_class=DoRAConfig,
                    peft_exporter=dora_to_peft, budget="same_r",
                    budget_text="rank r, plus one magnitude per adapted output feature", order=9.5,
                    claims=DORA_CLAIMS, color="C9")


_register()
