"""Saving and loading adapters safely: safetensors for tensors, JSON for the config, never pickle.

Two formats:

* ours (``save_adapter`` / ``load_adapter``): ``adapter_config.json`` (method, config, lowrank_lab version,
  per-module tensor shapes, and per adapted layer what defines it: in/out features, rank, scaling) and
  ``adapter_model.safetensors`` keyed by module path (``...query.lora_A``);
* HF PEFT's (``export_peft``): loadable with ``peft.PeftModel.from_pretrained(base_model, directory)``.

Both files are written atomically (temporary file + rename): an interrupted save leaves the previous files.
``load_adapter`` checks the whole file (format, config, per-layer record, keys, shapes, dtypes, finite values) against
the model *before* changing it, so a corrupt or mismatched file leaves the model as it was. What it refuses:

* a malformed file (every error names the file and what is wrong);
* a tensor that is not floating point (int, bool: a silent cast would change the function), naming key and dtype;
* a non-finite value, in the file or after the cast to the model's dtype (1e300 in a float64 file is inf in
  float32);
* a model whose adapters are merged (its weights hold the old update; a later unmerge would subtract the new);
* a model already carrying an adapter whose config computes another function (alpha, rslora, ranks, targets);
* a layer whose in/out features or rank differ from the record (Bone/Bat tensors do not depend on in_features);
* a file without that per-layer record.

``save_adapter`` / ``export_peft`` refuse a model with an unfinished XGBLoRA schedule (its adapter layers
hold only the current boosters; call ``XGBLoRA.of(model).to_lora()`` first).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .adapters import adapter_layers, adapter_state_dict, get_config, install, plan_injection
from .files import atomic_write, read_json, write_json
from .layers import CONFIG_CLASSES
from .registry import PEFT_EXPORTERS as _PEFT_EXPORTERS, discover as _discover
from .runtime import lab_version
from .layers.base import AdapterConfig, AdapterLayer, check_positive_float, check_positive_int, module_matches

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LAYERS_KEY = "layers"  # adapter_config.json: module path -> what defines that adapted layer
LAYER_RECORD_KEYS = ("in_features", "out_features", "r", "scaling")  # the last two where the layer has them


def _save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    # safetensors refuses shared or strided storage: give each tensor its own contiguous copy.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata={"format": "pt"}))


# A schedule-style method (XGBLoRA) that merges rounds into the frozen weights attaches itself to the model under
# this attribute; io asks it, knowing no method by name.
SCHEDULE_ATTR = "lowrank_lab_schedule"


def _refuse_unfinished_schedule(model: nn.Module, action: str) -> None:
    """A schedule that merges finished rounds into the frozen weights and resets its adapters (XGBLoRA): until it
    gathers the record back into adapter layers, the adapter alone is not what was trained."""
    schedule = getattr(model, SCHEDULE_ATTR, None)
    if schedule is not None and not schedule.finished:
        raise ValueError(
            f"{action}: the model carries an unfinished {type(schedule).__name__} schedule; its adapter layers hold only "
            f"the current boosters and the merged rounds live in the frozen weights. Call "
            f"{type(schedule).__name__}.of(model).to_lora() first"
        )


def layer_record(layer: AdapterLayer) -> dict[str, Any]:
    """What defines an adapted layer beyond its tensors: in/out features, and the layer kind's own
    ``record_fields`` (rank and scaling by default) where it has them."""
    record = {"in_features": layer.in_features, "out_features": layer.out_features}
    for key in getattr(layer, "record_fields", ("r", "scaling")):
        if getattr(layer, key, None) is not None:
            record[key] = getattr(layer, key)
    return record


def _describe(record: dict[str, Any]) -> str:
    extra = "".join(f", {key}={value!r}" for key, value in record.items() if key not in ("in_features", "out_features"))
    return f"Linear(in={record['in_features']}, out={record['out_features']}){extra}"


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write the model's adapter (and ``modules_to_save``) to ``directory``; returns the directory."""
    config = get_config(model)
    layers = adapter_layers(model)
    if config is None or not layers:
        raise ValueError("model has no adapters to save; call inject(model, config) first")
    _refuse_unfinished_schedule(model, "save_adapter")
    directory = Path(directory)
    state = adapter_state_dict(model)
    meta = {
        "method": config.method,
        "config": config.to_dict(),
        "lowrank_lab_version": lab_version(),
        "shapes": {k: list(v.shape) for k, v in state.items()},
        LAYERS_KEY: {name: layer_record(layer) for name, layer in layers.items()},
    }
    directory.mkdir(parents=True, exist_ok=True)
    # tensors first, config last: an interruption in between leaves the old config, whose shapes then refuse
    # the new tensors, rather than a new config that vouches for old tensors
    _save_tensors(state, directory / WEIGHTS_FILE)
    write_json(directory / CONFIG_FILE, meta, indent=2)
    return directory


