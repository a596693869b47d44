"""How a method prepares a freshly loaded model: ``MethodOptions`` and ``prepare``.

``METHODS[name](model, model_name, task, options) -> model`` makes the model ready to train (inject adapters, set
``requires_grad``). The tables live in :mod:`lowrank_lab.registry`: a new method is one ``register_method`` call
in its own module, found without editing any other file (see the registry's docstring and the README's "Adding a
method"). A method whose update rule is an optimizer (LoRA-Pro) also passes ``make_optimizer=fn(model,
train_config) -> torch.optim.Optimizer``; ``OPTIMIZERS`` holds those, and ``train`` steps whatever it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lowrank_lab import registry
from lowrank_lab.layers.base import check_fraction, check_positive_float, check_positive_int, normalize_module_names


@dataclass
class MethodOptions:
    """Method hyperparameters from the CLI or a notebook. ``None`` means "the method's default"."""

    r: int = 8
    alpha: float | None = None  # None -> 2 * r (alpha=16 at r=8, the common LoRA recipe)
    target_modules: tuple[str, ...] | None = None  # None -> model_spec(model).default_target_modules
    dropout: float = 0.0
    extra: dict = field(default_factory=dict)  # method-specific knobs for later methods

    def __post_init__(self):
        # Same checks (and messages) as LoRAConfig, so a bad CLI value fails before any model is loaded.
        check_positive_int("r", self.r)
        if self.alpha is not None:
            check_positive_float("alpha", self.alpha)
        check_fraction("dropout", self.dropout)
        if self.target_modules is not None:
            self.target_modules = normalize_module_names("target_modules", tuple(self.target_modules), allow_empty=False)

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r


# Shared by the LoRA-style methods (LoRA-Pro, XGBLoRA, GeLoRA build on LoRA's config); they live with LoRA.
from lowrank_lab.layers.lora import lora_config as _lora_config, prepare_lora, prepare_rslora  # noqa: E402
from lowrank_lab.layers.bone import prepare_bat, prepare_bone  # noqa: E402


# The registry (lowrank_lab.registry) owns these tables; they are re-exported here for the code that reads them.
METHODS = registry.METHODS
OPTIMIZERS = registry.OPTIMIZERS
OPTIONLESS_METHODS = registry.OPTIONLESS_METHODS
register_method = registry.register_method


def get_method(name: str):
    registry.discover()
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]


def prepare(method: str, model, model_name: str, task, options: MethodOptions | dict | None = None):
    """Run ``method``'s preparation; ``options`` may be a MethodOptions, a dict of its fields, or None."""
    if options is None:
        options = MethodOptions()
    elif isinstance(options, dict):
        options = MethodOptions(**options)
    return get_method(method)(model, model_name, task, options)


def load_method_plugins() -> None:
    """Find every registered method (``registry.discover``: the lab's own modules under ``lowrank_lab/layers/`` and
    ``lowrank_lab/methods/``, ``$LOWRANK_LAB_PLUGINS`` and the ``lowrank_lab.methods`` entry points)."""
    registry.discover()


def __getattr__(name: str):
    if name == "prepare_full":  # full fine-tuning lives in lowrank_lab/methods/full.py
        from lowrank_lab.methods.full import prepare_full

        return prepare_full
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
