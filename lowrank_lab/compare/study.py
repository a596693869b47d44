"""``compare()``: plan the budget, tune (or not), run the reporting seeds, judge the claims, write everything."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from lowrank_lab import experiment, files, presets, recipes, registry

from .budget import plan
from .report import write_outputs
from .runs import FolderLock, RunKey, RunPool
from .tuning import report_seeds, tune_method
from .verdicts import reproduction_rows

# Under a shared-rate protocol the new task head trains at this one rate for every method (full FT included): the
# shared rate is the adapters' (the Bone paper's 2e-5 was set for a 7B model's adapters), and a random 6-way head
# at 2e-5 cannot leave chance in 512 steps. 1e-3 is the adapters' prior classification rate, fixed before the reruns.
HEAD_LR = 1e-3


def _lr_source(tune: bool, shared_lr: float | None, method: str, task_name: str, scale: str) -> str:
    """Where a method's rate came from: this study's tuning, the shared rate, a tuned default's results file,
    or the prior ``presets.LEARNING_RATES``."""
    if tune:
        return "tuned here"
    if shared_lr is not None and registry.options_apply(method):  # the methods the shared rate applies to
        return "shared"
    tuned = presets.tuned_rate(task_name, scale, method)
    return tuned[1] if tuned else "presets.LEARNING_RATES"


def chance_levels(task_name: str) -> dict:
    """Always predicting the largest class of each split, and the number of examples (classification)."""
    from lowrank_lab.assets import load_task

    if presets.task_kind(task_name) != "classification":
        return {}
    task = load_task(task_name)
    out = {}
    for split in ("validation", "test"):
        labels = list(getattr(task, split)["label"])
        out[f"majority_{split}"] = max(labels.count(c) for c in set(labels)) / len(labels)
        out[f"n_{split}"] = len(labels)
    import math

    out["uniform_loss"] = math.log(task.num_labels)
    return out


def compare(task_name: str, model_name: str | None = None, scale: str = "smoke", seeds: int = 1,
            out: str | Path = "runs/compare", methods=None, r: int = 8, show_progress: bool = True,
            command: str | None = None, tune: bool = False, shared_lr: float | None = None, jobs: int = 1,
            exploratory: str | None = None) -> dict:
    """Run (or resume) the comparison; return the results dict also written to ``out/results.json``.

    * ``methods``: default every registered method in compare's default set (``registry.names(compare_only=True)``).
    * ``seeds``: the number of reporting seeds, ``1..seeds`` (seed 0 is reserved for tuning, and never reported).
    * ``tune``: per method, a learning-rate grid selected on validation with the tuning seed (``tuning``), then
      its schedule knobs, then the reporting seeds at the selected settings, reported on test.
    * ``shared_lr``: every adapter method at this one rate, full fine-tuning at its own, and the new task head at
      :data:`HEAD_LR` for every method (the Bone paper's protocol); excludes ``tune``.
    * ``jobs``: runs at a time (each a process with cpu_count/jobs threads).
    * ``exploratory``: a sentence recorded with the results when the study was added after seeing others' results
      (``results/PREREGISTRATION.md`` lists what was fixed in advance).

    ``results["failed"]`` lists runs that broke (not diverged) with their error; the CLI exits non-zero then.
    """
    from lowrank_lab.assets import TASK_NAMES
    from lowrank_lab.runtime import SCALES

    recipes.load_method_plugins()
    methods = tuple(registry.names(compare_only=True) if methods is None else methods)
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
    if shared_lr is not None and kind != "classification":
        raise ValueError(f"shared_lr fixes a classification head's rate; task {task_name!r} is {kind}")
    out = Path(out)
    files.check_writable_folder(out)
    planned = plan(methods, task_name, model_name, r)  # every budget problem surfaces before the first run
    with FolderLock(out):
        return _run(task_name, model_name, scale, seeds, out, methods, r, show_progress, command, tune, shared_lr,
                    jobs, exploratory, planned, kind)


def _run(task_name, model_name, scale, seeds, out, methods, r, show_progress, command, tune, shared_lr, jobs,
         exploratory, planned, kind) -> dict:
    metric, higher = presets.primary_metric(kind, scale)
    pool = RunPool(out, task_name, model_name, scale, planned, show_progress, jobs)
    chance = chance_levels(task_name)
    seed_list = report_seeds(seeds)

    def fixed_lr(method):  # the rate of an untuned run: None = the preset's default
        return shared_lr if shared_lr is not None and registry.options_apply(method) else None

    head_lr = HEAD_LR if shared_lr is not None else None
    start = time.perf_counter()

    def default_extra(method):  # an untuned run at the default rate also takes the knobs tuned with it
        if tune or shared_lr is not None:
            return ()
        return tuple(sorted(presets.tuned_options(task_name, scale, method).items()))

    settings = {m: {"lr": fixed_lr(m), "extra": default_extra(m)} for m in methods}
    tuning = {}
    if tune:
        from .tuning import TUNE_SEED, lr_grid

        centers = {m: presets.learning_rate(m, kind) for m in methods}
        # every method's first grid at once (jobs at a time; get refuses stale runs before running any)
        pool.get([RunKey(m, TUNE_SEED, lr) for m in methods for lr in lr_grid(centers[m])], need_predictions=False)
        steps = presets.train_preset(task_name, scale)["max_steps"]

        def tune_and_report(method):  # a method's reporting seeds start as soon as its own tuning is done
            tuned = tune_method(pool, method, centers[method], higher, planned, steps, chance)
            if tuned[1] is not None:
                pool.get([RunKey(method, s, tuned[1], tuned[2]) for s in seed_list])
            return tuned

        if jobs > 1:  # every method in its own thread; the pool's slots keep it to ``jobs`` runs at a time
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(methods)) as threads:
                outcomes = list(threads.map(tune_and_report, methods))
        else:  # one run at a time anyway (and runs made in this process, as tests do, share its RNG)
            outcomes = [tune_and_report(m) for m in methods]
        for method, tuned in zip(methods, outcomes):
            tuning[method], settings[method]["lr"], settings[method]["extra"] = tuned
    else:
        pool.check([RunKey(m, s, settings[m]["lr"], settings[m]["extra"], head_lr) for m in methods for s in seed_list])

    evaluated = [m for m in methods if not tune or settings[m]["lr"] is not None]  # no rate finished: no seeds
    keys = [RunKey(m, s, settings[m]["lr"], settings[m]["extra"], head_lr) for m in evaluated for s in seed_list]
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
        "report_seeds": seed_list, "methods": list(methods),
        "budget": next(iter(planned.values()))["budget"], "matching": planned, "metric": metric,
        "higher_is_better": higher, "protocol": "tuned" if tune else "shared_lr" if shared_lr is not None else "preset",
        "shared_lr": shared_lr, "head_lr": head_lr, "jobs": jobs, "tuning": tuning, "baselines": chance,
        "settings": {m: {"lr": s["lr"] if s["lr"] is not None else presets.train_preset(task_name, scale, m)["lr"],
                         "lr_source": _lr_source(tune, shared_lr, m, task_name, scale),
                         "extra": dict(s["extra"])} for m, s in settings.items()},
        "table": experiment.aggregate(summaries, methods=methods),
        "test_table": experiment.aggregate(summaries, key="test_metric_value", methods=methods),
        "runs": summaries, "failed": failed, "wall_time_s": time.perf_counter() - start,
        "runs_trained": len(pool.trained), "runs_reused": len(pool.done) - len(pool.trained), "cpu_count": os.cpu_count(),
        "retrained": pool.notes, "exploratory": exploratory,
    }
    results["reproduction"] = reproduction_rows(results, out)
    write_outputs(out, results, histories)
    return results


def command_line(argv: list[str] | None) -> str:
    return "python -m lowrank_lab " + shell_join(sys.argv[1:] if argv is None else argv)


def shell_join(args) -> str:
    """``args`` as one shell line a reader can copy: bare where that is safe, in double quotes where only an
    apostrophe or a space needs them (``"the study's"``, where :func:`shlex.join` writes ``'the study'"'"'s'``),
    :func:`shlex.quote` otherwise. ``shlex.split`` gives ``args`` back."""
    def quote(arg: str) -> str:
        quoted = shlex.quote(arg)
        if quoted == arg or any(c in arg for c in '"$`\\!'):
            return quoted
        return f'"{arg}"'
    return " ".join(quote(str(a)) for a in args)


def readable_command(command: str) -> str:
    """A recorded command line re-quoted by :func:`shell_join` (older records used :func:`shlex.join`'s quoting);
    a line that does not split is shown as it is."""
    try:
        return shell_join(shlex.split(command))
    except ValueError:
        return command
