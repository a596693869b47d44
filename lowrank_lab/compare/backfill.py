"""Forgetting measures for run folders made before they existed: ``python -m lowrank_lab backfill FOLDER``.

A run folder keeps neither the fine-tuned encoder (what retained capability probes) nor its weights (what the
intruder count reads), so a finished run without ``retained`` / ``intruders`` can only get them by training it
again. The re-trained run's measures are added to the old run's metrics.json **only when it reproduces the run**:
the same recorded settings, the same steps and learning rates, exactly the same validation and test accuracy (at
every evaluation and at the end: the numbers a study selects and reports on), and every logged loss within
:data:`LOSS_TOLERANCE` relative. Bit-identical losses are not required: a run made on another CPU kind (AVX2 vs
AVX-512 kernels round differently) or another library version differs in the 7th digit of its first loss already,
and the difference grows with the steps. Everything else of the old run stays as it was (its history, its numbers,
the study's selection made from them), and ``forgetting_source`` says where the measures came from and how close the
re-training came. A run that does not reproduce is left untouched, reported with its first differences and recorded
as ``not reproduced``.

With ``replace`` a tuning run that does not reproduce is **replaced** by its re-training where that changes nothing the
study selected: the study's tuning is replayed (:func:`replay_tuning`, the protocol's own code over the recorded runs)
once on the recorded values, which must give back results.json's tuning record, and once with the re-training in the
run's place, which must visit the same configurations and select the same rate, knobs and cliff and edge flags. Then
the re-trained run takes the folder (its own CPU kind recorded) and results.json's tuning record takes its values;
seed 0 is never reported, so no reported number moves. A reported run is never replaced.

With ``retune`` (which implies ``replace``) a tuning run whose re-training would change the selection takes the
folder all the same (status ``retuned``), and the study's own command is then run again (:func:`.study.compare` with
the settings results.json records): it replays the tuning over the folder's runs, trains the configurations the new
values lead it to and the reporting seeds at whatever it now selects, and rewrites results.json, so the whole
selection rests on runs that reproduce here. The runs the study no longer uses (the old selection's reported runs, the
configurations it no longer visits) move to ``FOLDER/retired/``, listed with the retuned run in backfill.json.

Progress is recorded run by run in ``FOLDER/backfill.json`` (strict JSON, written atomically), so the command can be
stopped and run again: it goes on with the runs not yet done, and skips those recorded as not reproduced unless
``retry`` (or ``replace``). One at a time per folder, with ``compare`` too (:class:`.runs.FolderLock`).
"""

from __future__ import annotations

import os
import shutil
import threading
from datetime import datetime, timezone
from pathlib import Path

from lowrank_lab import files

from .report import read_results, run_metrics, study_folders, tuning_folders
from .runs import FolderLock, _recorded, _train_in_subprocess

RECORD_FILE = "backfill.json"
RETIRED_FOLDER = "retired"  # inside FOLDER: runs a re-tuning left unused (kept, outside runs/)
WORK_FOLDER = ".backfill"  # inside FOLDER: a re-trained run lives here until it is checked (gitignored)
MEASURES = ("retained", "intruders")
# Fields compared between the recorded run and its re-training: history.json's record of the training (every
# logged loss and rate, every evaluation) and the numbers metrics.json reports.
SAME_HISTORY = ("status", "step", "train_loss", "lr", "skipped_steps", "evals", "final")
SAME_METRICS = ("status", "metric", "metric_value", "test_metric_value", "final_train_loss", "trainable_params",
                "total_params", "run_spec")
# Losses may differ by this much (relative) between a run and its reproduction. Measured on a trec Bone run (seed 0,
# rate 2e-3; made with transformers 5.24.0 on an unrecorded CPU kind) re-trained on AVX-512: 7e-8 at its first loss,
# at most 5.7e-4 over its 512 steps (the difference grows as training goes on), every accuracy identical; its five
# other seeds' final validation losses differ from its own by 3-12%.
LOSS_TOLERANCE = 1e-2


def missing_measures(run_dir: Path) -> bool:
    """True for a finished (``ok``) run whose metrics.json lacks a forgetting measure (diverged and failed runs
    have no trained model to measure)."""
    metrics, _ = _recorded(run_dir)
    return (metrics is not None and metrics.get("status", "ok") == "ok"
            and any(metrics.get(k) is None for k in MEASURES))


