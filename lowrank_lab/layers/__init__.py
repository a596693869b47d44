"""Layer-style adapters: a frozen nn.Linear plus a small trainable update (LoRA/rsLoRA; Bone/Bat later)."""

from .base import AdapterConfig, AdapterLayer
from .lora import LoRAConfig, LoRALinear

# method name (as written in adapter_config.json) -> config class
CONFIG_CLASSES: dict[str, type[AdapterConfig]] = {LoRAConfig.method: LoRAConfig}

__all__ = ["AdapterConfig", "AdapterLayer", "LoRAConfig", "LoRALinear", "CONFIG_CLASSES"]