def _check_layer_records(value: Any, path: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"corrupt adapter config {path}: {LAYERS_KEY!r} must be a non-empty JSON object of "
                         f"module path -> {{in_features, out_features, r, scaling}}, got {value!r}")
    for name, record in value.items():
        where = f"{LAYERS_KEY}[{name!r}]"
        if not isinstance(record, dict):
            raise ValueError(f"corrupt adapter config {path}: {where} must be a JSON object, got {record!r}")
        unknown = sorted(set(record) - set(LAYER_RECORD_KEYS))
        if unknown:
            raise ValueError(f"corrupt adapter config {path}: {where} has unknown keys {unknown}; "
                             f"expected {list(LAYER_RECORD_KEYS)}")
        missing = [key for key in ("in_features", "out_features") if key not in record]
        if missing:
            raise ValueError(f"corrupt adapter config {path}: {where} lacks {missing}")
        try:
            for key, number in record.items():
                if key == "scaling":
                    check_positive_float(f"{where}.{key}", number)
                else:
                    check_positive_int(f"{where}.{key}", number)
        except ValueError as exc:
            raise ValueError(f"corrupt adapter config {path}: {exc}") from None
    return value


def _read_config(path: Path) -> tuple[AdapterConfig, dict[str, dict[str, Any]]]:
    """The config and the per-layer record of ``adapter_config.json``; every problem is a ValueError naming it."""
    try:
        meta = read_json(path)  # ValueError naming the file: truncated, not UTF-8, not JSON, NaN
    except ValueError as exc:
        raise ValueError(f"corrupt adapter config: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"corrupt adapter config {path}: the top level must be a JSON object, got {type(meta).__name__}")
    for key in ("method", "config"):
        if key not in meta:
            raise ValueError(f"corrupt adapter config {path}: missing key {key!r}")
    method, config_dict = meta["method"], meta["config"]
    _discover()  # a method's config class is registered when its module is imported
    if not isinstance(method, str) or method not in CONFIG_CLASSES:
        raise ValueError(f"adapter method must be one of {sorted(CONFIG_CLASSES)}, got {method!r} in {path}")
    if not isinstance(config_dict, dict):
        raise ValueError(f"corrupt adapter config {path}: 'config' must be a JSON object of the {method!r} config's "
                         f"fields, got {config_dict!r}")
    try:
        config = CONFIG_CLASSES[method].from_dict(config_dict)
    except ValueError as exc:
        raise ValueError(f"bad adapter config in {path}: {exc}") from None
    if config.method != method:  # e.g. "method": "bone" with "variant": "bat"
        raise ValueError(f"corrupt adapter config {path}: method {method!r} but the config describes {config.method!r}")
    if LAYERS_KEY not in meta:
        raise ValueError(
            f"adapter config {path} lacks the per-layer record ({LAYERS_KEY!r}: each adapted layer's in/out features "
            "and rank), so it cannot be checked against the model; save it again with save_adapter"
        )
    return config, _check_layer_records(meta[LAYERS_KEY], path)


def _read(directory: str | Path) -> tuple[AdapterConfig, dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"adapter file missing: {path}")
    config, records = _read_config(config_path)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"corrupt adapter weights {weights_path}: {exc}") from None
    not_float = [f"{k} ({v.dtype})" for k, v in tensors.items() if not v.is_floating_point()]
    if not_float:
        raise ValueError(f"adapter weights {weights_path} hold tensors that are not floating point: {not_float[:5]}; "
                         "adapter weights are floating point (casting ints or bools would silently change the adapter)")
    bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"adapter weights {weights_path} contain non-finite values in {bad[:5]}")
    return config, tensors, records


