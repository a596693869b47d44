"""Every method side by side at a matched trainable-parameter budget: ``python -m lowrank_lab compare``.

The budget is that of LoRA at rank ``r`` (default 8) on the model's default target modules. Each method
is given the options that bring it closest to that budget (:data:`MATCHING` says how, per method; the rule
is written into every output):

* LoRA, rsLoRA and both LoRA-Pro modes use rank ``r`` itself: LoRA-Pro changes the update, not the shapes.
* Bone and Bat (one trainable matrix per layer, ``r·out`` numbers) get the rank whose trainable count is
  closest to the budget, found by injecting candidate ranks into a copy of the model and counting.
* GeLoRA spreads the same budget over layers by intrinsic dimension (its ``budget`` is LoRA r's count).
* XGBLoRA is matched by *steps*, not parameters: it trains rank-1 boosters on a few blocks at a time and
  merges them, so far fewer numbers train at any moment; its row shows that count.
* Full fine-tuning is the reference: every parameter trains.

Each (method, seed) runs as its own ``python -m lowrank_lab train`` process (so its peak memory is its own)
writing ``runs/<method>-s<seed>/metrics.json``. Resuming reuses a finished run only when the settings it
recorded (``run_spec``: method, task, model, scale, seed, options, the resolved preset with its learning
rate and steps, the lowrank-lab version) equal the ones asked for; a run folder made with other settings
stops the command before any run, naming each difference. A run file that cannot be read (an interrupted
write) is named and re-run; so is a run that failed. A diverged run is a result: it is recorded with
``status: "diverged"`` (no metric, strict JSON), left out of the means, counted in the table, and the other
runs go on. Outputs in ``--out``: ``results.json`` (command, matching, every summary), ``results.csv``,
``table.md`` (mean ± std over seeds), ``reproduction.md`` (each paper's claim: reproduced or not),
``curves.png``, ``metric_vs_params.png``, ``cost.png``.
"""

from __future__ import annotations

import copy
import csv
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lowrank_lab import experiment, files, presets, recipes

# The order of the table; every name must be registered (recipes.METHODS) for compare to run it.
COMPARE_METHODS = ("full", "lora", "rslora", "lora-pro", "lora-pro-efficient", "xgblora", "bone", "bat", "gelora")
# How each method meets the budget: "same_r" (rank r), "search_r" (the rank closest in trainable parameters),
# "budget" (the method spreads LoRA r's budget itself), "steps" (matched by steps only), "reference".
MATCHING = {
    "full": "reference", "lora": "same_r", "rslora": "same_r", "lora-pro": "same_r",
    "lora-pro-efficient": "same_r", "xgblora": "steps", "bone": "search_r", "bat": "search_r", "gelora": "budget",
}
MATCHING_TEXT = {
    "reference": "reference: every parameter trains",
    "same_r": "rank r: the budget itself",
    "search_r": "the rank whose trainable count is closest to the budget",
    "budget": "spreads the budget of LoRA rank r over layers",
    "steps": "equal optimizer steps; rank-1 boosters train on a few blocks at a time (fewer parameters)",
}
CSV_FIELDS = ("method", "seed", "status", "folder", "options_r", "metric", "metric_value", "test_metric_value", "final_train_loss",
              "trainable_params", "total_params", "lr", "steps", "median_step_time_s", "peak_memory_mb", "wall_time_s")


def _trainable(method: str, model, model_name: str, task, r: int) -> tuple[int, int] | None:
    """(trainable parameters, largest side of an adapted layer) of ``method`` at rank ``r`` on a copy of
    ``model``; None if ``r`` is refused (e.g. Bat needs r to divide every side)."""
    from lowrank_lab.adapters import adapter_layers, count_parameters

    try:
        prepared = recipes.prepare(method, copy.deepcopy(model), model_name, task, recipes.MethodOptions(r=r))
    except ValueError:
        return None
    sides = [max(layer.in_features, layer.out_features) for layer in adapter_layers(prepared).values()]
    return count_parameters(prepared)[0], max(sides, default=0)


def plan(methods, task_name: str, model_name: str, r: int) -> dict[str, dict]:
    """For each method: the options it runs with and the trainable count they give, checked before any run.

    Raises ``ValueError`` when a method cannot meet the budget (no rank gets within a factor of 2 of it).
    """
    from lowrank_lab.assets import load_model, load_task

    task = load_task(task_name, max_train=8, max_eval=8)  # only shapes and the head size matter here
    kind = presets.task_kind(task_name)
    model = load_model(model_name, kind=kind, num_labels=task.num_labels if kind == "classification" else None)
    # Counting needs shapes, not values: on the meta device every trial copy below is free.
    model = model.to("meta")
    lora = _trainable("lora", model, model_name, task, r)
    if lora is None:
        raise ValueError(f"r={r} is not a valid LoRA rank for {model_name!r}, so it defines no budget")
    budget = lora[0]
    planned = {}
    for method in methods:
        rule = MATCHING.get(method, "same_r")
        chosen = 1 if rule == "steps" else r  # XGBLoRA: the paper's rank-1 boosters
        if rule == "search_r":
            best, largest_side = None, None
            for candidate in range(1, 8 * r + 1):
                if largest_side is not None and candidate > largest_side:
                    break  # no layer accepts a rank beyond its own size
                result = _trainable(method, model, model_name, task, candidate)
                if result is None:
                    continue  # this rank is refused (Bat: not a divisor); a larger one may be accepted
                count, largest_side = result
                if best is None or abs(count - budget) < abs(best[1] - budget):
                    best = (candidate, count)
                if count > budget:
                    break  # counts grow with the rank: nothing beyond can be closer
            if best is None or not budget / 2 <= best[1] <= 2 * budget:
                got = "no rank was accepted" if best is None else f"closest: r={best[0]} with {best[1]:,}"
                raise ValueError(f"method {method!r} cannot meet the budget of LoRA r={r} ({budget:,} trainable "
                                 f"parameters) on {model_name!r}: {got}")
            chosen = best[0]
        planned[method] = {"r": chosen, "rule": rule, "rule_text": MATCHING_TEXT[rule], "budget": budget}
        if method == "xgblora":  # the number of blocks L bounds its blocks-per-round knob
            from lowrank_lab.adapters import adapter_layers
            from lowrank_lab.methods.xgblora import group_blocks

            boosters = recipes.prepare("lora", copy.deepcopy(model), model_name, task, recipes.MethodOptions(r=1))
            planned[method]["blocks"] = len(group_blocks(adapter_layers(boosters)))
    return planned