def _train_arguments_of(metrics: dict) -> dict:
    """The settings to train a recorded run again, read from its ``run_spec``."""
    spec = metrics.get("run_spec")
    if not isinstance(spec, dict):
        raise ValueError("metrics.json has no run_spec (made by an older lowrank-lab): its settings are unknown")
    options, preset = spec.get("options") or {}, spec.get("preset") or {}
    return {"method": spec["method"], "task_name": spec["task"], "model_name": spec["model"],
            "scale": spec["scale"], "seed": spec["seed"], "r": options.get("r", 8), "lr": preset.get("lr"),
            "extra": dict(options.get("extra") or {}), "head_lr": preset.get("head_lr")}


def differences(old_dir: Path, new_dir: Path) -> tuple[list[str], float]:
    """(what keeps the re-trained run in ``new_dir`` from reproducing the one in ``old_dir``, the largest relative
    difference of any logged loss): every compared field equal, except losses, which may differ by
    :data:`LOSS_TOLERANCE` relative. An empty list: reproduced."""
    found, worst = [], 0.0
    for name, keys in (("history.json", SAME_HISTORY), ("metrics.json", SAME_METRICS)):
        try:
            old, new = files.read_json(old_dir / name), files.read_json(new_dir / name)
        except (OSError, ValueError) as err:
            return [f"{name}: {err}"], float("inf")
        for key in keys:
            for where, a, b, relative in _walk(old.get(key, "<absent>"), new.get(key, "<absent>"), key):
                if relative > LOSS_TOLERANCE:
                    found.append(f"{name} {where}: {a!r} (recorded) vs {b!r} (re-trained)")
                else:
                    worst = max(worst, relative)
    return found, worst


