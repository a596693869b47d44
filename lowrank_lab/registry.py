"""The method registry: one :func:`register_method` call declares everything the lab needs to know of a method.

A method lives in one file: a module under ``lowrank_lab/layers/`` (layer-style) or ``lowrank_lab/methods/``
(optimizer-, schedule- and analysis-style) that calls ``register_method`` at import time. Nothing else is edited:

* :func:`discover` imports every module of those two packages, every module named in ``$LOWRANK_LAB_PLUGINS``
  (comma-separated) and every entry point of the group ``lowrank_lab.methods`` of the installed packages, so
  ``train``, ``compare`` (and its child processes, which call it too), save/load and export see the same set;
* ``train``/``compare``/``cli``/``io``/``presets``/``plotting`` ask the registry (:func:`get`, :func:`names`,
  :func:`claims`, ...) instead of switching on method names.

What a registration declares (:class:`Method`): how to prepare a model, the prior learning rates, the optimizer
(optimizer-style methods), the adapter config class and PEFT exporter (adapter files), how it meets a comparison's
parameter budget and the sentence that says so, the papers' claims it is judged on, its own CLI options and the
knob grid ``compare --tune-lr`` tries, its colour, and whether rank/alpha/target options apply to it at all.

The older tables (``recipes.METHODS``, ``recipes.OPTIMIZERS``, ``recipes.OPTIONLESS_METHODS``,
``layers.CONFIG_CLASSES``, ``io.PEFT_EXPORTERS``, ``presets.LEARNING_RATES``) are filled from here, so code that
reads them keeps working; nothing writes them by hand.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

PLUGINS_ENV = "LOWRANK_LAB_PLUGINS"
ENTRY_POINT_GROUP = "lowrank_lab.methods"
STYLES = ("baseline", "layer", "optimizer", "schedule", "analysis")
# How a method meets a comparison's budget (LoRA rank r's trainable parameters):
BUDGET_RULES = {
    "reference": "reference: every parameter trains",
    "same_r": "rank r: the budget itself",
    "search_r": "the rank whose trainable count is closest to the budget",
    "budget": "spreads the budget of LoRA rank r over layers",
    "steps": "equal optimizer steps; rank-1 boosters train on a few blocks at a time (fewer parameters)",
}
CLAIM_KINDS = ("better", "matches", "fewer_params", "faster", "forgets_less", "more_intruders")

# Tables the rest of the package reads (kept as plain dicts so existing code and tests keep working).
METHODS: dict[str, Callable] = {}  # name -> prepare(model, model_name, task, options) -> model
OPTIMIZERS: dict[str, Callable] = {}  # name -> make_optimizer(model, train_config)
OPTIONLESS_METHODS: set[str] = set()  # methods whose runs do not depend on rank, alpha or targets
CONFIG_CLASSES: dict[str, type] = {}  # the method name written in adapter_config.json -> its config class
PEFT_EXPORTERS: dict[str, Callable] = {}  # config method name -> fn(model, config) -> (peft config, tensors)
REGISTRY: dict[str, "Method"] = {}


@dataclass(frozen=True)
class CliOption:
    """A method's own ``train`` flag: ``--<name with dashes>``, parsed by ``parse`` (text -> value, raising
    ``argparse.ArgumentTypeError`` with the reason), stored in ``MethodOptions.extra[name]``."""

    name: str
    parse: Callable[[str], Any]
    help: str


@dataclass(frozen=True)
class Method:
    """Everything the lab knows of one method (see :func:`register_method` for the fields)."""

    name: str
    prepare: Callable
    style: str = "layer"
    paper: str | None = None
    lr: dict | None = None
    make_optimizer: Callable | None = None
    config_class: type | None = None
    peft_exporter: Callable | None = None
    budget: str = "same_r"
    budget_text: str | None = None
    options_apply: bool = True
    compare: bool = True
    order: float = 100.0
    claims: tuple = ()
    cli_options: tuple = ()
    check_extra: Callable | None = None
    knob_grid: Callable | None = None
    plan_info: Callable | None = None
    color: str | None = None
    module: str = ""
    extra_defaults: dict = field(default_factory=dict)

    @property
    def rule_text(self) -> str:
        return self.budget_text or BUDGET_RULES[self.budget]


def _check_claims(name: str, claims) -> tuple:
    out = []
    for claim in claims:
        if not isinstance(claim, dict):
            raise ValueError(f"claims of {name!r} must be dicts, got {claim!r}")
        missing = {"paper", "claim", "paper_evidence", "baseline", "kind"} - set(claim)
        if missing:
            raise ValueError(f"claim {claim.get('claim')!r} of {name!r} lacks {sorted(missing)}")
        if claim["kind"] not in CLAIM_KINDS:
            raise ValueError(f"claim kind must be one of {CLAIM_KINDS}, got {claim['kind']!r} (method {name!r})")
        out.append({"method": name, **claim})
    return tuple(out)


def register_method(name: str, prepare: Callable, *, make_optimizer: Callable | None = None, lr: dict | None = None,
                    overwrite: bool = False, style: str | None = None, paper: str | None = None,
                    config_class: type | None = None, config_names: tuple = (), peft_exporter: Callable | None = None,
                    budget: str = "same_r", budget_text: str | None = None, options_apply: bool = True,
                    compare: bool = True, order: float = 100.0, claims=(), cli_options=(),
                    check_extra: Callable | None = None, knob_grid: Callable | None = None,
                    plan_info: Callable | None = None, color: str | None = None) -> Method:
    """Register a method; everything is checked before any table changes.

    * ``prepare(model, model_name, task, options) -> model``: inject adapters / set ``requires_grad``.
    * ``make_optimizer(model, train_config)``: an optimizer-style method's update rule (LoRA-Pro, XGBLoRA).
    * ``lr``: ``{"classification": ..., "causal_lm": ...}`` prior peak rates (default: LoRA's).
    * ``style``: one of :data:`STYLES` (default "optimizer" with ``make_optimizer``, else "layer").
    * ``config_class`` (+ ``config_names``, the names its files may carry; default ``(name,)``) and
      ``peft_exporter``: adapter files and HF PEFT export.
    * ``budget`` (a key of :data:`BUDGET_RULES`) and ``budget_text`` (the sentence tables print, when the rule's
      generic text would be wrong, e.g. extra parameters beyond rank r).
    * ``options_apply=False``: rank, alpha and target modules do not change this method's runs (full FT).
    * ``compare``: in ``compare``'s default set; ``order``: its place in tables.
    * ``claims``: dicts with ``paper``, ``claim``, ``paper_evidence``, ``baseline``, ``kind`` (one of
      :data:`CLAIM_KINDS`), optional ``tolerance`` / ``sesoi`` / ``gap_to``: what the reproduction table judges.
    * ``cli_options`` (:class:`CliOption`) and ``check_extra(extra, max_steps)``: the method's own ``train`` flags.
    * ``knob_grid(plan_info, max_steps) -> [dict]``: schedule knobs ``compare --tune-lr`` tries at the selected
      rate; ``plan_info(model, model_name, task) -> dict`` what the grid needs of the model (on the meta device).
    """
    if not isinstance(name, str) or not name or name != name.strip() or "," in name:
        raise ValueError(f"method name must be a non-empty string without commas or spaces around, got {name!r}")
    if name in REGISTRY and not overwrite:
        raise ValueError(f"method {name!r} is already registered (pass overwrite=True to replace it)")
    if not callable(prepare):
        raise ValueError(f"prepare of {name!r} must be callable, got {prepare!r}")
    style = style or ("optimizer" if make_optimizer is not None else "layer")
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if budget not in BUDGET_RULES:
        raise ValueError(f"budget must be one of {sorted(BUDGET_RULES)}, got {budget!r}")
    if lr is not None:
        from lowrank_lab.presets import KINDS

        missing = set(KINDS) - set(lr)
        if missing:
            raise ValueError(f"lr must give a rate for each kind {KINDS}, missing {sorted(missing)}")
        for kind in KINDS:
            rate = lr[kind]
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < float("inf"):
                raise ValueError(f"lr[{kind!r}] must be a positive number, got {rate!r}")
    for option in cli_options:
        if not isinstance(option, CliOption):
            raise ValueError(f"cli_options of {name!r} must be CliOption, got {option!r}")
    method = Method(name=name, prepare=prepare, style=style, paper=paper, lr=dict(lr) if lr else None,
                    make_optimizer=make_optimizer, config_class=config_class, peft_exporter=peft_exporter,
                    budget=budget, budget_text=budget_text, options_apply=options_apply, compare=compare,
                    order=order, claims=_check_claims(name, claims), cli_options=tuple(cli_options),
                    check_extra=check_extra, knob_grid=knob_grid, plan_info=plan_info, color=color,
                    module=getattr(prepare, "__module__", "") or "")
    REGISTRY[name] = method
    METHODS[name] = prepare
    OPTIMIZERS.pop(name, None)
    if make_optimizer is not None:
        OPTIMIZERS[name] = make_optimizer
    OPTIONLESS_METHODS.discard(name)
    if not options_apply:
        OPTIONLESS_METHODS.add(name)
    for config_name in (config_names or ((name,) if config_class is not None else ())):
        CONFIG_CLASSES[config_name] = config_class
        if peft_exporter is not None:
            PEFT_EXPORTERS[config_name] = peft_exporter
    if lr is not None:
        from lowrank_lab import presets

        presets.LEARNING_RATES[name] = dict(lr)
    return method


_discovered = False


def _import_package_modules(package: str) -> None:
    module = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(module.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def discover(force: bool = False) -> None:
    """Import every method module: the lab's own (``lowrank_lab.layers.*``, ``lowrank_lab.methods.*``), those named
    in ``$LOWRANK_LAB_PLUGINS``, and the entry points of group ``lowrank_lab.methods`` (a module to import, or a
    callable to call). Idempotent; a plugin that fails to import raises, naming it (never a silent skip)."""
    global _discovered
    if _discovered and not force:
        return
    _discovered = True
    for package in ("lowrank_lab.layers", "lowrank_lab.methods"):
        _import_package_modules(package)
    for name in filter(None, (part.strip() for part in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as err:
            _discovered = False
            raise ImportError(f"${PLUGINS_ENV} names {name!r}, which failed to import: {err}") from err
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
        except Exception as err:
            _discovered = False
            raise ImportError(f"entry point {point.name!r} ({point.value}) of group {ENTRY_POINT_GROUP!r} failed to "
                              f"load: {err}") from err
        if callable(loaded) and not isinstance(loaded, type(os)):
            loaded()


def get(name: str) -> Method:
    """The registered method ``name``; ``ValueError`` naming the registered ones otherwise."""
    discover()
    if name not in REGISTRY:
        if name in METHODS:  # a prepare function put into the table directly (tests do): a plain layer-style method
            return Method(name=name, prepare=METHODS[name], make_optimizer=OPTIMIZERS.get(name),
                          options_apply=name not in OPTIONLESS_METHODS)
        raise ValueError(f"method must be one of {sorted(set(REGISTRY) | set(METHODS))}, got {name!r}")
    return REGISTRY[name]


def names(compare_only: bool = False) -> tuple[str, ...]:
    """Registered method names in table order (``compare_only``: the ones in ``compare``'s default set)."""
    discover()
    methods = sorted(REGISTRY.values(), key=lambda m: (m.order, m.name))
    return tuple(m.name for m in methods if m.compare or not compare_only)


def claims() -> tuple[dict, ...]:
    """Every registered claim, in method order (what the reproduction table judges)."""
    return tuple(claim for name in names() for claim in REGISTRY[name].claims)


def options_apply(name: str) -> bool:
    return get(name).options_apply


def cli_options() -> dict[str, tuple[CliOption, ...]]:
    """{method: its own train flags} for every method that has some."""
    return {name: REGISTRY[name].cli_options for name in names() if REGISTRY[name].cli_options}
