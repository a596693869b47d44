"""One fine-tuning run, end to end: the path the CLI, the lessons and ``compare`` share.

``run_method("lora", "sentiment", scale="cpu", seed=0)`` loads the task and the model offline, prepares the
method (``recipes.prepare``), builds its optimizer if it has one (LoRA-Pro), trains with the scale's preset
(``presets.train_preset``) and returns a :class:`Run` with the model, the history and the resolved budget.
``overrides`` replaces preset fields (``{"max_steps": 20, "lr": 1e-4}``); every other number comes from
``presets``.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lowrank_lab import presets, recipes
from lowrank_lab.runtime import SCALES, get_device, lab_version, seed_everything

# The default model per task kind: offline PyPI mirrors (requirements-assets.txt).
DEFAULT_MODELS = {"classification": "minilm", "causal_lm": "smollm2-135m"}
# The forgetting probes at smoke scale (lowrank_lab.forgetting's own defaults everywhere else).
FORGETTING_SMOKE = {"classification": {"n_train": 64, "n_test": 32}, "causal_lm": {"n_passages": 2, "n_tokens": 32}}
PRESET_KEYS = set(presets.COMMON) | {k for scale in presets.TRAIN_PRESETS.values() for kind in scale.values()
                                     for k in kind} | {"lr", "epochs", "head_lr"}


@dataclass
class Run:
    method: str
    task_name: str
    model_name: str
    scale: str
    seed: int
    preset: dict
    model: object = field(repr=False)
    task: object = field(repr=False)
    config: object = field(repr=False)
    history: dict = field(repr=False)
    predictions: dict = field(default_factory=dict, repr=False)  # final evaluations, per example (predictions.json)
    forgetting: dict | None = field(default=None, repr=False)  # {"retained", "intruders"} when measured

    @property
    def metric(self) -> tuple[str, bool]:
        """(name, higher_is_better) of the metric that ranks runs at this scale."""
        return presets.primary_metric(self.task.kind, self.scale)

    def value(self, split: str = "validation") -> float | None:
        final = self.history["final"][split] or {}
        return final.get(self.metric[0])

    def baselines(self) -> dict:
        """What "did not learn" is judged against: a classification run is compared with always predicting the
        largest class of each split and with the loss of a uniform guess, ln C; a causal LM with its first loss."""
        losses = self.history["train_loss"]
        head = losses[:max(1, min(8, len(losses)))]
        out = {"initial_train_loss": statistics.fmean(head) if head else None}
        if self.task.kind == "classification":
            out["num_labels"] = self.task.num_labels
            out["uniform_loss"] = math.log(self.task.num_labels)
            for split in ("validation", "test"):
                labels = list(getattr(self.task, split)["label"]) if getattr(self.task, split) is not None else []
                out[f"majority_{split}"] = (max(labels.count(c) for c in set(labels)) / len(labels)) if labels else None
                out[f"n_{split}"] = len(labels)
        return out

    def summary(self) -> dict:
        """A flat, JSON-ready record of the run (no tensors)."""
        import torch

        tail = self.history["train_loss"][-max(1, len(self.history["train_loss"]) // 10):]
        name, higher = self.metric
        return {
            "method": self.method, "task": self.task_name, "model": self.model_name, "scale": self.scale,
            "seed": self.seed, "lr": self.config.lr, "steps": self.config.max_steps, "n_train": len(self.task.train),
            "trainable_params": self.history["trainable_params"], "total_params": self.history["total_params"],
            "final_train_loss": statistics.fmean(tail), "metric": name, "higher_is_better": higher,
            "metric_value": self.value("validation"), "test_metric_value": self.value("test"),
            "median_step_time_s": self.history["median_step_time_s"],
            "peak_memory_mb": self.history["peak_memory_mb"], "peak_memory_kind": self.history["peak_memory_kind"],
            "wall_time_s": self.history["wall_time_s"], "status": self.history.get("status", "ok"),
            "baselines": self.baselines(),
            # Same seed, same numbers on the same CPU kind only: floating-point kernels differ between kinds.
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **(self.forgetting or {}),
        }


def run_spec(method: str, task_name: str, model_name: str, scale: str, seed: int,
             options: recipes.MethodOptions | None = None, overrides: dict | None = None) -> dict:
    """Everything that defines a run's result, as strict JSON: a finished run may stand in for a new one only
    when the two specs are equal (``compare`` resumes on this). The preset is resolved (the method's default
    learning rate included), so a changed default is a different run; so is another lowrank-lab version."""
    options = options or recipes.MethodOptions()
    overrides = dict(overrides or {})
    spec = {
        "method": method, "task": task_name, "model": model_name, "scale": scale, "seed": seed,
        "options": None if method in recipes.OPTIONLESS_METHODS else {
            "r": options.r, "alpha": options.lora_alpha, "dropout": options.dropout,
            "target_modules": list(options.target_modules) if options.target_modules else None,
            "extra": dict(sorted(options.extra.items()))},
        "preset": {**presets.train_preset(task_name, scale, method), **overrides},
        "lowrank_lab_version": lab_version(),
    }
    return json.loads(json.dumps(spec, sort_keys=True))  # tuples -> lists: equal to the spec read back from a file


def spec_differences(recorded: dict, wanted: dict, prefix: str = "") -> list[str]:
    """``["options.r: 8 (recorded) vs 2 (wanted)", ...]``, one entry per field that differs (nested dicts
    walked); empty when the two specs define the same run."""
    differences = []
    for key in sorted(set(recorded) | set(wanted)):
        a, b = recorded.get(key, "<absent>"), wanted.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            differences += spec_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}: {a!r} (recorded) vs {b!r} (wanted)")
    return differences


def default_model(task_name: str) -> str:
    return DEFAULT_MODELS[presets.task_kind(task_name)]


def run_method(method: str, task_name: str, model_name: str | None = None, scale: str = "smoke", seed: int = 0,
               options: recipes.MethodOptions | dict | None = None, overrides: dict | None = None,
               out_dir: str | Path | None = None, show_progress: bool = True, measure_forgetting: bool = False) -> Run:
    """Train ``method`` on ``task_name`` with the ``scale`` preset; everything is checked before loading.

    ``measure_forgetting``: after training, what the run forgot (``lowrank_lab.forgetting``: retained capability
    on tasks it was not trained on, intruder dimensions of its weights against the pre-trained ones), in
    ``run.forgetting`` and the summary; the pre-trained weights are snapshotted after the method prepared the
    model and before the first step."""
    from lowrank_lab.assets import MODEL_NAMES, TASK_NAMES, load_model, load_task, load_tokenizer, model_spec
    from lowrank_lab.train import TrainConfig, train

    recipes.load_method_plugins()
    recipes.get_method(method)  # unknown method: ValueError naming it, before anything loads
    if task_name not in TASK_NAMES:
        raise ValueError(f"task_name must be one of {TASK_NAMES}, got {task_name!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    kind = presets.task_kind(task_name)
    model_name = model_name or DEFAULT_MODELS[kind]
    if model_name not in MODEL_NAMES:
        raise ValueError(f"model_name must be one of {MODEL_NAMES}, got {model_name!r}")
    if kind not in model_spec(model_name).kinds:
        raise ValueError(f"model {model_name!r} cannot do task {task_name!r} ({kind})")
    overrides = dict(overrides or {})
    unknown = set(overrides) - PRESET_KEYS
    if unknown:
        raise ValueError(f"overrides has unknown fields {sorted(unknown)}; known: {sorted(PRESET_KEYS)}")
    if options is None:
        options = recipes.MethodOptions()
    elif isinstance(options, dict):
        options = recipes.MethodOptions(**options)

    preset = {**presets.train_preset(task_name, scale, method), **overrides}
    seed_everything(seed)  # before loading: the new head and the adapters draw from torch's RNG
    task = load_task(task_name, max_train=preset["max_train"], max_eval=preset["max_eval"])
    fields = presets.train_config_fields(preset)
    fields["max_steps"] = presets.resolve_max_steps(preset, len(task.train))
    if fields.get("head_lr") is not None:
        fields["head_modules"] = tuple(model_spec(model_name).head_modules.get(kind, ()))
    config = TrainConfig(**fields, seed=seed, device=str(get_device(scale)))

    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name, kind=kind, num_labels=task.num_labels if kind == "classification" else None)
    model = recipes.prepare(method, model, model_name, task, options)
    make_optimizer = recipes.OPTIMIZERS.get(method)
    optimizer = make_optimizer(model, config) if make_optimizer else None
    snapshot = None
    if measure_forgetting:
        from lowrank_lab import forgetting

        snapshot = forgetting.weight_snapshot(model, forgetting.snapshot_modules(model, model_name))
    predictions: dict = {}
    history = train(model, task, tokenizer, config, optimizer=optimizer, out_dir=out_dir, show_progress=show_progress,
                    predictions=predictions)
    run = Run(method, task_name, model_name, scale, seed, preset, model, task, config, history, predictions)
    if snapshot is not None and not model_spec(model_name).pretrained:
        # random weights (tiny-llama): nothing was learned before, so nothing can be forgotten; the weights' change
        # is still measured
        run.forgetting = {"retained": None, "intruders": forgetting.intruder_summary(model, snapshot)}
    elif snapshot is not None:  # smoke: small probes, so CI pays seconds (a smoke run's probes test the code only)
        run.forgetting = forgetting.measure(model, model_name, task_name, tokenizer, snapshot,
                                            **FORGETTING_SMOKE.get(kind, {}) if scale == "smoke" else {})
    return run



def aggregate(summaries: list[dict], key: str = "metric_value", methods=None) -> dict[str, dict]:
    """Group run summaries by method: mean, sample std (0 for one seed) and the per-seed values of ``key``,
    plus the trainable parameters and the median step time, in ``methods`` order (default: first seen).

    Only finished runs (``status`` "ok", the default) enter the statistics; ``diverged`` and ``failed`` count
    the others. A method none of whose runs finished keeps its row, with ``mean``/``std`` None and ``n`` 0."""
    groups: dict[str, list[dict]] = {m: [] for m in methods or ()}
    for row in summaries:
        groups.setdefault(row["method"], []).append(row)
    table = {}
    for method, rows in groups.items():
        done = [row for row in rows if row.get("status", "ok") == "ok" and row.get(key) is not None]
        values = [row[key] for row in done]
        table[method] = {
            "mean": statistics.fmean(values) if values else None,
            "std": (statistics.stdev(values) if len(values) > 1 else 0.0) if values else None,
            "values": values, "seeds": [row["seed"] for row in done], "n": len(values),
            "diverged": sum(row.get("status") == "diverged" for row in rows),
            "failed": sum(row.get("status") == "failed" for row in rows),
            "trainable_params": next((r["trainable_params"] for r in rows if r.get("trainable_params")), None),
            "total_params": next((r["total_params"] for r in rows if r.get("total_params")), None),
            "median_step_time_s": statistics.median(r["median_step_time_s"] for r in done) if done else None,
            "peak_memory_mb": max(r["peak_memory_mb"] for r in done) if done else None,
        }
    return table


def gap_closed(baseline: float, candidate: float, target: float, higher_is_better: bool = True) -> float | None:
    """Fraction of the baseline→target gap the candidate closes: 0 = no better than the baseline, 1 = reaches
    the target, < 0 = worse than the baseline, > 1 = beyond the target. ``None`` when the target is not
    better than the baseline (the fraction is then meaningless) or a value is not finite."""
    if not all(map(math.isfinite, (baseline, candidate, target))):
        return None
    gap = target - baseline
    if (gap <= 0) if higher_is_better else (gap >= 0):
        return None
    return (candidate - baseline) / gap


def describe(row: dict, digits: int = 4) -> str:
    """"0.7777 ± 0.0100", with the runs left out said: "0.7700 ± 0.0100 (1 of 3 diverged)", or "diverged (3 of 3)"."""
    lost = {k: row.get(k, 0) for k in ("diverged", "failed") if row.get(k, 0)}
    total = row["n"] + sum(lost.values())
    note = ", ".join(f"{count} of {total} {what}" for what, count in lost.items())
    if row["mean"] is None:
        return note or "no run"
    text = f"{row['mean']:.{digits}f} ± {row['std']:.{digits}f}"
    return f"{text} ({note})" if note else text


def format_table(table: dict[str, dict], metric: str, digits: int = 4) -> str:
    """A markdown table of :func:`aggregate`'s output: mean ± std over seeds, trainable share, step time."""
    lines = [f"| method | {metric} (mean ± std) | seeds | trainable | s/step |", "|---|---|---|---|---|"]
    for method, row in table.items():
        share = f"{row['trainable_params']:,} ({row['trainable_params'] / row['total_params']:.2%})" \
            if row.get("trainable_params") else "—"
        step = f"{row['median_step_time_s']:.3f}" if row.get("median_step_time_s") is not None else "—"
        lines.append(f"| {method} | {describe(row, digits)} | {row['n']} | {share} | {step} |")
    return "\n".join(lines)
