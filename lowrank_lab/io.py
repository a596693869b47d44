"""Saving and loading adapters safely: safetensors for tensors, JSON for the config, never pickle.

Two formats:

* ours (``save_adapter`` / ``load_adapter``): ``adapter_config.json`` (method, config, lowrank_lab version,
  per-module shapes) and ``adapter_model.safetensors`` keyed by module path (``...query.lora_A``);
* HF PEFT's (``export_peft``): loadable with ``peft.PeftModel.from_pretrained(base_model, directory)``.

``load_adapter`` checks the whole file (keys, shapes, finite values) against the model *before* changing
it, so a corrupt or mismatched file leaves the model as it was.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .adapters import adapter_layers, adapter_state_dict, get_config, install, plan_injection
from .layers import CONFIG_CLASSES
from .layers.base import AdapterConfig, AdapterLayer, module_matches

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def _version() -> str:
    try:
        return metadata.version("lowrank-lab")
    except metadata.PackageNotFoundError:
        return "unknown"


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    # safetensors refuses shared or strided storage: give each tensor its own contiguous copy.
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write the model's adapter (and ``modules_to_save``) to ``directory``; returns the directory."""
    config = get_config(model)
    if config is None or not adapter_layers(model):
        raise ValueError("model has no adapters to save; call inject(model, config) first")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = adapter_state_dict(model)
    _write_json(
        directory / CONFIG_FILE,
        {
            "method": config.method,
            "config": config.to_dict(),
            "lowrank_lab_version": _version(),
            "shapes": {k: list(v.shape) for k, v in state.items()},
        },
    )
    _save_tensors(state, directory / WEIGHTS_FILE)
    return directory


def read_adapter(directory: str | Path) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """Parse and validate an adapter folder without touching any model."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"adapter file missing: {path}")
    try:
        meta = json.loads(config_path.read_text())
        method, config_dict = meta["method"], meta["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"corrupt adapter config {config_path}: {exc}") from None
    if method not in CONFIG_CLASSES:
        raise ValueError(f"adapter method must be one of {sorted(CONFIG_CLASSES)}, got {method!r} in {config_path}")
    config = CONFIG_CLASSES[method].from_dict(config_dict)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"corrupt adapter weights {weights_path}: {exc}") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"adapter weights {weights_path} contain non-finite values in {bad[:5]}")
    return config, tensors


def _expected_parameters(model: nn.Module, config: AdapterConfig, planned: dict[str, AdapterLayer]) -> dict[str, torch.Tensor]:
    expected = {f"{name}.{p}": t for name, layer in planned.items() for p, t in layer.adapter_parameters().items()}
    for name, module in model.named_modules():
        if name and module_matches(config.modules_to_save, name):
            expected.update({f"{name}.{p}": t for p, t in module.named_parameters()})
    return expected


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load an adapter saved by :func:`save_adapter` into ``model``.

    A fresh base model gets the adapter injected; a model that already carries the same kind of adapter
    gets its weights replaced. Keys, shapes and values are all checked first: on any mismatch the error
    names the offending keys and the model is unchanged.
    """
    config, tensors = read_adapter(directory)
    existing = get_config(model)
    if existing is not None:
        if type(existing) is not type(config):
            raise ValueError(f"model carries a {existing.method!r} adapter but the file holds {config.method!r}")
        planned = None
        expected = adapter_state_dict(model)
    else:
        planned = plan_injection(model, config)
        expected = _expected_parameters(model, config, planned)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"adapter does not fit this model: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(t.shape)}" for k, t in expected.items() if tensors[k].shape != t.shape]
    if wrong:
        raise ValueError(f"adapter shapes do not match the model: {wrong[:5]}")
    if planned is not None:
        install(model, config, planned)
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(tensors[key].to(dtype=target.dtype, device=target.device))
    return model


# ---------------------------------------------------------------------------------------------------
# HF PEFT export. Each method registers how its config and tensor names map to PEFT's.
# ---------------------------------------------------------------------------------------------------
PEFT_EXPORTERS: dict[str, Callable[[nn.Module, AdapterConfig], tuple[dict, dict[str, torch.Tensor]]]] = {}


def _peft_task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if name.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    return None


def _lora_to_peft(model: nn.Module, config: AdapterConfig) -> tuple[dict, dict[str, torch.Tensor]]:
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
        "alpha_pattern": {},
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
    }
    tensors = {}
    for name, layer in layers.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A
        tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B
    return peft_config, tensors


PEFT_EXPORTERS["lora"] = _lora_to_peft


def _miss_to_peft(model: nn.Module, config: AdapterConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    """Bone -> PEFT ``MissConfig(init_weights=True)``, Bat -> ``init_weights="bat"``; same tensor layout."""
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


PEFT_EXPORTERS["bone"] = PEFT_EXPORTERS["bat"] = _miss_to_peft


def export_peft(model: nn.Module, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the adapter in HF PEFT's format: ``PeftModel.from_pretrained(base, directory)`` loads it."""
    config = get_config(model)
    if config is None:
        raise ValueError("model has no adapters to export; call inject(model, config) first")
    if config.method not in PEFT_EXPORTERS:
        raise ValueError(f"no PEFT export for method {config.method!r}; exportable: {sorted(PEFT_EXPORTERS)}")
    peft_config, tensors = PEFT_EXPORTERS[config.method](model, config)
    modules_to_save = list(config.modules_to_save)
    for name, module in model.named_modules():
        if name and module_matches(config.modules_to_save, name):
            tensors.update({f"base_model.model.{name}.{p}": t for p, t in module.named_parameters()})
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "name_or_path", None) or None
    peft_config.update(
        modules_to_save=modules_to_save or None,
        task_type=_peft_task_type(model),
        base_model_name_or_path=base_model_name_or_path,
        inference_mode=True,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_json(directory / CONFIG_FILE, peft_config)
    _save_tensors(tensors, directory / WEIGHTS_FILE)
    return directory