def read_adapter(directory: str | Path) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """Parse and validate an adapter folder without touching any model."""
    config, tensors, _ = _read(directory)
    return config, tensors


def _expected_parameters(model: nn.Module, config: AdapterConfig, planned: dict[str, AdapterLayer]) -> dict[str, torch.Tensor]:
    expected = {f"{name}.{p}": t for name, layer in planned.items() for p, t in layer.adapter_parameters().items()}
    for name, module in model.named_modules():
        if name and module_matches(config.modules_to_save, name):
            expected.update({f"{name}.{p}": t for p, t in module.named_parameters()})
    return expected


def _check_existing(model: nn.Module, existing: AdapterConfig, config: AdapterConfig, config_path: Path) -> None:
    """Loading replaces the weights of an adapter already in the model: only if that keeps the file's function."""
    if type(existing) is not type(config):
        raise ValueError(f"model carries a {existing.method!r} adapter but the file holds {config.method!r}")
    merged = [name for name, layer in adapter_layers(model).items() if layer.merged]
    if merged:
        # The merged weights hold W0 + the old update: the forward would keep it, and a later unmerge would
        # subtract the NEW update from them, damaging W0.
        raise ValueError(f"cannot load an adapter into a merged model (merged layers: {merged}); unmerge(model) first")
    differing = config.differing_fields(existing)
    if differing:
        mine, theirs = config.to_dict(), existing.to_dict()
        details = "; ".join(f"{key}: file {mine[key]!r}, model {theirs[key]!r}" for key in differing)
        raise ValueError(f"the adapter in {config_path} computes another function than the model's adapter "
                         f"({details}); load it into a fresh base model instead")


