"""Training budgets per scale and task kind, and the per-method learning rates: the numbers in one place.

``train_preset(task_name, scale, method)`` merges the scale x kind budget with the method's learning rate
and returns a dict of :class:`~lowrank_lab.train.TrainConfig` fields plus ``max_train``/``max_eval`` (rows
passed to ``load_task``) and ``epochs`` (used only when ``max_steps`` is None, i.e. at ``full`` scale,
where the step count follows the data size: :func:`resolve_max_steps`).

Budgets on 2 CPU cores (timings measured on such a machine):

* ``smoke``: seconds, for CI. 8 steps of 8 short examples.
* ``cpu``:  minutes. Classification: every training row, 512 steps at batch 16 x 64 tokens, batches grouped
  by length (sentiment: 8,454 sentences, ~1 epoch; trec: 4,304 questions, ~1.9 epochs), evaluated on every
  validation and test row. ``benchmarks/convergence.py --plot`` prints where LoRA's and full FT's
  validation loss settle (``results/convergence/``): by step 512 on sentiment, at 704 on trec (512 stops a little
  short of trec's loss plateau; its validation accuracy has levelled by then); XGBLoRA gets 32 rounds of 16
  steps. gsm: 60 steps of 4 x 256 tokens on SmolLM2-135M (~8 s/step) plus 16 greedy generations.
* ``full``: a GPU. All data, 3 epochs, longer sequences, exact match on every validation problem.

Precision: ``smoke`` and ``cpu`` train in fp32 (reproducible numbers on CPU). ``full`` asks for
``precision="auto"``, which ``train`` resolves to bf16 autocast on a CUDA GPU with native bf16 (Ampere or
newer) and to fp32 anywhere else, so the same preset also runs unchanged on a CPU or an older GPU.
"""

from __future__ import annotations

import math

from lowrank_lab.runtime import SCALES

KINDS = ("classification", "causal_lm")
GSM_TASKS = ("gsm",)  # the causal_lm tasks; every other task is classification

# Peak learning rate per method and task kind. Adapter methods train few, zero-initialised parameters and
# want ~10-25x the full fine-tuning rate. Methods registered later (recipes.register_method(..., lr=...))
# add rows here; a method without a row uses DEFAULT_METHOD's row (LoRA's: every adapter's prior).
# Classification rates come from a probe at the cpu preset (sentiment, MiniLM, seed 0, 128 steps; val acc
# on 500): full 2e-5 -> 0.73 (on 1,000), 5e-5 -> 0.82, 1e-4 -> 0.82; LoRA r8 a16 5e-4 -> 0.67 (on 1,000),
# 1e-3 -> 0.79, 2e-3 -> 0.80, 5e-3 -> 0.80. Short budgets favour the top of the usual ranges. rsLoRA keeps
# LoRA's rate so the two differ only in scaling (alpha/sqrt(r) = 5.7 vs alpha/r = 2 at r=8, alpha=16).
# causal_lm: 2e-4 for LoRA took SmolLM2's gsm loss 1.54 -> 1.04 in 80 steps (a probe on 2 cores); 1e-5 full FT.
DEFAULT_METHOD = "lora"
LEARNING_RATES = {
    #            classification (MiniLM)   causal_lm (SmolLM2)
    "full":   {"classification": 5e-5, "causal_lm": 1e-5},
    "lora":   {"classification": 1e-3, "causal_lm": 2e-4},
    "rslora": {"classification": 1e-3, "causal_lm": 2e-4},
}