# ---------------------------------------------------------------------------------------------- runs
# Learning-rate grids live on the 1-2-5 lattice (..., 1e-4, 2e-4, 5e-4, 1e-3, ...: neighbours 2-2.5x apart), so
# every study, and a later one centred on a new default, names the same rates and can reuse their runs.
LR_GRID_POINTS = 4  # the lattice rate nearest the method's default, one below and two above it: a 10x span
# (short budgets favour the top of a method's range); an edge that wins widens the grid (LR_GRID_EXTENSIONS)
LR_GRID_EXTENSIONS = 2  # at most this many extra points beyond an edge where the best rate sits
TUNE_SEED = 0  # the grid runs use this seed; its run at the selected rate is also the first evaluation seed


@dataclass(frozen=True)
class RunKey:
    """What names one run of a comparison: method, seed, and the settings tuning changes (``lr`` None = the
    preset's default rate; ``extra`` = the method's schedule knobs as sorted (name, value) pairs)."""

    method: str
    seed: int
    lr: float | None = None
    extra: tuple = ()

    @property
    def folder(self) -> str:
        parts = [self.method] + ([f"lr{self.lr:.3g}"] if self.lr is not None else [])
        parts += [f"{name.replace('_', '-')}{value}" for name, value in self.extra]
        return "-".join(parts) + f"-s{self.seed}"

    def path(self, out: Path) -> Path:
        return out / "runs" / self.folder


def _run_dir(out: Path, method: str, seed: int, lr: float | None = None, extra: tuple = ()) -> Path:
    return RunKey(method, seed, lr, extra).path(out)


def train_arguments(method, task_name, model_name, scale, seed, r, run_dir: Path, show_progress: bool,
                    lr: float | None = None, extra: dict | None = None) -> list[str]:
    """The ``python -m lowrank_lab train`` arguments of one run (the schedule knobs as their CLI flags)."""
    args = ["train", "--method", method, "--task", task_name, "--model", model_name, "--scale", scale,
            "--seed", str(seed), "--r", str(r), "--out", str(run_dir)]
    if lr is not None:
        args += ["--lr", repr(lr)]
    for name, value in sorted((extra or {}).items()):
        args += ["--" + name.replace("_", "-"), str(value)]
    return args if show_progress else args + ["--quiet"]


def _train_in_subprocess(method, task_name, model_name, scale, seed, r, run_dir: Path, show_progress: bool,
                         lr: float | None = None, extra: dict | None = None, threads: int | None = None) -> str:
    """One run = one ``python -m lowrank_lab train`` process: its peak memory is its own (on CPU the process
    peak RSS is all a process can report), and a crash loses only that run. Returns what the child printed
    when it did not finish normally (its own status is in its metrics.json)."""
    import subprocess

    cmd = [sys.executable, "-m", "lowrank_lab",
           *train_arguments(method, task_name, model_name, scale, seed, r, run_dir, show_progress, lr, extra)]
    env = dict(os.environ)
    if threads is not None:  # parallel runs share the cores; a user's own setting wins
        env.setdefault("OMP_NUM_THREADS", str(threads))
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if done.returncode == 0:
        return ""
    return f"exit {done.returncode}: {shlex.join(cmd)}\n{done.stdout[-2000:]}"


def _recorded(run_dir: Path) -> tuple[dict | None, str]:
    """(metrics, "") of a finished run folder, or (None, why it cannot be reused as it is)."""
    path = run_dir / "metrics.json"
    if not path.exists():
        return None, "not run yet"
    try:
        metrics = files.read_json(path)
    except ValueError as err:
        return None, str(err)
    if not isinstance(metrics, dict):
        return None, f"cannot read {path}: not a JSON object"
    return metrics, ""


def _mismatch(run_dir: Path, spec: dict) -> str | None:
    """Why the run recorded in ``run_dir`` is not the run ``spec`` asks for (None: it is, or there is none)."""
    metrics, _ = _recorded(run_dir)
    if metrics is None:
        return None  # nothing there, or unreadable: it will be (re-)run
    recorded = metrics.get("run_spec")
    if not isinstance(recorded, dict):
        return f"{run_dir}: made without a record of its settings (an older lowrank-lab)"
    differences = experiment.spec_differences(recorded, spec)
    return f"{run_dir}: " + "; ".join(differences) if differences else None


def _refuse(out: Path, problems: list[str]) -> None:
    if problems:
        raise ValueError(f"{out} holds runs made with other settings than this comparison asks for, so they "
                         f"cannot be reused; use another --out or delete them:\n  " + "\n  ".join(problems))


