"""LoRA (Hu et al. 2021, arXiv 2106.09685) and rsLoRA (Kalajdzievski 2023, arXiv 2312.03732).

A frozen linear layer y = W0 x gets a low-rank update:

    y = W0 x + s · B (A · dropout(x)),     A: (r, in),  B: (out, r),  ΔW = s · B · A

with s = α / r (LoRA) or s = α / √r (rsLoRA, which keeps the update's scale stable as r grows).
A starts Kaiming-uniform (the reference code's choice, U(-1/√in, 1/√in)) and B at zero, so ΔW = 0 at
init and only B receives a gradient on the first step (∂L/∂A = s·Bᵀ·G = 0 while B = 0).
Shapes and names match HF PEFT (``lora_A``: (r, in), ``lora_B``: (out, r)) so adapters export to it.
"""

from __future__ import annotations

import math
import warnings
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
    check_positive_float,
    check_positive_int,
    check_rank_pattern,
    normalize_module_names,
    pattern_value,
)

LORA_INITS = ("kaiming", "gaussian")


@dataclass
class LoRAConfig(AdapterConfig):
    """Configuration of LoRA / rsLoRA adapters; validated on construction."""

    r: int = field(default=8, metadata={"help": "rank of the update (A: r×in, B: out×r)"})
    alpha: float = field(default=8.0, metadata={"help": "scale numerator: s = alpha/r (alpha/sqrt(r) with rsLoRA)"})
    target_modules: tuple[str, ...] | str = field(
        default=("q_proj", "v_proj"),
        metadata={"help": "module-name suffixes to adapt, or one regex matched against the full module path"},
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch input only"})
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised scale alpha/sqrt(r)"})
    rank_pattern: dict[str, int] = field(
        default_factory=dict, metadata={"help": "per-module rank overrides {module name or suffix: r}"}
    )
    alpha_pattern: dict[str, float] = field(
        default_factory=dict, metadata={"help": "per-module alpha overrides {module name or suffix: alpha} (PEFT's)"}
    )
    modules_to_save: tuple[str, ...] = field(
        default=(), metadata={"help": "modules kept fully trainable and saved with the adapter (e.g. a new head)"}
    )
    init: str = field(default="kaiming", metadata={"help": "A's init: 'kaiming' (reference code) or 'gaussian'"})

    method: ClassVar[str] = "lora"
    # dropout and A's init change how training goes, not what given weights compute
    training_only_fields: ClassVar[tuple[str, ...]] = ("dropout", "init")

    def __post_init__(self):
        check_positive_int("r", self.r)
        self.alpha = check_positive_float("alpha", self.alpha)
        self.target_modules = normalize_module_names("target_modules", self.target_modules, allow_empty=False)
        self.dropout = check_fraction("dropout", self.dropout)
        check_bool("use_rslora", self.use_rslora)
        self.rank_pattern = check_rank_pattern("rank_pattern", self.rank_pattern)
        if not isinstance(self.alpha_pattern, dict):
            raise ValueError(f"alpha_pattern must be a dict of module name -> alpha, got {self.alpha_pattern!r}")
        self.alpha_pattern = {key: check_positive_float(f"alpha_pattern[{key!r}]", value)
                              for key, value in sorted(self.alpha_pattern.items())}
        modules = normalize_module_names("modules_to_save", self.modules_to_save, allow_empty=True)
        if isinstance(modules, str):
            raise ValueError(f"modules_to_save must be a list of module names, got {self.modules_to_save!r}")
        self.modules_to_save = modules
        if self.init not in LORA_INITS:
            raise ValueError(f"init must be one of {LORA_INITS}, got {self.init!r}")

    def rank_for(self, module_name: str) -> int:
        return pattern_value(self.rank_pattern, module_name, self.r)

    def alpha_for(self, module_name: str) -> float:
        return pattern_value(self.alpha_pattern, module_name, self.alpha)

    def scaling_for(self, rank: int, module_name: str | None = None) -> float:
        alpha = self.alpha if module_name is None else self.alpha_for(module_name)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank

    def create_layer(self, module_name: str, base_layer: nn.Linear) -> "LoRALinear":
        rank = self.rank_for(module_name)
        full = min(base_layer.in_features, base_layer.out_features)
        if rank > full:  # allowed (it still trains), but B·A cannot exceed rank min(in, out): say so
            warnings.warn(f"r={rank} exceeds min(in, out)={full} of module {module_name!r} "
                          f"(Linear in={base_layer.in_features}, out={base_layer.out_features}): the update is no "
                          f"longer low rank and costs more than a dense ΔW", stacklevel=3)
        return LoRALinear(base_layer, rank, self.scaling_for(rank, module_name), self.dropout, self.init)


class LoRALinear(AdapterLayer):
    """``nn.Linear`` + s·B·A. The forward never forms ΔW: it costs two thin matmuls, (N×in)(in×r), (N×r)(r×out)."""

    adapter_parameter_names = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Linear, r: int, scaling: float, dropout: float = 0.0, init: str = "kaiming"):
        super().__init__(base_layer)
        weight = base_layer.weight
        self.r = r
        self.scaling = scaling
        self.lora_A = nn.Parameter(torch.empty(r, base_layer.in_features, device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, r, device=weight.device, dtype=weight.dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "kaiming") -> None:
        """A random, B = 0: the adapted model starts exactly at the base model."""
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # = U(-1/√in, 1/√in)
        else:
            nn.init.normal_(self.lora_A, std=1.0 / self.r)
        nn.init.zeros_(self.lora_B)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        # Work on 2-D (N×in) rows: a 2-D Linear returns a fresh tensor, not a view. An in-place op on a view
        # (as a 3-D Linear's output is) makes autograd add CopySlices + AsStrided nodes, whose backward
        # copies the whole (N×out) gradient several times: slower than the unfused sum.
        x2 = x.reshape(-1, x.shape[-1])
        result = self.base_layer(x2)
        h = F.linear(self.dropout(x2), self.lora_A)
        if result.dtype == h.dtype == self.lora_B.dtype and not result._is_view():
            # Fused: result += s · h Bᵀ in one addmm, writing into the base output instead of allocating
            # two more (N×out) tensors for the product and the scaled product. Linear's backward does not
            # need its output, so updating it in place is safe for autograd.
            result.addmm_(h, self.lora_B.t(), alpha=self.scaling)
        else:
            result = result + F.linear(h, self.lora_B) * self.scaling  # mixed dtypes (autocast): plain path
        return result.reshape(*x.shape[:-1], result.shape[-1])

    def delta_weight(self) -> torch.Tensor:
        dtype = self.compute_dtype
        return (self.lora_B.to(dtype) @ self.lora_A.to(dtype)) * self.scaling

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, " + super().extra_repr()


# ---------------------------------------------------------------------------------------------------
# The lab's recipes for this file's methods, and their registration (lowrank_lab.registry).
# ---------------------------------------------------------------------------------------------------
def lora_config(model_name, task, options, use_rslora: bool = False) -> LoRAConfig:
    """LoRA's config for a model of the lab: ``options`` (rank, alpha, targets, dropout) on the model's default
    target modules, and the task's new head trained whole (``modules_to_save``): a random head must learn."""
    from lowrank_lab.assets import model_spec

    spec = model_spec(model_name)
    return LoRAConfig(
        r=options.r,
        alpha=options.lora_alpha,
        target_modules=tuple(options.target_modules or spec.default_target_modules),
        dropout=options.dropout,
        use_rslora=use_rslora,
        modules_to_save=tuple(spec.head_modules.get(task.kind, ())),
    )


def prepare_lora(model, model_name, task, options):
    """LoRA (Hu et al. 2021): W0 frozen, W0 + (alpha/r) B A on the target modules; the head trains too."""
    from lowrank_lab.adapters import inject

    return inject(model, lora_config(model_name, task, options, use_rslora=False))


def prepare_rslora(model, model_name, task, options):
    """rsLoRA (Kalajdzievski 2023): LoRA with scaling alpha/sqrt(r), stable as r grows."""
    from lowrank_lab.adapters import inject

    return inject(model, lora_config(model_name, task, options, use_rslora=True))


def lora_to_peft(model: nn.Module, config: LoRAConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    """Our LoRA/rsLoRA adapter as HF PEFT's ``LoraConfig`` and its tensor names (``io.export_peft``)."""
    from lowrank_lab.adapters import adapter_layers

    layers = adapter_layers(model)
    peft_config = {
        "peft_type": "LORA",
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "use_rslora": config.use_rslora,
        "target_modules": config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules),
        # per-module ranks spelled out by full path, so PEFT's pattern lookup cannot pick a wrong key
        "rank_pattern": {name: layer.r for name, layer in layers.items() if layer.r != config.r},
        # PEFT's scale is alpha_pattern.get(path, lora_alpha) / r (or / sqrt(r)): each layer's own alpha back
        "alpha_pattern": {name: alpha for name, layer in layers.items()
                          if (alpha := layer.scaling * (math.sqrt(layer.r) if config.use_rslora else layer.r))
                          != config.alpha},
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
    }
    tensors = {}
    for name, layer in layers.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A
        tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B
    return peft_config, tensors


# Each claim is judged in the reproduction table at its smallest effect size of interest (sesoi, fixed before the
# studies ran: results/PREREGISTRATION.md): one accuracy point.
LORA_CLAIMS = (
    {"paper": "LoRA (arXiv 2106.09685)", "claim": "LoRA r=8 matches full fine-tuning with a tiny fraction of the parameters",
     "paper_evidence": "GLUE/GPT-3: on par with or better than full FT", "baseline": "full", "kind": "matches",
     "tolerance": 0.02, "sesoi": 0.01},
    {"paper": "Biderman et al. (arXiv 2405.09673)", "claim": "LoRA forgets less than full fine-tuning",
     "paper_evidence": "abstract: LoRA underperforms full FT on the target domain but better maintains the base "
                       "model's performance on other tasks", "baseline": "full", "kind": "forgets_less", "sesoi": 0.01},
    {"paper": "Shuttleworth et al. (arXiv 2410.21228)",
     "claim": "LoRA's weights have intruder dimensions that full fine-tuning's lack",
     "paper_evidence": "abstract: LoRA-trained matrices acquire new high-ranking singular vectors (intruder "
                       "dimensions) that full fine-tuning's do not", "baseline": "full", "kind": "more_intruders",
     "sesoi": 1.0},
)
RSLORA_CLAIMS = (
    {"paper": "rsLoRA (arXiv 2312.03732)", "claim": "alpha/sqrt(r) scaling learns better than alpha/r",
     "paper_evidence": "GSM8K Llama-2-7B r=8 (LoRA-Pro's table): 45.62 vs 42.08", "baseline": "lora", "kind": "better",
     "sesoi": 0.01},
)


def _register() -> None:
    from lowrank_lab.registry import register_method

    # Learning rates: presets.LEARNING_RATES holds LoRA's and rsLoRA's (the prior every adapter falls back to).
    register_method("lora", prepare_lora, style="layer", paper="arXiv 2106.09685", config_class=LoRAConfig,
                    peft_exporter=lora_to_peft, budget="same_r", order=1, claims=LORA_CLAIMS, color="C1")
    register_method("rslora", prepare_rslora, style="layer", paper="arXiv 2312.03732", budget="same_r", order=2,
                    claims=RSLORA_CLAIMS, color="C2")


_register()