# The rates `compare --tune-lr` selected at the cpu budget (MiniLM, validation accuracy of seed 0 on a 1-2-5
# grid centred on LEARNING_RATES, which stay the grid's centres so a committed study reruns unchanged). They
# are the cpu defaults of their task; every other (task, scale) uses LEARNING_RATES. Each task names the
# results file that chose its rates and the command that wrote it; tests/test_presets.py checks that every
# rate here equals that file's `tuning[method]["lr_selected"]`.
TUNED_RATES = {
    "trec": {
        "results": "results/study-trec-minilm-cpu/results.json",
        "command": "python -m lowrank_lab compare --task trec --scale cpu --seeds 5 --tune-lr --jobs 2 --out results/study-trec-minilm-cpu --quiet",
        "lr": {"bat": 0.002, "bone": 0.002, "dora": 0.005, "full": 0.0001, "gelora": 0.002, "lora": 0.005, "lora-pro": 0.002, "lora-pro-efficient": 0.005, "rslora": 0.001, "xgblora": 0.01},
        "options": {"xgblora": {"blocks_per_round": 6, "steps_per_round": 16}},
    },
    "sentiment": {
        "results": "results/study-sentiment-minilm-cpu/results.json",
        "command": "python -m lowrank_lab compare --task sentiment --scale cpu --seeds 5 --tune-lr --jobs 2 --out results/study-sentiment-minilm-cpu --quiet",
        "lr": {"bat": 0.001, "bone": 0.002, "dora": 0.002, "full": 0.0002, "gelora": 0.002, "lora": 0.002, "lora-pro": 0.0005, "lora-pro-efficient": 0.002, "rslora": 0.001, "xgblora": 0.02},
        "options": {},
    },
}


def tuned_rates_entry(results: dict, results_path: str) -> str:
    """The ``TUNED_RATES`` entry (Python source) that a ``compare --tune-lr`` results dict selects, so a study's
    rates are copied into the presets, never typed (``python -m lowrank_lab report FOLDER --tuned-rates``)."""
    if results.get("protocol") != "tuned" or results.get("scale") != "cpu":
        raise ValueError(f"{results_path}: not a cpu-scale --tune-lr study (protocol {results.get('protocol')!r}, "
                         f"scale {results.get('scale')!r})")
    lr = {m: t["lr_selected"] for m, t in results["tuning"].items() if t.get("lr_selected") is not None}
    options = {m: t["knobs_selected"] for m, t in results["tuning"].items() if t.get("knobs_selected")}
    return (f"{results['task']!r}: {{\n    \"results\": {results_path!r},\n    \"command\": {results['command']!r},\n"
            f"    \"lr\": {lr!r},\n    \"options\": {options!r},\n}},").replace("'", '"')


def tuned_options(task_name: str, scale: str, method: str) -> dict:
    """Schedule knobs the same study selected for ``method`` (XGBLoRA's ``blocks_per_round``,
    ``steps_per_round``), which ``compare`` passes to the method's runs at its default rate; {} when none."""
    entry = TUNED_RATES.get(task_name) if scale == "cpu" else None
    return dict((entry or {}).get("options", {}).get(method, {}))


def tuned_rate(task_name: str, scale: str, method: str) -> tuple[float, str] | None:
    """(rate, results file that selected it) when ``method`` has a tuned default for the task at ``scale``."""
    entry = TUNED_RATES.get(task_name) if scale == "cpu" else None
    if entry is None or method not in entry["lr"]:
        return None
    return entry["lr"][method], entry["results"]

