"""What every layer-style adapter shares: config validation, module matching, and merge bookkeeping.

A layer-style method (LoRA, Bone, Bat) wraps a frozen ``nn.Linear`` (``base_layer``) and adds a small
trainable update. Subclasses implement ``adapter_forward`` (the unmerged forward) and the merged weight;
this base class keeps the bookkeeping in one place:

* ``merge()`` writes the update into the frozen weight, computed in fp32 and refused if non-finite
  *before* anything is written; a second ``merge()`` warns and does nothing.
* ``unmerge()`` undoes it (again fp32, again checked).
* while merged or disabled, the forward is the plain base layer.
* a method whose unmerge needs something the merge overwrites (DoRA: the per-row factor m/‖W0 + ΔV‖, W0 being
  gone once merged) returns it from ``merge_state()``; ``merge`` keeps it in ``saved_merge_state`` until ``unmerge``
  has written W0 back. Additive methods (LoRA, Bone, Bat) need nothing: the default is None.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, ClassVar, Mapping

import torch
from torch import nn


class NonFiniteError(ValueError):
    """An update would write NaN or infinity into a weight (a merge, an optimizer step): a diverged
    computation, refused before anything changed. A ``ValueError``, so existing handlers still catch it;
    ``train`` reports it as a diverged run."""


# ---------------------------------------------------------------------------------------------------
# Validation helpers: every message names the field and quotes the value.
# ---------------------------------------------------------------------------------------------------
def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_positive_float(name: str, value: Any) -> float:
    try:  # an int beyond float range (10**400, valid JSON) overflows in isfinite: as bad as an infinity
        finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        finite = False
    if not finite or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def normalize_module_names(name: str, value: Any, allow_empty: bool) -> tuple[str, ...] | str:
    """A regex string (full match on the module path) or a sequence of module-name suffixes."""
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{name} must be a non-empty regex or list of module names, got {value!r}")
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{name} is not a valid regex: {value!r} ({exc})") from None
        return value
    try:
        names = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a regex string or a list of module names, got {value!r}") from None
    if not names and not allow_empty:
        raise ValueError(f"{name} must not be empty, got {value!r}")
    for item in names:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{name} entries must be non-empty strings, got {item!r} in {value!r}")
    return tuple(sorted(set(names)))


def check_rank_pattern(name: str, value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a dict of module name -> rank, got {value!r}")
    pattern = {}
    for key, rank in value.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{name} keys must be non-empty module names, got {key!r}")
        pattern[key] = check_positive_int(f"{name}[{key!r}]", rank)
    return dict(sorted(pattern.items()))


def module_matches(targets: tuple[str, ...] | str, module_name: str) -> bool:
    """PEFT's rule: a regex string must match the whole path; a list entry matches the path or its suffix."""
    if isinstance(targets, str):
        return re.fullmatch(targets, module_name) is not None
    return any(module_name == t or module_name.endswith("." + t) for t in targets)


def pattern_value(pattern: Mapping[str, Any], module_name: str, default: Any) -> Any:
    """Per-module override (``rank_pattern``): the key is a module path, a path suffix or a regex suffix."""
    for key, value in pattern.items():
        if module_name == key or re.fullmatch(rf"(.*\.)?{key}", module_name):
            return value
    return default


