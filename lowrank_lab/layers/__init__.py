"""Layer-style adapters: a frozen nn.Linear plus a small trainable update (LoRA/rsLoRA; Bone/Bat later)."""

from .base import AdapterConfig, AdapterLayer
from .lora import LoRAConfig, LoRALinear
from .bone import BatLinear, BoneConfig, BoneLinear, bone_to_lora

# method name (as written in adapter_config.json) -> config class
CONFIG_CLASSES: dict[str, type[AdapterConfig]] = {LoRAConfig.method: LoRAConfig}
CONFIG_CLASSES.update(bone=BoneConfig, bat=BoneConfig)  # BoneConfig.method is its variant

__all__ = ["AdapterConfig", "AdapterLayer", "LoRAConfig", "LoRALinear", "CONFIG_CLASSES"]
__all__ += ["BatLinear", "BoneConfig", "BoneLinear", "bone_to_lora"]