class RunPool:
    """The runs of one comparison: each (re)used only if its recorded settings match, run otherwise, ``jobs``
    at a time (each run its own process); every outcome recorded (ok, diverged, failed)."""

    def __init__(self, out: Path, task_name: str, model_name: str, scale: str, planned: dict, show_progress: bool,
                 jobs: int = 1):
        self.out, self.task_name, self.model_name, self.scale = out, task_name, model_name, scale
        self.planned, self.show_progress, self.jobs = planned, show_progress, jobs
        self.done: dict[RunKey, dict] = {}
        self.trained: set[RunKey] = set()  # the runs this pool trained (the rest were reused from the folder)

    def spec(self, key: RunKey) -> dict:
        options = recipes.MethodOptions(r=self.planned[key.method]["r"], extra=dict(key.extra))
        overrides = {"lr": key.lr} if key.lr is not None else {}
        return experiment.run_spec(key.method, self.task_name, self.model_name, self.scale, key.seed, options,
                                   overrides)

    def check(self, keys) -> None:
        """Refuse (ValueError) if any of ``keys`` has a folder holding another run; nothing runs."""
        _refuse(self.out, [p for p in (_mismatch(k.path(self.out), self.spec(k)) for k in keys) if p])

    def _run_one(self, key: RunKey) -> dict:
        run_dir, spec = key.path(self.out), self.spec(key)
        metrics, why = _recorded(run_dir)
        if metrics is not None and metrics.get("status", "ok") == "failed":
            metrics, why = None, f"its last attempt failed ({metrics.get('error')})"
        if metrics is None:
            if why != "not run yet":
                print(f"{key.folder}: re-running: {why}")
            threads = max(1, (os.cpu_count() or 1) // self.jobs) if self.jobs > 1 else None
            self.trained.add(key)  # a set: the worker threads may add at once
            output = _train_in_subprocess(key.method, self.task_name, self.model_name, self.scale, key.seed,
                                          self.planned[key.method]["r"], run_dir, self.show_progress,
                                          lr=key.lr, extra=dict(key.extra), threads=threads)
            metrics, why = _recorded(run_dir)
            if metrics is None or metrics.get("run_spec") != spec:  # died before recording anything of its own
                metrics = {"status": "failed", "error": output or why, "run_spec": spec}
        metrics = {**metrics, "method": key.method, "seed": key.seed, "options_r": self.planned[key.method]["r"],
                   "folder": key.folder}
        metrics.setdefault("status", "ok")
        if metrics["status"] == "ok":
            print(f"{key.folder:<34} {metrics['metric']} = {metrics['metric_value']:.4f}  "
                  f"({metrics['trainable_params']:,} trainable, {metrics['median_step_time_s']:.3f} s/step)")
        else:
            print(f"{key.folder:<34} {metrics['status'].upper()}: {str(metrics.get('error'))[-300:]}")
        return metrics

    def get(self, keys) -> list[dict]:
        """The metrics of ``keys`` (in order), running the missing ones ``jobs`` at a time."""
        keys = list(dict.fromkeys(keys))
        self.check([k for k in keys if k not in self.done])
        todo = [k for k in keys if k not in self.done]
        if self.jobs > 1 and len(todo) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.jobs) as pool:  # threads only wait on the child processes
                for key, metrics in zip(todo, pool.map(self._run_one, todo)):
                    self.done[key] = metrics
        else:
            for key in todo:
                self.done[key] = self._run_one(key)
        return [self.done[k] for k in keys]


def _validation_score(metrics: dict, higher_is_better: bool):
    """Sort key of a grid run on VALIDATION only (never test): the primary metric, ties broken by the
    validation loss; None for a run that did not finish (diverged, failed)."""
    if metrics.get("status", "ok") != "ok" or metrics.get("metric_value") is None:
        return None
    value = metrics["metric_value"] if higher_is_better else -metrics["metric_value"]
    loss = (metrics.get("validation") or {}).get("loss")
    return (value, -loss if loss is not None and higher_is_better else 0.0)


def lattice_rate(index: int) -> float:
    """The ``index``-th rate of the 1-2-5 lattice: index 3e + j is (1, 2, 5)[j] x 10^e."""
    exponent, position = divmod(index, 3)
    return float(f"{(1, 2, 5)[position]}e{exponent}")


def lattice_index(rate: float) -> int:
    """The index of the lattice rate nearest ``rate`` in log scale."""
    import math

    start = 3 * math.floor(math.log10(rate))
    return min(range(start - 1, start + 4), key=lambda i: abs(math.log(lattice_rate(i) / rate)))


def lr_grid(center: float, points: int = LR_GRID_POINTS) -> list[float]:
    """``points`` consecutive 1-2-5 lattice rates around the one nearest ``center``: (points - 1) // 2 below
    it, the rest above (4 points: one below, two above)."""
    first = lattice_index(center) - (points - 1) // 2
    return [lattice_rate(i) for i in range(first, first + points)]


def _grid_entry(lr: float, metrics: dict) -> dict:
    return {"lr": lr, "status": metrics["status"], "validation": metrics.get("metric_value"),
            "validation_loss": (metrics.get("validation") or {}).get("loss"), "folder": metrics["folder"]}


def tune_lr(pool: RunPool, method: str, center: float, higher_is_better: bool, extra: tuple = ()) -> dict:
    """Run ``method`` (seed :data:`TUNE_SEED`) over a log grid around ``center``, widening it by up to
    :data:`LR_GRID_EXTENSIONS` points past an edge while the best rate sits there; select on validation.

    Returns ``{"lr_grid": [{"lr", "status", "validation", ...}] (sorted by lr), "lr_selected": lr or None,
    "edge": "low"/"high"/None (the selected rate is still the grid's edge after the extensions)}``."""
    grid = lr_grid(center)
    extended = {"low": 0, "high": 0}
    while True:
        results = dict(zip(grid, pool.get([RunKey(method, TUNE_SEED, lr, extra) for lr in grid])))
        scored = {lr: _validation_score(m, higher_is_better) for lr, m in results.items()}
        finished = {lr: s for lr, s in scored.items() if s is not None}
        best = max(finished, key=lambda lr: (finished[lr], -lr)) if finished else None  # ties: the smaller rate
        ordered = sorted(grid)
        side = "low" if best == ordered[0] else "high" if best == ordered[-1] else None
        if best is None or side is None or extended[side] >= LR_GRID_EXTENSIONS:
            break
        extended[side] += 1
        grid.append(lattice_rate(lattice_index(best) + (-1 if side == "low" else 1)))
    return {"lr_grid": [_grid_entry(lr, results[lr]) for lr in sorted(grid)], "lr_selected": best, "edge": side,
            "selected_on": "validation"}