def _check_records(records: dict[str, dict[str, Any]], layers: dict[str, AdapterLayer], config_path: Path) -> None:
    only_file, only_model = sorted(set(records) - set(layers)), sorted(set(layers) - set(records))
    if only_file or only_model:
        raise ValueError(f"adapter layers in {config_path} do not match the model: in the file only {only_file[:5]}, "
                         f"in the model only {only_model[:5]}")
    wrong = [f"{name}: file {_describe(records[name])}; model {_describe(layer_record(layer))}"
             for name, layer in layers.items() if records[name] != layer_record(layer)]
    if wrong:
        raise ValueError(f"adapter layer shapes do not match the model ({config_path}): {wrong[:5]}")


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load an adapter saved by :func:`save_adapter` into ``model``.

    A fresh base model gets the adapter injected; a model that already carries the same adapter (same config
    up to training-only fields such as dropout, not merged) gets its weights replaced. Format, config,
    per-layer record, keys, shapes and values are all checked first: on any mismatch the error names the
    offending file, fields, layers or keys, and the model is unchanged.
    """
    config, tensors, records = _read(directory)
    config_path = Path(directory) / CONFIG_FILE
    existing = get_config(model)
    if existing is not None:
        _check_existing(model, existing, config, config_path)
        planned, layers = None, adapter_layers(model)
        expected = adapter_state_dict(model)
    else:
        planned = layers = plan_injection(model, config)
        expected = _expected_parameters(model, config, planned)
    _check_records(records, layers, config_path)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"adapter does not fit this model: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(t.shape)}" for k, t in expected.items() if tensors[k].shape != t.shape]
    if wrong:
        raise ValueError(f"adapter shapes do not match the model: {wrong[:5]}")
    # the values the model will hold: a float64 1e300 is finite in the file and inf in float32
    cast = {key: tensors[key].to(dtype=target.dtype) for key, target in expected.items()}
    overflow = [f"{key} ({tensors[key].dtype} -> {target.dtype})" for key, target in expected.items()
                if not torch.isfinite(cast[key]).all()]
    if overflow:
        raise ValueError(f"adapter weights {Path(directory) / WEIGHTS_FILE} hold values beyond the range of the "
                         f"model's dtype, non-finite once cast: {overflow[:5]}")
    if planned is not None:
        install(model, config, planned)
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(cast[key].to(device=target.device))
    return model


# ---------------------------------------------------------------------------------------------------
# HF PEFT export. Each method registers how its config and tensor names map to PEFT's.
# ---------------------------------------------------------------------------------------------------
# config method name -> fn(model, config) -> (PEFT config dict, tensors): the registry's table (register_method's
# ``peft_exporter``).
PEFT_EXPORTERS: dict[str, Callable[[nn.Module, AdapterConfig], tuple[dict, dict[str, torch.Tensor]]]] = _PEFT_EXPORTERS


def _peft_task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if name.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    return None


def __getattr__(name: str):  # the exporters moved to their methods' files
    if name == "_lora_to_peft":
        from .layers.lora import lora_to_peft

        return lora_to_peft
    if name == "_miss_to_peft":
        from .layers.bone import miss_to_peft

        return miss_to_peft
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# PEFT's PeftModelForSequenceClassification always adds these to modules_to_save and then expects their
# weights in the adapter file: a SEQ_CLS export must carry them.
PEFT_SEQ_CLS_HEADS = ("classifier", "score")


def _peft_saved_modules(model: nn.Module, config: AdapterConfig, task_type: str | None) -> tuple[list[str], list[str]]:
    """(``modules_to_save`` for PEFT's config, module paths whose parameters go into the file)."""
    names = list(config.modules_to_save)
    paths = [name for name, _ in model.named_modules() if name and module_matches(config.modules_to_save, name)]
    if task_type == "SEQ_CLS":
        heads = [name for name, _ in model.named_modules() if name.rpartition(".")[2] in PEFT_SEQ_CLS_HEADS]
        adapted = [name for name in adapter_layers(model) for head in heads
                   if name == head or name.startswith(head + ".")]
        if adapted:
            raise ValueError(f"cannot export {adapted} to PEFT: PEFT keeps a sequence classifier's head "
                             f"({heads}) whole in modules_to_save and will not load an adapter inside it")
        for head in heads:
            short = head.rpartition(".")[2]
            if short not in names and not module_matches(tuple(names), head):
                names.append(short)
            if head not in paths:
                paths.append(head)
    return names, paths


def export_peft(model: nn.Module, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the adapter in HF PEFT's format: ``PeftModel.from_pretrained(base, directory)`` loads it.

    For a sequence classifier the head (modules named ``classifier`` or ``score``, the ones PEFT itself keeps
    trainable for SEQ_CLS) is exported with the adapter even when it is not in ``modules_to_save``.
    """
    config = get_config(model)
    if config is None:
        raise ValueError("model has no adapters to export; call inject(model, config) first")
    _discover()
    if config.method not in PEFT_EXPORTERS:
        raise ValueError(f"no PEFT export for method {config.method!r}; exportable: {sorted(PEFT_EXPORTERS)}")
    _refuse_unfinished_schedule(model, "export_peft")
    task_type = _peft_task_type(model)
    modules_to_save, saved_paths = _peft_saved_modules(model, config, task_type)
    peft_config, tensors = PEFT_EXPORTERS[config.method](model, config)
    for name in saved_paths:
        tensors.update({f"base_model.model.{name}.{p}": t for p, t in model.get_submodule(name).named_parameters()})
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "name_or_path", None) or None
    peft_config.update(
        modules_to_save=modules_to_save or None,
        task_type=task_type,
        base_model_name_or_path=base_model_name_or_path,
        inference_mode=True,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _save_tensors(tensors, directory / WEIGHTS_FILE)  # tensors first, config last (see save_adapter)
    write_json(directory / CONFIG_FILE, peft_config, indent=2)
    return directory
