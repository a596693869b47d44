"""Layer-style adapters: a frozen nn.Linear plus a small trainable update (LoRA/rsLoRA, Bone/Bat, DoRA, ...).

Each module registers its methods with :mod:`lowrank_lab.registry`; ``CONFIG_CLASSES`` (the method name written in
``adapter_config.json`` -> its config class) is the registry's table.
"""

from ..registry import CONFIG_CLASSES
from .base import AdapterConfig, AdapterLayer
from .lora import LoRAConfig, LoRALinear
from .bone import BatLinear, BoneConfig, BoneLinear, bone_to_lora

__all__ = ["AdapterConfig", "AdapterLayer", "LoRAConfig", "LoRALinear", "CONFIG_CLASSES"]
__all__ += ["BatLinear", "BoneConfig", "BoneLinear", "bone_to_lora"]
