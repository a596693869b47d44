"""lowrank_lab: low-rank fine-tuning from scratch, checked against outside judges.

Layer-style adapters (``inject`` a config into a model):  LoRA / rsLoRA.
Optimizer-style methods (a torch optimizer over an injected model): LoRA-Pro.
Everything a lesson needs is importable from here: ``import lowrank_lab as lrl``.
"""

import os

# OpenMP workers that spin while waiting make every step several times slower as soon as another process
# (a notebook kernel, a browser, a second run) shares the cores: measured 9x on 2 cores. Passive waiting
# costs nothing when the machine is idle. It must be set before torch loads its OpenMP runtime, so here,
# ahead of every import of torch that goes through lowrank_lab (the CLI, compare's child runs, benchmarks);
# a value the user set wins, and a torch imported before lowrank_lab keeps its own setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .adapters import (  # noqa: E402  (after the OpenMP setting above)
    NoMatchingModulesError,
    adapter_layers,
    adapter_state_dict,
    adapters_disabled,
    count_parameters,
    inject,
    merge,
    merge_and_unload,
    unload,
    unmerge,
)
from .io import export_peft, load_adapter, save_adapter
from .layers import AdapterConfig, AdapterLayer, LoRAConfig, LoRALinear
from .layers.bone import BatLinear, BoneConfig, BoneLinear, bone_to_lora
from .methods.gelora import IDEstimate, gelora_ranks, intrinsic_dimension, intrinsic_dimension_interval
from .methods.lora_pro import LoRAProAdamW, LoRAProSGD, adjusted_gradients, equivalent_gradient, solve_sylvester
from .methods.xgblora import XGBLoRA
from . import checks, claims
from .plotting import plot_curves
from .train import TrainConfig, evaluate, train
from .runtime import SCALES, get_device, get_scale, print_env, runs_dir, runs_label, seed_everything, widgets_enabled

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig",
    "AdapterLayer",
    "BatLinear",
    "BoneConfig",
    "BoneLinear",
    "bone_to_lora",
    "IDEstimate",
    "gelora_ranks",
    "intrinsic_dimension",
    "intrinsic_dimension_interval",
    "LoRAConfig",
    "LoRALinear",
    "LoRAProAdamW",
    "LoRAProSGD",
    "NoMatchingModulesError",
    "SCALES",
    "TrainConfig",
    "widgets_enabled",
    "XGBLoRA",
    "adapter_layers",
    "checks",
    "claims",
    "adapter_state_dict",
    "adapters_disabled",
    "adjusted_gradients",
    "equivalent_gradient",
    "count_parameters",
    "evaluate",
    "export_peft",
    "get_device",
    "get_scale",
    "inject",
    "load_adapter",
    "merge",
    "merge_and_unload",
    "plot_curves",
    "print_env",
    "runs_dir",
    "runs_label",
    "save_adapter",
    "seed_everything",
    "solve_sylvester",
    "train",
    "unload",
    "unmerge",
]
