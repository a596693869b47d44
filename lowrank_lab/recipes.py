"""The method registry: how each fine-tuning method prepares a freshly loaded model.

``METHODS[name](model, model_name, task, options) -> model`` makes the model ready to train (inject
adapters, set ``requires_grad``). The CLI reads its ``--method`` choices from this dict, so a new method
is one ``register_method`` call in its own module, with no CLI edit:

    register_method("bone", prepare_bone, lr={"classification": 1e-3, "causal_lm": 2e-4})

A method whose update rule is an optimizer (LoRA-Pro) also passes ``make_optimizer=fn(model, train_config)
-> torch.optim.Optimizer``; ``OPTIMIZERS`` holds those, and ``train`` steps whatever it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lowrank_lab import presets
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


def prepare_full(model, model_name, task, options: MethodOptions):
    """Full fine-tuning: every parameter trains."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _lora_config(model_name, task, options: MethodOptions, use_rslora: bool):
    from lowrank_lab.assets import model_spec
    from lowrank_lab.layers.lora import LoRAConfig

    spec = model_spec(model_name)
    return LoRAConfig(
        r=options.r,
        alpha=options.lora_alpha,
        target_modules=tuple(options.target_modules or spec.default_target_modules),
        dropout=options.dropout,
        use_rslora=use_rslora,
        # A classification head is new (random init), so it must train with the adapters.
        modules_to_save=tuple(spec.head_modules.get(task.kind, ())),
    )


def prepare_lora(model, model_name, task, options: MethodOptions):
    """LoRA (Hu et al. 2021): W0 frozen, W0 + (alpha/r) B A on the target modules; the head trains too."""
    from lowrank_lab.adapters import inject

    return inject(model, _lora_config(model_name, task, options, use_rslora=False))


def prepare_rslora(model, model_name, task, options: MethodOptions):
    """rsLoRA (Kalajdzievski 2023): LoRA with scaling alpha/sqrt(r), stable as r grows."""
    from lowrank_lab.adapters import inject

    return inject(model, _lora_config(model_name, task, options, use_rslora=True))


METHODS: dict = {}
OPTIMIZERS: dict = {}
# Methods whose result does not depend on MethodOptions (rank, alpha, targets): full fine-tuning trains
# every weight, so its runs are the same whatever rank a comparison's budget names.
OPTIONLESS_METHODS = {"full"}


def register_method(name: str, prepare, *, make_optimizer=None, lr: dict | None = None,
                    overwrite: bool = False) -> None:
    """Add a method. ``lr`` = ``{"classification": ..., "causal_lm": ...}`` default learning rates."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"method name must be a non-empty string, got {name!r}")
    if name in METHODS and not overwrite:
        raise ValueError(f"method {name!r} is already registered (pass overwrite=True to replace it)")
    METHODS[name] = prepare
    if make_optimizer is not None:
        OPTIMIZERS[name] = make_optimizer
    if lr is not None:
        missing = set(presets.KINDS) - set(lr)
        if missing:
            raise ValueError(f"lr must give a rate for each kind {presets.KINDS}, missing {sorted(missing)}")
        presets.LEARNING_RATES[name] = dict(lr)


def get_method(name: str):
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


register_method("full", prepare_full)
register_method("lora", prepare_lora)
register_method("rslora", prepare_rslora)


def _bone_config(model_name, task, options: MethodOptions, variant: str):
    from lowrank_lab.assets import model_spec
    from lowrank_lab.layers.bone import BoneConfig

    spec = model_spec(model_name)
    return BoneConfig(r=options.r, variant=variant, target_modules=tuple(options.target_modules or spec.default_target_modules),
                      dropout=options.dropout, modules_to_save=tuple(spec.head_modules.get(task.kind, ())))


def prepare_bone(model, model_name, task, options: MethodOptions):
    """Bone (Kang 2024, DiSHA/MiSS): every r-column shard shares D^T (D: r x out). ``options.r`` is Bone's own r:
    for LoRA rank r_L's parameter count use ``layers.bone.bone_rank_matching_lora`` (2 r_L on square layers)."""
    from lowrank_lab.adapters import inject

    return inject(model, _bone_config(model_name, task, options, "bone"))


def prepare_bat(model, model_name, task, options: MethodOptions):
    """Bat (Kang 2024): W'_ij = W_ij (I + D_i) + D_i per r x r block; r must divide every in and out."""
    from lowrank_lab.adapters import inject

    return inject(model, _bone_config(model_name, task, options, "bat"))


# LoRA's learning rates. Probe (MiniLM sentiment, cpu preset: 128 steps, seed 0, r=16 on query/value = LoRA r=8's
# parameter count; validation accuracy on 1,000): Bone 3e-4 -> 0.664, 1e-3 -> 0.750, 2e-3 -> 0.750 (higher val loss);
# Bat 1e-3 -> 0.756, 2e-3 -> 0.769 (one seed: within noise). 1e-3 is within ~1 point of the best for both: all three share
# a rate. causal_lm: LoRA's 2e-4, not probed (SmolLM2 costs ~8 s/step on 2 cores).
register_method("bone", prepare_bone, lr={"classification": 1e-3, "causal_lm": 2e-4})
register_method("bat", prepare_bat, lr={"classification": 1e-3, "causal_lm": 2e-4})


def load_method_plugins() -> None:
    """Import ``lowrank_lab.methods`` (if that package exists) so the methods it registers are listed.

    Later methods live in ``lowrank_lab/methods/`` and call ``register_method`` at import time; the CLI
    calls this before building its ``--method`` choices.
    """
    import importlib
    import importlib.util

    if importlib.util.find_spec("lowrank_lab.methods") is not None:
        importlib.import_module("lowrank_lab.methods")