class AdapterConfig:
    """Mixin for adapter configs (dataclasses). Subclasses set ``method`` and implement ``create_layer``."""

    method: ClassVar[str] = ""
    # Fields that only shape training (dropout, init, memory trade-offs), not the function the adapter computes:
    # an adapter file may be loaded into a model whose config differs on these, and on nothing else.
    training_only_fields: ClassVar[tuple[str, ...]] = ()

    def create_layer(self, module_name: str, base_layer: nn.Linear) -> "AdapterLayer":
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        out = {}
        for key, value in asdict(self).items():
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        from dataclasses import fields

        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__} needs a dict of fields, got {type(data).__name__} {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            warnings.warn(f"{cls.__name__}: ignoring unknown config keys {unknown} (written by a newer version?)")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, OverflowError) as exc:
            # a value of a type the validators did not expect (e.g. an int too large for a float): still bad input
            raise ValueError(f"{cls.__name__}: bad field value in {dict(data)!r} ({exc})") from None

    def differing_fields(self, other: "AdapterConfig") -> list[str]:
        """Fields, training-only ones aside, on which ``other`` differs: with any, the same adapter weights
        compute a different function under the two configs."""
        from dataclasses import fields

        if type(other) is not type(self):
            raise TypeError(f"cannot compare a {type(self).__name__} with a {type(other).__name__}")
        mine, theirs = self.to_dict(), other.to_dict()
        return [f.name for f in fields(self) if f.name not in self.training_only_fields and mine[f.name] != theirs[f.name]]


class AdapterLayer(nn.Module):
    """A frozen ``nn.Linear`` plus one trainable update. Subclasses define the update."""

    adapter_parameter_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"base_layer must be an nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.merged = False
        self.disabled = False
        # What ``unmerge`` needs that the merge overwrote (see ``merge_state``): a buffer, so it follows the layer
        # across ``.to(device)``; not persistent, so state dicts (and adapter files) are unchanged. None unless merged.
        self.register_buffer("saved_merge_state", None, persistent=False)

    # The wrapped layer still looks like a Linear to code that inspects it (HF does).
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    # --- to implement --------------------------------------------------------------------------
    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def compute_dtype(self) -> torch.dtype:
        """Merges accumulate in fp32 at least (fp16/bf16 round-off would change the model), fp64 stays fp64."""
        return torch.promote_types(self.base_layer.weight.dtype, torch.float32)

    def delta_weight(self) -> torch.Tensor:
        """The update ΔW (out, in) in ``compute_dtype``: the adapted weight is W0 + ΔW (additive methods)."""
        raise NotImplementedError

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """Weight after merging, in ``compute_dtype``; additive by default, Bat overrides."""
        return weight.to(self.compute_dtype) + self.delta_weight()

    def unmerged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.to(self.compute_dtype) - self.delta_weight()

    def merge_state(self) -> torch.Tensor | None:
        """What ``unmerged_weight`` will need that the merge destroys, computed from the still unmerged weights just
        before ``merge`` writes; kept in ``self.saved_merge_state`` until ``unmerge`` succeeds. None: nothing
        (the additive methods undo the merge from their own parameters)."""
        return None

    # --- shared behaviour ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return self.base_layer(x)
        return self.adapter_forward(x)

    def _checked(self, new_weight: torch.Tensor, action: str) -> torch.Tensor:
        if not torch.isfinite(new_weight).all():
            raise NonFiniteError(f"{action} would write non-finite values into the weight; refusing (weight unchanged)")
        return new_weight.to(self.base_layer.weight.dtype)

    @torch.no_grad()
    def merge_candidate(self) -> torch.Tensor:
        """The merged weight, checked finite, without writing it."""
        return self._checked(self.merged_weight(self.base_layer.weight), "merge")

    @torch.no_grad()
    def unmerge_candidate(self) -> torch.Tensor:
        return self._checked(self.unmerged_weight(self.base_layer.weight), "unmerge")

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            warnings.warn("Already merged; nothing to do.")
            return
        new_weight = self.merge_candidate()  # raises (nothing written) if it is not finite
        state = self.merge_state()  # from the unmerged weights, before they are overwritten
        self.base_layer.weight.copy_(new_weight)
        self.saved_merge_state = state
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged; nothing to do.")
            return
        self.base_layer.weight.copy_(self.unmerge_candidate())
        self.saved_merge_state = None
        self.merged = False

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {name: getattr(self, name) for name in self.adapter_parameter_names}

    def extra_repr(self) -> str:
        return f"merged={self.merged}, disabled={self.disabled}"