def _walk(a, b, where: str, loss: bool = False):
    """(where, a, b, how far apart) for each leaf where two JSON values differ: the relative difference for a loss
    (under a key naming one, at any depth), infinite for anything else."""
    loss = loss or "loss" in where.rsplit(".", 1)[-1]
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _walk(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{where}.{key}", loss)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _walk(x, y, f"{where}[{i}]", loss)
    elif a != b:
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        yield where, a, b, abs(a - b) / max(abs(a), abs(b), 1e-12) if loss and numbers else float("inf")


def _add_measures(run_dir: Path, retrained: dict, entry: dict) -> None:
    """The re-training's forgetting measures into the old run's metrics.json (written atomically), with where they
    came from; everything else of the old run stays as it was."""
    metrics = files.read_json(run_dir / "metrics.json")
    metrics.update({k: retrained[k] for k in MEASURES})
    metrics["forgetting_source"] = {
        "retrained": entry["date"], "cpu_capability": retrained.get("cpu_capability"),
        "versions": retrained.get("versions"), "accuracies": "identical",
        "max_loss_relative_difference": entry["max_loss_relative_difference"], "loss_tolerance": LOSS_TOLERANCE}
    files.write_json(run_dir / "metrics.json", metrics)


class _Unrecorded(KeyError):
    """The replayed tuning asked for a configuration the study has no run of: its path would change."""


class _RecordedPool:
    """Stands in for :class:`.runs.RunPool` in a replay: every run is looked up among the recorded ones, never
    trained."""

    def __init__(self, metrics: dict[str, dict]):
        self.metrics, self.done = metrics, {}

    def get(self, keys, need_predictions: bool = True) -> list[dict]:
        for key in keys:
            if key.folder not in self.metrics:
                raise _Unrecorded(key.folder)
            self.done[key] = {**self.metrics[key.folder], "method": key.method, "seed": key.seed,
                              "folder": key.folder}
        return [self.done[k] for k in keys]


SELECTION = ("lr_selected", "knobs_selected", "cliff", "edge", "configurations")


def replay_tuning(results: dict, method: str, metrics: dict[str, dict]) -> dict:
    """``method``'s tuning as ``compare --tune-lr`` makes it (:func:`.tuning.tune_method`), over the runs in
    ``metrics`` (folder name -> metrics.json) instead of training them. Raises :class:`_Unrecorded` when it asks for
    a run that is not there."""
    from lowrank_lab import presets

    from .tuning import tune_method

    kind = presets.task_kind(results["task"])
    steps = presets.train_preset(results["task"], results["scale"])["max_steps"]
    tuning, _, _ = tune_method(_RecordedPool(metrics), method, presets.learning_rate(method, kind),
                               results["higher_is_better"], results["matching"], steps, results.get("baselines"))
    return tuning


def _replacement(out: Path, run_dir: Path, new_dir: Path) -> tuple[str | None, dict | None, str]:
    """(the method, its new tuning record, "") when the re-trained run in ``new_dir`` may replace ``run_dir``
    without changing what the study selected (module docstring); otherwise (the method whose tuning ran it, or None
    for a run no tuning visited, None, why not)."""
    results = read_results(out / "results.json")
    method = next((m for m, t in (results.get("tuning") or {}).items() if run_dir.name in tuning_folders(t)), None)
    if method is None:
        return None, None, "not a tuning run of this study's results.json (a reported run is never replaced)"
    recorded = results["tuning"][method]
    metrics = run_metrics(out)
    try:
        before = replay_tuning(results, method, metrics)
        after = replay_tuning(results, method, {**metrics, run_dir.name: files.read_json(new_dir / "metrics.json")})
    except _Unrecorded as err:
        return method, None, f"with the re-trained values the tuning would try {err.args[0]}, which it never ran"
    if tuning_folders(before) != tuning_folders(recorded) or any(before.get(k) != recorded.get(k) for k in SELECTION):
        return method, None, ("replaying the study's tuning on its recorded runs does not give back its results.json "
                              "record")
    changed = [k for k in SELECTION if after.get(k) != recorded.get(k)]
    if tuning_folders(after) != tuning_folders(recorded) or changed:
        return method, None, "with the re-trained values the tuning would change: " + (", ".join(
            f"{k} {recorded.get(k)!r} -> {after.get(k)!r}" for k in changed) or "the configurations it tries")
    return method, after, ""


def _replace(out: Path, run_dir: Path, new_dir: Path, method: str, tuning: dict) -> None:
    """The method's tuning record into results.json, then the re-trained run into ``run_dir``'s place. In this
    order a stop in between is loud, never silent: the old run still lacks the measures, so the next call re-trains
    it, and its replay on the recorded runs no longer gives back results.json's record, which it then says."""
    results = read_results(out / "results.json")
    results["tuning"][method] = tuning
    files.write_json(out / "results.json", results)
    _swap(run_dir, new_dir)


def _swap(run_dir: Path, new_dir: Path) -> None:
    """The run in ``new_dir`` into ``run_dir``'s place (the old one deleted once the new one is in)."""
    retired = new_dir.with_name(new_dir.name + ".old")
    shutil.rmtree(retired, ignore_errors=True)
    os.rename(run_dir, retired)
    os.rename(new_dir, run_dir)
    shutil.rmtree(retired)


def backfill(out: str | Path, jobs: int = 1, limit: int | None = None, retry: bool = False,
             show_progress: bool = True, replace: bool = False, retune: bool = False) -> dict:
    """Re-train the finished runs of the study in ``out`` that lack the forgetting measures, ``jobs`` at a time
    (at most ``limit`` this time), and add each re-training's measures to its run where it reproduces the run.
    Returns the record also written to ``out/backfill.json``: ``{"runs": {folder: {"status": "added" |
    "not reproduced" | "failed", ...}}}``, plus this call's ``added`` / ``not_reproduced`` / ``failed`` lists and
    the runs ``left`` without the measures. ``replace``: a tuning run that does not reproduce is replaced by its
    re-training where the study's selection stands (status ``replaced``), and retried even if recorded as not
    reproduced. ``retune``: also where it does not (status ``retuned``), and then the study's command runs again
    (module docstring); the return value then also holds ``retired``, the run folders moved out of its way."""
    out = Path(out)
    if not (out / "runs").is_dir():
        raise ValueError(f"out must be a study folder with a runs/ folder inside, got {str(out)!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    replace = replace or retune
    record_path = out / RECORD_FILE
    if retune:  # the study must be re-runnable from its record before anything is re-trained
        _study_arguments(out)
    with FolderLock(out):
        record = files.read_json(record_path) if record_path.exists() else {"runs": {}}
        todo = [run_dir for run_dir in sorted(p for p in (out / "runs").iterdir() if p.is_dir())
                if missing_measures(run_dir)
                and (retry or replace or record["runs"].get(run_dir.name, {}).get("status") != "not reproduced")]
        todo = todo[:limit] if limit is not None else todo
        for run_dir in todo:  # every run's settings readable before the first one trains
            _train_arguments_of(_recorded(run_dir)[0])
        work = out / WORK_FOLDER
        if work.exists():  # a stopped earlier call's half-trained runs
            shutil.rmtree(work)
        work.mkdir()
        lock = threading.Lock()
        outcome = {"added": [], "not_reproduced": [], "failed": [], "replaced": [], "retuned": []}
        threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None

        def one(run_dir: Path) -> None:
            new_dir = work / run_dir.name
            error = _train_in_subprocess(run_dir=new_dir, show_progress=False, threads=threads,
                                         **_train_arguments_of(_recorded(run_dir)[0]))
            metrics, why = _recorded(new_dir)
            if error or metrics is None or any(metrics.get(k) is None for k in MEASURES):
                entry = {"status": "failed", "error": (error or why or "no forgetting measures recorded")[-500:]}
            else:
                found, worst = differences(run_dir, new_dir)
                entry = ({"status": "not reproduced", "differences": found[:10]} if found
                         else {"status": "added", "max_loss_relative_difference": worst})
                entry["cpu_capability"] = metrics.get("cpu_capability")
            with lock:
                entry["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                if entry["status"] == "added":
                    _add_measures(run_dir, metrics, entry)
                elif entry["status"] == "not reproduced" and replace:
                    method, tuning, why = _replacement(out, run_dir, new_dir)
                    if tuning is not None:
                        _replace(out, run_dir, new_dir, method, tuning)
                        entry["status"] = "replaced"
                    elif retune and method is not None:
                        _swap(run_dir, new_dir)  # results.json is stale until the study's command runs below
                        entry.update(status="retuned", retuned_because=why)
                    else:
                        entry["not_replaced"] = why
                record["runs"][run_dir.name] = entry
                files.write_json(record_path, record)
                outcome[entry["status"].replace(" ", "_")].append(run_dir.name)
                said = (entry.get("not_replaced") or entry.get("retuned_because")
                        or entry.get("differences", [entry.get("error", "")])[0])[-200:]
                print(f"{run_dir.name:<34} {entry['status']}" + (f": {said}" if said else ""), flush=True)
            shutil.rmtree(new_dir, ignore_errors=True)

        from tqdm.auto import tqdm

        with tqdm(total=len(todo), desc="backfill", disable=not show_progress) as bar:
            if jobs > 1 and len(todo) > 1:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(jobs) as pool:
                    for _ in pool.map(one, todo):
                        bar.update()
            else:
                for run_dir in todo:
                    one(run_dir)
                    bar.update()
        shutil.rmtree(work, ignore_errors=True)
    # a retuned run whose study never ran again (this call's, or one a stop interrupted) leaves results.json stale
    pending = [k for k, v in record["runs"].items() if v["status"] == "retuned" and "retired" not in v]
    if retune and pending:
        outcome["retired"], outcome["study"] = _rerun_study(out, record, pending, jobs, show_progress)
    left = [p.name for p in sorted((out / "runs").iterdir()) if p.is_dir() and missing_measures(p)]
    return {**record, **outcome, "left": left}


def _study_arguments(out: Path) -> dict:
    """:func:`.study.compare`'s arguments for the study results.json records (a ``ValueError`` naming what is
    missing when it is not a tuned study's record)."""
    if not (out / "results.json").is_file():
        raise ValueError(f"retune needs the study's results.json (compare --tune-lr), and {out} has none")
    results = read_results(out / "results.json")
    missing = [k for k in ("task", "model", "scale", "seeds", "methods", "r", "protocol") if k not in results]
    if missing or results["protocol"] != "tuned":
        raise ValueError(f"retune needs a tuned study's results.json (compare --tune-lr); {out / 'results.json'} "
                         f"has protocol {results.get('protocol')!r}" + (f", no {missing}" if missing else ""))
    return {"task_name": results["task"], "model_name": results["model"], "scale": results["scale"],
            "seeds": results["seeds"], "methods": tuple(results["methods"]), "r": results["r"], "tune": True,
            "command": results.get("command"), "exploratory": results.get("exploratory")}


def _rerun_study(out: Path, record: dict, retuned: list[str], jobs: int, show_progress: bool) -> tuple[list, dict]:
    """Run the study's command again over its folder (it trains what the retuned runs' values now lead its tuning
    to), then move the runs its new results.json no longer uses to ``FOLDER/retired/``. Returns (the retired
    folders, the new results)."""
    from .study import compare

    before = study_folders(read_results(out / "results.json"))
    results = compare(out=out, show_progress=show_progress, jobs=jobs, **_study_arguments(out))
    if results["failed"]:  # not done: the next call runs the study again (the retuned runs stay pending)
        return [], results
    retired = sorted(before - study_folders(results))
    for name in retired:
        if (out / "runs" / name).is_dir():
            (out / RETIRED_FOLDER).mkdir(exist_ok=True)
            shutil.rmtree(out / RETIRED_FOLDER / name, ignore_errors=True)
            os.rename(out / "runs" / name, out / RETIRED_FOLDER / name)
    for name in retuned:
        record["runs"][name]["retired"] = retired  # what this re-tuning moved out, said beside why it ran
    files.write_json(out / RECORD_FILE, record)
    return retired, results
