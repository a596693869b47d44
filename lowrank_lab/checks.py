"""Invariants shared by the tests and the lessons.

Each check returns a small number (the largest absolute difference it saw) and raises ``AssertionError``
with the numbers when the invariant is violated, so a broken library stops a notebook under nbmake.

Equivalence checks at identity init prove nothing (B = 0 makes every LoRA model equal to its base), so
:func:`check_merge_equivalence` and :func:`check_unmerge_restores` refuse adapters whose update is zero:
call :func:`randomize_adapters` first.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adapters import adapter_layers, inject, merge, unmerge
from .layers.base import AdapterConfig

# Default tolerances by dtype: (output atol, weight atol). fp64 is exact up to round-off; fp32 outputs of a
# deep model accumulate a little more.
_ATOL = {torch.float64: (1e-9, 1e-12), torch.float32: (1e-4, 1e-5)}
_ATOL_LOW = (5e-2, 1e-2)  # fp16 / bf16


def _default_atol(dtype: torch.dtype, which: int) -> float:
    return _ATOL.get(dtype, _ATOL_LOW)[which]


def _as_tensor(out: Any) -> torch.Tensor:
    """The tensor of a forward's result: a tensor, a HF ``ModelOutput`` (its ``logits``) or a tuple's first."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot compare a forward result of type {type(out).__name__}; return a tensor or logits")


def _forward(module: nn.Module, inputs: Any) -> torch.Tensor:
    """Deterministic forward (eval mode, no grad), restoring the module's train/eval mode."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            if isinstance(inputs, dict):
                return _as_tensor(module(**inputs))
            if isinstance(inputs, (tuple, list)):
                return _as_tensor(module(*inputs))
            return _as_tensor(module(inputs))
    finally:
        module.train(was_training)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| as a float (inf when the shapes differ or a value is not finite)."""
    if a.shape != b.shape:
        return float("inf")
    diff = (a.detach().double() - b.detach().double()).abs()
    return float(diff.max()) if diff.numel() else 0.0


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float | None = None, rtol: float = 0.0,
                 what: str = "tensors") -> float:
    """``|actual - expected| <= atol + rtol·|expected|`` everywhere; returns max |actual - expected|."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shapes differ, {tuple(actual.shape)} vs {tuple(expected.shape)}")
    atol = _default_atol(expected.dtype, 0) if atol is None else atol
    diff = max_abs_diff(actual, expected)
    bound = (atol + rtol * expected.detach().double().abs()).max().item() if expected.numel() else atol
    ok = torch.isfinite(actual).all() and diff <= bound
    if not ok:
        raise AssertionError(f"{what} differ: max |diff| = {diff:.3e} > atol {atol:.1e} + rtol {rtol:.1e}·|expected|")
    return diff


def assert_equivalent(module_a: nn.Module, module_b: nn.Module, inputs: Any, atol: float | None = None,
                      rtol: float = 0.0) -> float:
    """Both modules give the same output on ``inputs`` (a tensor, a tuple of args, or a dict of kwargs).

    Forwards run in eval mode (no dropout) without grad. Returns the max absolute difference.
    """
    out_a, out_b = _forward(module_a, inputs), _forward(module_b, inputs)
    return assert_close(out_a, out_b, atol, rtol, what="outputs")


def check_identity_at_init(model: nn.Module, config: AdapterConfig, inputs: Any, atol: float = 0.0) -> float:
    """Inject ``config`` into the (adapter-free) ``model`` and check the output did not change.

    With B = 0 the update s·B·A is exactly zero, so the default tolerance is 0. The model keeps its
    adapters afterwards. Returns the max absolute difference.
    """
    before = _forward(model, inputs)
    inject(model, config)
    after = _forward(model, inputs)
    return assert_close(after, before, atol=atol, what="outputs before and after inject (identity at init)")


def _require_nonidentity(model: nn.Module) -> dict:
    layers = adapter_layers(model)
    if not layers:
        raise AssertionError("model has no adapter layers; inject a config first")
    if any(layer.merged for layer in layers.values()):
        raise AssertionError("adapters are merged; unmerge(model) before this check")
    norm = max(float(layer.delta_weight().detach().abs().max()) for layer in layers.values())
    if norm == 0.0:
        raise AssertionError("every adapter update is exactly zero: this check would prove nothing. "
                             "Call randomize_adapters(model) first")
    return layers


def check_merge_equivalence(model: nn.Module, inputs: Any, atol: float | None = None) -> float:
    """merged ≡ unmerged: the forward is unchanged by writing W0 + ΔW into the weights.

    Needs non-zero adapters (see :func:`randomize_adapters`); the model is unmerged again afterwards.
    Returns the max absolute output difference.
    """
    layers = _require_nonidentity(model)
    dtype = next(iter(layers.values())).base_layer.weight.dtype
    unmerged_out = _forward(model, inputs)
    merge(model)
    try:
        merged_out = _forward(model, inputs)
    finally:
        unmerge(model)
    return assert_close(merged_out, unmerged_out, atol=_default_atol(dtype, 0) if atol is None else atol,
                        what="merged vs unmerged outputs")


def check_unmerge_restores(model: nn.Module, atol: float | None = None) -> float:
    """merge then unmerge gives back every frozen W0 (up to round-off). Returns the max weight difference."""
    layers = _require_nonidentity(model)
    before = {name: layer.base_layer.weight.detach().clone() for name, layer in layers.items()}
    merge(model)
    moved = max(max_abs_diff(layer.base_layer.weight, before[name]) for name, layer in layers.items())
    unmerge(model)
    worst, worst_name = 0.0, ""
    for name, layer in layers.items():
        diff = max_abs_diff(layer.base_layer.weight, before[name])
        if diff >= worst:
            worst, worst_name = diff, name
    dtype = next(iter(before.values())).dtype
    atol = _default_atol(dtype, 1) if atol is None else atol
    if not worst <= atol:
        raise AssertionError(f"unmerge did not restore W0: max |W - W0| = {worst:.3e} > atol {atol:.1e} "
                             f"in {worst_name!r} (merge had moved it by {moved:.3e})")
    return worst


@torch.no_grad()
def randomize_adapters(model: nn.Module, std: float = 0.02, seed: int = 0) -> nn.Module:
    """Fill every adapter parameter (LoRA: A and B) with N(0, std²) from its own generator.

    Makes the adapters NON-identity so equivalence checks mean something; the global RNG is untouched.
    """
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("model has no adapter layers; inject a config first")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std!r}")
    gen = torch.Generator().manual_seed(seed)
    for layer in layers.values():
        for param in layer.adapter_parameters().values():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float64) * std
            param.copy_(noise.to(dtype=param.dtype, device=param.device))
    return model