def knob_grid(method: str, planned: dict, steps: int) -> list[dict]:
    """Schedule knobs tuned at the selected rate where the paper leaves them open (XGBLoRA: blocks per round
    L_s and steps per round κ, keeping at least 32 rounds); [] for other methods."""
    if method != "xgblora":
        return []
    from lowrank_lab.methods.xgblora import default_blocks_per_round

    blocks = planned[method]["blocks"]
    per_round = sorted({default_blocks_per_round(blocks), blocks})
    if steps is None:  # full scale: K follows the data size; keep the default kappa
        return [{"blocks_per_round": b} for b in per_round]
    kappas = sorted({max(1, steps // 32), max(1, steps // 64)}, reverse=True)
    return [{"blocks_per_round": b, "steps_per_round": k} for b in per_round for k in kappas]


def compare(task_name: str, model_name: str | None = None, scale: str = "smoke", seeds: int = 1,
            out: str | Path = "runs/compare", methods=COMPARE_METHODS, r: int = 8, show_progress: bool = True,
            command: str | None = None, tune: bool = False, shared_lr: float | None = None, jobs: int = 1) -> dict:
    """Run (or resume) the comparison; return the results dict also written to ``out/results.json``.

    * ``tune``: per method, a learning-rate grid selected on validation (:func:`tune_lr`), then the schedule
      knobs (:func:`knob_grid`), then ``seeds`` seeds at the selected settings, reported on test.
    * ``shared_lr``: every adapter method at this one rate, full fine-tuning at its own (the Bone paper's
      protocol); excludes ``tune``.
    * ``jobs``: runs at a time (each a process with cpu_count/jobs threads).

    ``results["failed"]`` lists runs that broke (not diverged) with their error; the CLI exits non-zero then.
    """
    from lowrank_lab.assets import TASK_NAMES
    from lowrank_lab.runtime import SCALES

    recipes.load_method_plugins()
    methods = tuple(methods)
    if not methods:
        raise ValueError("methods must name at least one method, got an empty list")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:  # the same runs would count twice in the mean and the std
        raise ValueError(f"methods lists {repeated} more than once: {list(methods)}")
    unknown = [m for m in methods if m not in recipes.METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; registered: {sorted(recipes.METHODS)}")
    if task_name not in TASK_NAMES:
        raise ValueError(f"task must be one of {TASK_NAMES}, got {task_name!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    if shared_lr is not None and (tune or not isinstance(shared_lr, (int, float)) or not 0 < shared_lr < float("inf")):
        raise ValueError(f"shared_lr must be a positive number and excludes tune, got shared_lr={shared_lr!r}, "
                         f"tune={tune!r}")
    model_name = model_name or experiment.default_model(task_name)
    from lowrank_lab.assets import MODEL_NAMES, model_spec

    if model_name not in MODEL_NAMES:
        raise ValueError(f"model must be one of {MODEL_NAMES}, got {model_name!r}")
    kind = presets.task_kind(task_name)
    if kind not in model_spec(model_name).kinds:
        raise ValueError(f"model {model_name!r} cannot do task {task_name!r} ({kind})")
    out = Path(out)
    files.check_writable_folder(out)
    planned = plan(methods, task_name, model_name, r)  # every budget problem surfaces before the first run
    metric, higher = presets.primary_metric(kind, scale)
    pool = RunPool(out, task_name, model_name, scale, planned, show_progress, jobs)

    def fixed_lr(method):  # the rate of an untuned run: None = the preset's default
        return shared_lr if shared_lr is not None and method not in recipes.OPTIONLESS_METHODS else None

    start = time.perf_counter()
    def default_extra(method):  # an untuned run at the default rate also takes the knobs tuned with it
        if tune or shared_lr is not None:
            return ()
        return tuple(sorted(presets.tuned_options(task_name, scale, method).items()))

    settings = {m: {"lr": fixed_lr(m), "extra": default_extra(m)} for m in methods}
    tuning = {}
    if tune:
        centers = {m: presets.learning_rate(m, kind) for m in methods}
        # every method's first grid at once (jobs at a time; get refuses stale runs before running any)
        pool.get([RunKey(m, TUNE_SEED, lr) for m in methods for lr in lr_grid(centers[m])])
        steps = presets.train_preset(task_name, scale)["max_steps"]
        for method in methods:
            tuning[method] = tune_lr(pool, method, centers[method], higher)
            settings[method]["lr"] = tuning[method]["lr_selected"]
            knobs = knob_grid(method, planned, steps)
            if knobs and settings[method]["lr"] is not None:
                candidates = [tuple(sorted(k.items())) for k in knobs]
                runs = pool.get([RunKey(method, TUNE_SEED, settings[method]["lr"], c) for c in candidates])
                scored = [(_validation_score(m, higher), c) for m, c in zip(runs, candidates)]
                best = max((s for s in scored if s[0] is not None), default=None, key=lambda s: s[0])
                tuning[method]["knob_grid"] = [{**dict(c), "status": m["status"], "validation": m.get("metric_value"),
                                                "folder": m["folder"]} for m, c in zip(runs, candidates)]
                tuning[method]["knobs_selected"] = dict(best[1]) if best else None
                settings[method]["extra"] = best[1] if best else ()
    else:
        pool.check([RunKey(m, s, settings[m]["lr"], settings[m]["extra"]) for m in methods for s in range(seeds)])

    evaluated = [m for m in methods if not tune or settings[m]["lr"] is not None]  # no rate finished: no seeds
    keys = [RunKey(m, s, settings[m]["lr"], settings[m]["extra"]) for m in evaluated for s in range(seeds)]
    summaries = pool.get(keys)
    histories = {}
    for key, metrics in zip(keys, summaries):
        if metrics["status"] == "ok" and key.method not in histories:
            try:
                histories[key.method] = files.read_json(key.path(out) / "history.json")
            except (ValueError, FileNotFoundError) as err:
                print(f"{key.folder}: no curve: {err}")
    failed = [{"method": m["method"], "seed": m["seed"], "folder": m["folder"], "error": m.get("error")}
              for m in pool.done.values() if m["status"] == "failed"]
    results = {
        "command": command, "task": task_name, "model": model_name, "scale": scale, "seeds": seeds, "r": r,
        "methods": list(methods),
        "budget": next(iter(planned.values()))["budget"], "matching": planned, "metric": metric,
        "higher_is_better": higher, "protocol": "tuned" if tune else "shared_lr" if shared_lr is not None else "preset",
        "shared_lr": shared_lr, "jobs": jobs, "tuning": tuning,
        "settings": {m: {"lr": s["lr"] if s["lr"] is not None else presets.train_preset(task_name, scale, m)["lr"],
                         "lr_source": _lr_source(tune, shared_lr, m, task_name, scale),
                         "extra": dict(s["extra"])} for m, s in settings.items()},
        "table": experiment.aggregate(summaries, methods=methods),
        "test_table": experiment.aggregate(summaries, key="test_metric_value", methods=methods),
        "runs": summaries, "failed": failed, "wall_time_s": time.perf_counter() - start,
        "runs_trained": len(pool.trained), "runs_reused": len(pool.done) - len(pool.trained), "cpu_count": os.cpu_count(),
    }
    results["reproduction"] = reproduction_rows(results)
    write_outputs(out, results, histories)
    return results


def _lr_source(tune: bool, shared_lr: float | None, method: str, task_name: str, scale: str) -> str:
    """Where a method's rate came from: this study's tuning, the shared rate, a tuned default's results file,
    or the prior ``presets.LEARNING_RATES``."""
    if tune:
        return "tuned here"
    if shared_lr is not None and method not in recipes.OPTIONLESS_METHODS:  # the methods fixed_lr shares it with
        return "shared"
    tuned = presets.tuned_rate(task_name, scale, method)
    return tuned[1] if tuned else "presets.LEARNING_RATES"


def method_order(results: dict) -> list[str]:
    """The table's methods in the order compare ran them (JSON files store objects with sorted keys)."""
    known = results.get("methods") or [m for m in COMPARE_METHODS if m in results["table"]]
    return [m for m in known if m in results["table"]] + sorted(set(results["table"]) - set(known))


def markdown(results: dict) -> str:
    metric = results["metric"] + ("" if results["higher_is_better"] else ", lower is better")
    tests = test_table(results)
    lines = [f"{results['task']} · {results['model']} · scale {results['scale']} · {results['seeds']} seed(s) · "
             f"budget: LoRA r={results['r']} = {results['budget']:,} trainable parameters · protocol: "
             f"{_protocol_text(results)}",
             "", f"| method | budget rule | r | lr | validation {metric} (mean ± std) | test (mean ± std) | trainable | "
             "s/step | peak memory (MB) |", "|---|---|---|---|---|---|---|---|---|"]
    for method in method_order(results):
        row, match = results["table"][method], results["matching"][method]
        trainable = (f"{row['trainable_params']:,} ({row['trainable_params'] / row['total_params']:.2%})"
                     if row.get("trainable_params") else "—")
        step = f"{row['median_step_time_s']:.3f}" if row.get("median_step_time_s") is not None else "—"
        memory = f"{row['peak_memory_mb']:.0f}" if row.get("peak_memory_mb") is not None else "—"
        setting = (results.get("settings") or {}).get(method) or {}
        lr = f"{setting['lr']:.3g}" if setting.get("lr") is not None else "preset"
        if setting.get("extra"):
            lr += " (" + ", ".join(f"{k}={v}" for k, v in setting["extra"].items()) + ")"
        lines.append(f"| {method} | {match['rule_text']} | {match['r'] if match['rule'] != 'reference' else '—'} | "
                     f"{lr} | {experiment.describe(row)} | {experiment.describe(tests[method])} | {trainable} | "
                     f"{step} | {memory} |")
    if results.get("command"):
        lines += ["", f"Produced by: `{results['command']}`"]
    return "\n".join(lines)


# Each seed paper's headline claim, the paper's own evidence (quoted, their setting) and the comparison of
# our table that tests its direction at our (much smaller) scale. kind "better": method beats baseline on the
# metric; "faster": lower median step time; "fewer_params": fewer trainable parameters and not worse.
REPRODUCTION_CLAIMS = (
    {"paper": "LoRA (arXiv 2106.09685)", "claim": "LoRA r=8 matches full fine-tuning with a tiny fraction of the parameters",
     "paper_evidence": "GLUE/GPT-3: on par with or better than full FT", "method": "lora", "baseline": "full",
     "kind": "matches", "tolerance": 0.02},
    {"paper": "rsLoRA (arXiv 2312.03732)", "claim": "alpha/sqrt(r) scaling learns better than alpha/r",
     "paper_evidence": "GSM8K Llama-2-7B r=8 (LoRA-Pro's table): 45.62 vs 42.08", "method": "rslora",
     "baseline": "lora", "kind": "better"},
    {"paper": "LoRA-Pro (arXiv 2407.18242)", "claim": "adjusted gradients beat LoRA, closing most of the gap to full FT",
     "paper_evidence": "GSM8K Llama-2-7B r=8: 54.23 vs LoRA 42.08", "method": "lora-pro", "baseline": "lora",
     "kind": "better", "gap_to": "full"},
    {"paper": "XGBLoRA (arXiv 2410.19694)", "claim": "rank-1 boosting beats LoRA with far fewer trainable parameters",
     "paper_evidence": "abstract: better than LoRA, fewer parameters and less memory (tables not verified)",
     "method": "xgblora", "baseline": "lora", "kind": "fewer_params"},
    {"paper": "Bone (arXiv 2409.15371)", "claim": "Bone beats LoRA at a similar parameter count",
     "paper_evidence": "GSM8K Llama-2-7B: 49.36 (87.0M) vs LoRA 38.97 (89.9M)", "method": "bone", "baseline": "lora",
     "kind": "better"},
    {"paper": "Bone (arXiv 2409.15371)", "claim": "Bone computes faster than LoRA",
     "paper_evidence": "README: 'faster computation' (PEFT bench: about the same time)", "method": "bone",
     "baseline": "lora", "kind": "faster"},
    {"paper": "Bone/Bat (arXiv 2409.15371)", "claim": "the weight guide (Bat) beats plain Bone",
     "paper_evidence": "PEFT MetaMathQA bench, Llama-3.2-3B: 50.42 vs 48.67", "method": "bat", "baseline": "bone",
     "kind": "better"},
    {"paper": "GeLoRA (arXiv 2412.09250)", "claim": "intrinsic-dimension ranks beat uniform LoRA at the same budget",
     "paper_evidence": "DeBERTaV3 GLUE: better than LoRA at equal budget (numbers not verified)", "method": "gelora",
     "baseline": "lora", "kind": "better"},
)


def seed_values(results: dict, method: str, key: str = "test_metric_value") -> dict[int, float]:
    """{seed: value} of ``method``'s finished runs in a study (in a tuned study, the selected rate's runs only):
    what a paired verdict pairs."""
    return {run["seed"]: run[key] for run in results["runs"]
            if run["method"] == method and run.get("status", "ok") == "ok" and run.get(key) is not None}


def reproduction_rows(results: dict) -> list[dict]:
    """Our three-way verdict on each claim whose methods are in ``results``, from the paired per-seed
    differences on the TEST split (validation chose the settings): the mean difference, its 95% CI, the
    smallest difference the study could detect, and ``reproduced`` / ``contradicted`` / ``inconclusive``."""
    from lowrank_lab import stats

    higher, rows = results["higher_is_better"], []
    for claim in REPRODUCTION_CLAIMS:
        if claim["method"] not in results["table"] or claim["baseline"] not in results["table"]:
            continue
        if claim["kind"] == "faster":  # seconds per step, lower is better
            key, key_higher, unit = "median_step_time_s", False, "s/step"
        else:
            key, key_higher, unit = "test_metric_value", higher, f"test {results['metric']}"
        ours, base = seed_values(results, claim["method"], key), seed_values(results, claim["baseline"], key)
        threshold = -claim.get("tolerance", 0.0)  # "matches": not worse by more than the tolerance
        paired = stats.paired_difference(ours, base, key_higher, threshold)
        if paired["n"] == 0:
            measured = f"no seed where both finished ({claim['method']}: {len(ours)}, {claim['baseline']}: {len(base)})"
        else:
            mean_ours, mean_base = (sum(ours[s] for s in paired["seeds"]) / paired["n"],
                                    sum(base[s] for s in paired["seeds"]) / paired["n"])
            measured = (f"{unit} {mean_ours:.4f} vs {mean_base:.4f} ({claim['baseline']}); paired difference "
                        f"{paired['mean']:+.4f}" + (f", 95% CI {stats.ci_text(paired)}, detectable "
                                                     f"±{paired['detectable']:.4f}" if paired["ci95"] else ", no CI (1 seed)")
                        + f"; n={paired['n']}")
            if claim["kind"] == "matches":
                measured += f"; claim holds if the difference is > -{claim['tolerance']}"
            if claim["kind"] == "fewer_params":
                measured += (f"; trainable {results['table'][claim['method']]['trainable_params']:,} vs "
                             f"{results['table'][claim['baseline']]['trainable_params']:,}")
            target = seed_values(results, claim.get("gap_to", ""), key) if claim.get("gap_to") else {}
            if target:
                from lowrank_lab.experiment import gap_closed

                fraction = gap_closed(mean_base, mean_ours, sum(target.values()) / len(target), higher)
                measured += "; gap to full FT closed: " + ("n/a (full FT not better)" if fraction is None
                                                           else f"{fraction:.0%}")
        rows.append({**claim, "measured": measured, "verdict": paired["verdict"], "ci95": paired["ci95"],
                     "threshold": threshold,
                     "difference": paired["mean"], "detectable": paired["detectable"], "n": paired["n"],
                     "ci_method": paired["ci_method"], "split": "test" if key == "test_metric_value" else key})
    return rows


def reproduction_markdown(results: dict) -> str:
    note = ("At smoke scale a few steps on a few examples exercise the code; the verdicts test nothing."
            if results["scale"] == "smoke" else
            "The papers' evidence is theirs (their models and data); ours is a direction test on a small model and "
            "budget. Verdicts come from the 95% CI of the paired per-seed difference on test: reproduced (CI on the "
            "claimed side), contradicted (CI on the other side), inconclusive (CI covers the threshold).")
    lines = [f"Reproduction at our scale: {results['task']} · {results['model']} · {results['scale']} · "
             f"{results['seeds']} seed(s) · protocol: {_protocol_text(results)}. {note}", "",
             "| paper | claim | paper's evidence | our measurement | verdict |", "|---|---|---|---|---|"]
    for row in results.get("reproduction") or reproduction_rows(results):
        lines.append(f"| {row['paper']} | {row['claim']} | {row['paper_evidence']} | {row['measured']} | "
                     f"**{row['verdict']}** |")
    return "\n".join(lines)


def _protocol_text(results: dict) -> str:
    protocol = results.get("protocol", "preset")
    if protocol == "tuned":
        return "each method at its own learning rate, selected on validation"
    if protocol == "shared_lr":
        return f"one shared learning rate {results['shared_lr']:g} for every adapter (full FT at its own)"
    sources = {s.get("lr_source") for s in (results.get("settings") or {}).values()}
    studies = sorted(x for x in sources if x and x.endswith(".json"))  # results files that chose the rates
    if studies and sources == set(studies):
        return f"each method at its default learning rate, selected by `compare --tune-lr` ({', '.join(studies)})"
    if studies:
        return f"each method at its default learning rate (tuned in {', '.join(studies)} where listed there)"
    return "each method at its preset learning rate"


def write_reports(out: Path, results: dict) -> None:
    """``table.md``, ``reproduction.md`` and ``paired_differences.png`` from ``results`` (its ``reproduction``
    rows): what ``compare`` writes and ``python -m lowrank_lab report --write`` re-renders."""
    import matplotlib.pyplot as plt

    from lowrank_lab.plotting import plot_paired_differences

    files.write_text(out / "table.md", markdown(results) + "\n")
    files.write_text(out / "reproduction.md", reproduction_markdown(results) + "\n")
    if any(r.get("difference") is not None for r in results.get("reproduction") or []):
        title = f"{results['task']} ({results['model']}, {results['scale']})"
        plt.close(plot_paired_differences(results["reproduction"], out / "paired_differences.png",
                                          f"{title}: paired differences over {results['seeds']} seeds (test), 95% CI"))


def write_outputs(out: Path, results: dict, histories: dict) -> None:
    import matplotlib.pyplot as plt

    from lowrank_lab.plotting import method_color, plot_curves, plot_lr_sensitivity

    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / "results.json", results)

    def write_csv(path):
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(results["runs"])

    files.atomic_write(out / "results.csv", write_csv)
    write_reports(out, results)

    title = f"{results['task']} ({results['model']}, {results['scale']})"
    if histories:
        plt.close(plot_curves(histories, out / "curves.png", title=f"{title}, seed 0", metric=results["metric"]))
    table = {m: row for m, row in results["table"].items() if row["mean"] is not None}  # finished runs only
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (method, row) in enumerate(table.items()):
        ax.errorbar(row["trainable_params"], row["mean"], yerr=row["std"], fmt="o", color=method_color(method, i),
                    capsize=3, label=method)
    ax.set(xscale="log", xlabel="trainable parameters (log)", ylabel=f"validation {results['metric']}",
           title=f"{title}: metric vs trainable parameters")
    if table:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out / "metric_vs_params.png")
    plt.close(fig)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = list(table)
    colors = [method_color(m, i) for i, m in enumerate(names)]
    ax_t.bar(names, [table[m]["median_step_time_s"] for m in names], color=colors)
    ax_m.bar(names, [table[m]["peak_memory_mb"] for m in names], color=colors)
    ax_t.set(ylabel="median s / optimizer step", title="step time")
    ax_m.set(ylabel="peak memory (MB)", title="peak memory (CPU: peak RSS of the run's process; GPU: allocator peak)")
    for ax in (ax_t, ax_m):
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "cost.png")
    plt.close(fig)
    if results.get("tuning"):
        plt.close(plot_lr_sensitivity(results["tuning"], out / "lr_sensitivity.png", results["metric"],
                                      f"{title}: validation {results['metric']} against learning rate"))


RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"  # the repository's committed studies


def committed_results(name: str) -> dict | None:
    """``results/<name>/results.json`` of the repository (a committed study, e.g. "study-trec-minilm-cpu"), or
    None when this checkout does not have it (a non-editable install carries no results/). A file that is
    there but unreadable raises, naming it."""
    path = RESULTS_DIR / name / "results.json"
    return files.read_json(path) if path.exists() else None


SENTIMENT_STUDIES = ("study-sentiment-minilm-cpu", "compare-sentiment-minilm-cpu")  # newest first (lessons 01-05)


def first_committed_study(names, methods=()) -> tuple[str, dict] | None:
    """The first of the committed studies ``names`` (newest first) that ran every one of ``methods``, as
    (name, results); None when this checkout has none of them."""
    for name in names:
        results = committed_results(name)
        if results is not None and all(m in results["table"] for m in methods):
            return name, results
    return None


def multi_seed_evidence(methods, own_runs: list[dict], use_committed: bool = True, names=SENTIMENT_STUDIES):
    """What a lesson's paired verdicts on ``methods`` rest on: the first committed study in ``names`` that ran
    them all (when ``use_committed``), else the lesson's own run summaries ``own_runs``. Returns
    ({method: {seed: test value}}, {method: test-table row}, a line naming the source). Test, because a study
    chose its rates on validation and reports on test, as README and lesson 06 do."""
    methods = list(methods)
    found = first_committed_study(names, methods) if use_committed else None
    if found is None:
        own = {"runs": own_runs}
        seeds = sorted({run["seed"] for run in own_runs})
        source = f"this notebook's runs (seeds {seeds})" + ("; no committed study in this checkout" if use_committed else "")
        return ({m: seed_values(own, m) for m in methods},
                experiment.aggregate(own_runs, key="test_metric_value", methods=methods), source)
    name, study = found
    first = next(run for run in study["runs"] if run["method"] == methods[0])
    source = (f"committed study results/{name}/ ({study['seeds']} seeds, {first['steps']} steps on {first['n_train']} "
              f"rows per run, test {study['metric']}; `{study['command']}`)")
    table = test_table(study)
    return {m: seed_values(study, m) for m in methods}, {m: table[m] for m in methods}, source


def test_table(results: dict) -> dict:
    """A study's test metric per method (mean ± std over seeds), the split its verdicts are reported on (the
    validation ``table`` selected the rates). Studies that predate ``test_table`` have it aggregated from their runs."""
    return results.get("test_table") or experiment.aggregate(results["runs"], key="test_metric_value",
                                                             methods=list(results["table"]))


def tuning_markdown(results: dict) -> str:
    """Each tuned method's learning-rate grid (seed 0, validation) with the selected rate in bold, whether the
    selection still sits on the grid's edge after the extensions, and the schedule knobs tried at that rate."""
    metric = results["metric"]
    lines = [f"Learning-rate selection (seed {TUNE_SEED}, validation {metric}; a failed or diverged rate shows its "
             "status):", "", "| method | rate: validation | selected | edge | knobs at the selected rate |",
             "|---|---|---|---|---|"]

    def score(entry):
        return f"{entry['validation']:.4f}" if entry.get("validation") is not None else entry.get("status", "—")

    for method in method_order(results):
        tuning = (results.get("tuning") or {}).get(method)
        if not tuning:
            continue
        selected = tuning.get("lr_selected")
        grid = " · ".join((f"**{e['lr']:g}: {score(e)}**" if e["lr"] == selected else f"{e['lr']:g}: {score(e)}")
                          for e in tuning["lr_grid"])
        edge = f"{tuning['edge']} edge" if tuning.get("edge") else "interior"
        knobs = " · ".join(", ".join(f"{k}={v}" for k, v in sorted(e.items())
                                     if k not in ("status", "validation", "folder")) + f": {score(e)}"
                           for e in tuning.get("knob_grid") or []) or "—"
        if tuning.get("knobs_selected"):
            knobs += " (selected: " + ", ".join(f"{k}={v}" for k, v in sorted(tuning["knobs_selected"].items())) + ")"
        lines.append(f"| {method} | {grid} | {f'{selected:g}' if selected is not None else 'none'} | {edge} | "
                     f"{knobs} |")
    return "\n".join(lines)


def study_compute(folder: Path) -> tuple[int, float]:
    """(run folders, summed wall time in seconds) of every finished run a study's folder holds: the compute it
    cost, tuning grids included (runs went ``jobs`` at a time, so the elapsed time was less)."""
    times = [files.read_json(m).get("wall_time_s") or 0.0 for m in sorted((Path(folder) / "runs").glob("*/metrics.json"))]
    return len(times), sum(times)


README = RESULTS_DIR.parent / "README.md"


def readme_markers(folder: str) -> tuple[str, str]:
    """The README lines that enclose a committed study's generated tables (``folder`` as in the README)."""
    return (f"<!-- tables of {folder}: generated by `python -m lowrank_lab report {folder} --readme` -->",
            f"<!-- end of the tables of {folder} -->")


def readme_folders(text: str) -> list[str]:
    """The study folders whose tables a README holds between :func:`readme_markers`."""
    head = "<!-- tables of "
    return [line[len(head):].split(":", 1)[0] for line in text.splitlines() if line.startswith(head)]


def readme_section(folder: str, root: Path = RESULTS_DIR.parent) -> str:
    """A study's README tables, rendered from ``root/folder/results.json`` with the current statistics: the
    comparison table, the learning-rate selection (a tuned study), the reproduction verdicts and the figures."""
    results = files.read_json(root / folder / "results.json")
    results["reproduction"] = reproduction_rows(results)
    runs, seconds = study_compute(root / folder)
    parts = [markdown(results)]
    if results.get("tuning"):
        parts.append(tuning_markdown(results))
    compute = (f"Compute: {runs} runs, {seconds / 3600:.1f} h of run time in all (each run's wall time summed; "
               f"{results.get('jobs', 1)} ran at a time).")
    if results.get("runs_trained") and not results.get("runs_reused"):  # one invocation did all of it
        compute += (f" This command, from start to finish with every run trained by it: "
                    f"{results['wall_time_s'] / 60:.1f} min on {results['cpu_count']} CPU cores.")
    parts += [reproduction_markdown(results), compute]
    figures = [(name, caption) for name, caption in (("lr_sensitivity.png", "validation metric against learning rate"),
                                                    ("paired_differences.png", "paired differences with 95% CIs"))
               if (root / folder / name).exists()]
    parts += [" ".join(f"![{caption}]({folder}/{name})" for name, caption in figures)] if figures else []
    return "\n\n".join(parts)


def write_readme_sections(folders: list[str] | None = None, readme: Path = README) -> str:
    """Rewrite the README's generated tables of ``folders`` (default: every study it has markers for); return
    the new text. A folder without markers in the README is a ``ValueError`` saying which lines to add."""
    text = readme.read_text()
    for folder in folders if folders is not None else readme_folders(text):
        start, end = readme_markers(folder)
        try:
            text = files.replace_section(text, start, end, readme_section(folder, readme.parent), str(readme))
        except ValueError as err:
            raise ValueError(f"{err}; the tables of {folder} go between the lines {start} and {end}") from None
    files.write_text(readme, text)
    return text


def command_line(argv: list[str] | None) -> str:
    return "python -m lowrank_lab " + shlex.join(sys.argv[1:] if argv is None else argv)