TRAIN_PRESETS = {
    "smoke": {
        "classification": dict(max_train=64, max_eval=64, max_steps=8, batch_size=8, max_length=48,
                               eval_batch_size=32, warmup_ratio=0.1, max_generate=0, max_new_tokens=32,
                               eval_every=None, log_every=1),
        "causal_lm": dict(max_train=16, max_eval=8, max_steps=4, batch_size=2, max_length=128,
                          eval_batch_size=4, warmup_ratio=0.1, max_generate=0, max_new_tokens=32,
                          eval_every=None, log_every=1),
    },
    "cpu": {
        "classification": dict(max_train=None, max_eval=None, max_steps=512, batch_size=16, max_length=64,
                               group_by_length=True, eval_batch_size=64, warmup_ratio=0.06, max_generate=0,
                               max_new_tokens=32, eval_every=128, log_every=8),
        "causal_lm": dict(max_train=240, max_eval=64, max_steps=60, batch_size=4, max_length=256,
                          eval_batch_size=8, warmup_ratio=0.05, max_generate=16, max_new_tokens=256,
                          eval_every=None, log_every=5),
    },
    "full": {
        "classification": dict(max_train=None, max_eval=None, max_steps=None, epochs=3, batch_size=32,
                               max_length=128, eval_batch_size=128, warmup_ratio=0.06, max_generate=0,
                               max_new_tokens=32, eval_every=200, log_every=20, precision="auto"),
        "causal_lm": dict(max_train=None, max_eval=None, max_steps=None, epochs=3, batch_size=16,
                          max_length=512, eval_batch_size=32, warmup_ratio=0.03, max_generate=None,
                          max_new_tokens=320, eval_every=200, log_every=10, precision="auto"),
    },
}

# A lesson's own cpu runs: what a class can afford (a couple of minutes per run on 2 cores), a quarter of the
# converged cpu budget above. Lessons pass these as overrides at cpu scale and read their multi-seed, converged
# tables from the studies committed under results/.
LESSON_CPU = {
    "classification": dict(max_train=2048, max_eval=1000, max_steps=128, eval_every=32),
    "causal_lm": {},
}

COMMON = dict(weight_decay=0.0, grad_accum_steps=1, max_grad_norm=1.0, precision="fp32")


def task_kind(task_name: str) -> str:
    """The kind of a task, known from its name without loading any data."""
    return "causal_lm" if task_name in GSM_TASKS else "classification"


def learning_rate(method: str, kind: str) -> float:
    """Prior peak lr of ``method`` for ``kind`` (``LEARNING_RATES``): the default where no tuned rate exists,
    and the centre of ``compare --tune-lr``'s grid."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return LEARNING_RATES.get(method, LEARNING_RATES[DEFAULT_METHOD])[kind]


def train_preset(task_name: str, scale: str, method: str = DEFAULT_METHOD) -> dict:
    """TrainConfig fields + ``max_train``/``max_eval``/``epochs`` for a task at a scale (a fresh dict)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    kind = task_kind(task_name)
    preset = {**COMMON, "epochs": None, **TRAIN_PRESETS[scale][kind]}
    tuned = tuned_rate(task_name, scale, method)
    preset["lr"] = tuned[0] if tuned else learning_rate(method, kind)
    return preset


def resolve_max_steps(preset: dict, n_train: int) -> int:
    """``max_steps`` if set, else enough optimizer steps for ``preset["epochs"]`` passes over ``n_train``."""
    if preset.get("max_steps"):
        return preset["max_steps"]
    per_step = preset["batch_size"] * preset.get("grad_accum_steps", 1)
    return max(1, math.ceil(preset["epochs"] * n_train / per_step))


def primary_metric(kind: str, scale: str) -> tuple[str, bool]:
    """(metric name, higher_is_better) used to compare runs.

    gsm exact match is ~0 for a 135M model below ``full`` scale, so it cannot separate methods
    there; the teacher-forced loss on solution tokens is the smooth stand-in (exact match is still reported).
    """
    if kind == "classification":
        return "accuracy", True
    return ("exact_match", True) if scale == "full" else ("answer_loss", False)


def lesson_overrides(task_name: str, scale: str) -> dict:
    """What a lesson overrides in ``train_preset`` at ``scale``: the short :data:`LESSON_CPU` budget at cpu
    (a fresh dict), nothing elsewhere."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return dict(LESSON_CPU[task_kind(task_name)]) if scale == "cpu" else {}


def train_config_fields(preset: dict) -> dict:
    """The subset of a preset that are TrainConfig fields (drops max_train/max_eval/epochs)."""
    return {k: v for k, v in preset.items() if k not in ("max_train", "max_eval", "epochs")}
