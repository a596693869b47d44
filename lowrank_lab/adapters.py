"""Putting adapters into a model and taking them out: ``inject``, ``merge``, ``unmerge``, counts.

``inject`` works for every layer-style config (LoRA, rsLoRA, Bone, Bat): it plans all replacements first
(building each adapter layer, which validates shapes), and only when every layer was built does it touch
the model. So a bad config never leaves a half-injected model behind.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
from torch import nn

from .layers.base import AdapterConfig, AdapterLayer, NonFiniteError, module_matches

CONFIG_ATTR = "lowrank_lab_config"


class NoMatchingModulesError(ValueError):
    """``target_modules`` matched no ``nn.Linear`` of the model."""


def linear_module_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """Module path -> adapter layer, in model order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, AdapterLayer)}


def get_config(model: nn.Module) -> AdapterConfig | None:
    return getattr(model, CONFIG_ATTR, None)


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def plan_injection(model: nn.Module, config: AdapterConfig) -> dict[str, AdapterLayer]:
    """Build (without installing) the adapter layer of every targeted Linear; raises before any change."""
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"config must be an adapter config (LoRAConfig, BoneConfig, ...), got {type(config).__name__}")
    if adapter_layers(model):
        raise ValueError("model already has adapters; load a fresh base model (or merge_and_unload first)")
    linear_names = linear_module_names(model)
    targets = [name for name in linear_names if module_matches(config.target_modules, name)]
    if not targets:
        raise NoMatchingModulesError(
            f"target_modules={config.target_modules!r} matched no nn.Linear module. "
            f"The model's Linear modules are: {linear_names}"
        )
    module_names = {name for name, _ in model.named_modules()}
    for name in config.modules_to_save:
        if not any(module_matches((name,), m) for m in module_names if m):
            raise NoMatchingModulesError(f"modules_to_save entry {name!r} matched no module of the model")
    return {name: config.create_layer(name, model.get_submodule(name)) for name in targets}


def inject(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Replace every ``nn.Linear`` matching ``config.target_modules`` by an adapter layer; freeze the rest.

    Trainable afterwards: the adapter parameters and the parameters of ``config.modules_to_save``
    (e.g. a freshly initialised classification head). Returns the same model, modified in place.
    """
    return install(model, config, plan_injection(model, config))  # everything that can fail, fails in the plan


def install(model: nn.Module, config: AdapterConfig, planned: dict[str, AdapterLayer]) -> nn.Module:
    """Second half of :func:`inject`: put the planned layers in and set what trains. Cannot fail."""
    for param in model.parameters():
        param.requires_grad_(False)
    for name, layer in planned.items():
        _set_submodule(model, name, layer)
        for param in layer.adapter_parameters().values():
            param.requires_grad_(True)
    for name, module in model.named_modules():
        if name and module_matches(config.modules_to_save, name):
            for param in module.parameters():
                param.requires_grad_(True)
    setattr(model, CONFIG_ATTR, config)
    return model


def _require_adapters(model: nn.Module) -> dict[str, AdapterLayer]:
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("model has no adapter layers; call inject(model, config) first")
    return layers


def _check_candidates(layers: dict[str, AdapterLayer], action: str) -> None:
    """Compute every layer's new weight (merge or unmerge) without writing; a refusal names the module."""
    for name, layer in layers.items():
        try:
            layer.merge_candidate() if action == "merge" else layer.unmerge_candidate()
        except NonFiniteError as exc:
            raise NonFiniteError(f"{name}: {exc}") from None
        except ValueError as exc:  # e.g. Bat's unmerge with a singular I + D_i
            raise ValueError(f"{name}: {exc}") from None


def _split_by_state(model: nn.Module, merged: bool, action: str) -> dict[str, AdapterLayer]:
    """The layers still to ``action``; warns (naming them) about those already done."""
    layers = _require_adapters(model)
    done = [name for name, layer in layers.items() if layer.merged == merged]
    if done:
        state = "merged" if merged else "unmerged"
        warnings.warn(f"Already {state}: {done}; nothing to do for {'it' if len(done) == 1 else 'them'} ({action})")
    return {name: layer for name, layer in layers.items() if layer.merged != merged}


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Write every adapter's update into its frozen weight (fp32 accumulation).

    All merged weights are computed and checked finite first, then written: a NaN in one adapter leaves
    the whole model untouched, and the error names the module. Merging an already-merged layer warns and
    does nothing (idempotent).
    """
    layers = _split_by_state(model, merged=True, action="merge")
    _check_candidates(layers, "merge")  # raises before anything is written
    for layer in layers.values():
        layer.merge()
    return model


@torch.no_grad()
def unmerge(model: nn.Module) -> nn.Module:
    """Undo :func:`merge`, restoring W0 up to fp32 round-off; idempotent (and warning) like ``merge``."""
    layers = _split_by_state(model, merged=False, action="unmerge")
    _check_candidates(layers, "unmerge")
    for layer in layers.values():
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then put the plain ``nn.Linear`` layers back: a standard model with the update baked in."""
    merge(model)
    for name, layer in adapter_layers(model).items():
        _set_submodule(model, name, layer.base_layer)
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    return model


def unload(model: nn.Module) -> nn.Module:
    """Remove the adapters without merging: the base model is back (unmerging first if needed)."""
    if any(layer.merged for layer in _require_adapters(model).values()):
        unmerge(model)
    for name, layer in adapter_layers(model).items():
        _set_submodule(model, name, layer.base_layer)
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model: inside the block every (unmerged) adapter is bypassed."""
    layers = list(_require_adapters(model).values())
    if any(layer.merged for layer in layers):
        raise ValueError("cannot disable merged adapters; unmerge(model) first")
    previous = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, previous):
            layer.disabled = was


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors are counted once."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter parameters plus the ``modules_to_save`` parameters, keyed by their model paths."""
    config = get_config(model)
    state = {}
    for name, layer in _require_adapters(model).items():
        for pname, param in layer.adapter_parameters().items():
            state[f"{name}.{pname}"] = param.detach()
    if config is not None and config.modules_to_save:
        for name, module in model.named_modules():
            if name and module_matches(config.modules_to_save, name):
                for pname, param in module.named_parameters():
                    state[f"{name}.{pname}"] = param.detach()
    return state
