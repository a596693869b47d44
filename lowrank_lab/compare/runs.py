"""The runs of a comparison: one ``python -m lowrank_lab train`` process per (method, seed, settings), reused when
their recorded settings match, checked before they are trusted, trained ``jobs`` at a time.

Each run's folder holds ``metrics.json`` (written last: it vouches for the rest), ``predictions.json`` (per-example
predictions on validation and test, and the retained-capability probes: what the verdicts' bootstrap resamples)
and ``history.json``. A finished run is reused only when

* its recorded ``run_spec`` equals the one asked for (otherwise the command stops before any run, naming each
  difference), and
* its files agree with each other and hold numbers of the right type and range (:func:`check_run_files`): a
  hand-edited metric, a metric missing or of the wrong type, an unknown status, or (for a reporting run) missing
  predictions are re-run, each with a line saying why.

One ``compare`` at a time per folder (:class:`FolderLock`); a child run dies with its parent (Linux), so a killed
``compare`` leaves no orphan writing into the folder.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from lowrank_lab import experiment, files, recipes, registry

_SAY = threading.Lock()  # one line at a time: print writes a line and its newline apart, and runs finish together


def _say(line: str) -> None:
    with _SAY:
        print(line, flush=True)


RUN_STATUSES = ("ok", "diverged", "failed")
PREDICTIONS_FILE = "predictions.json"


@dataclass(frozen=True)
class RunKey:
    """What names one run of a comparison: method, seed, and the settings tuning changes (``lr`` None = the
    preset's default rate; ``extra`` = the method's schedule knobs as sorted (name, value) pairs; ``head_lr`` the
    task head's own rate under a shared-rate protocol)."""

    method: str
    seed: int
    lr: float | None = None
    extra: tuple = ()
    head_lr: float | None = None

    @property
    def folder(self) -> str:
        parts = [self.method] + ([f"lr{self.lr:.3g}"] if self.lr is not None else [])
        parts += [f"{name.replace('_', '-')}{value}" for name, value in self.extra]
        parts += [f"head{self.head_lr:.3g}"] if self.head_lr is not None else []
        return "-".join(parts) + f"-s{self.seed}"

    def path(self, out: Path) -> Path:
        return out / "runs" / self.folder


def _run_dir(out: Path, method: str, seed: int, lr: float | None = None, extra: tuple = ()) -> Path:
    return RunKey(method, seed, lr, extra).path(out)


def train_arguments(method, task_name, model_name, scale, seed, r, run_dir: Path, show_progress: bool,
                    lr: float | None = None, extra: dict | None = None, head_lr: float | None = None) -> list[str]:
    """The ``python -m lowrank_lab train`` arguments of one run (the schedule knobs as their CLI flags; no rank for
    a method whose runs do not depend on it: ``train`` refuses flags that would change nothing)."""
    args = ["train", "--method", method, "--task", task_name, "--model", model_name, "--scale", scale,
            "--seed", str(seed), "--out", str(run_dir)]
    if registry.options_apply(method):
        args += ["--r", str(r)]
    if lr is not None:
        args += ["--lr", repr(lr)]
    if head_lr is not None:
        args += ["--head-lr", repr(head_lr)]
    for name, value in sorted((extra or {}).items()):
        args += ["--" + name.replace("_", "-"), str(value)]
    return args if show_progress else args + ["--quiet"]


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to send SIGTERM when the parent dies (``PR_SET_PDEATHSIG``), so a killed
    ``compare`` does not leave its runs writing into the folder a later ``compare`` will train in."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the lock still refuses a second compare
        pass


def _train_in_subprocess(method, task_name, model_name, scale, seed, r, run_dir: Path, show_progress: bool,
                         lr: float | None = None, extra: dict | None = None, threads: int | None = None,
                         head_lr: float | None = None) -> str:
    """One run = one ``python -m lowrank_lab train`` process: its peak memory is its own (on CPU the process
    peak RSS is all a process can report), and a crash loses only that run. Returns what the child printed
    when it did not finish normally (its own status is in its metrics.json)."""
    import subprocess

    cmd = [sys.executable, "-m", "lowrank_lab",
           *train_arguments(method, task_name, model_name, scale, seed, r, run_dir, show_progress, lr, extra, head_lr)]
    env = dict(os.environ)
    if threads is not None:  # parallel runs share the cores; a user's own setting wins
        env.setdefault("OMP_NUM_THREADS", str(threads))
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    if done.returncode == 0:
        return ""
    return f"exit {done.returncode}: {shlex.join(cmd)}\n{done.stdout[-2000:]}"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_run_files(run_dir: Path, metrics: dict, need_predictions: bool) -> str:
    """Why the finished run in ``run_dir`` cannot be trusted as it is ("" when it can): its status, the types and
    ranges of its numbers, and its files against each other (metrics.json against history.json's final evaluation,
    and against predictions.json where that is needed)."""
    status = metrics.get("status", "ok")
    if status not in RUN_STATUSES:
        return f"unknown status {status!r} in metrics.json (expected one of {RUN_STATUSES})"
    if status != "ok":
        return ""
    metric = metrics.get("metric")
    for key in ("metric_value", "test_metric_value"):
        value = metrics.get(key)
        if not _number(value):
            return f"metrics.json: {key} must be a finite number for a finished run, got {value!r}"
        if metric in ("accuracy", "exact_match") and not 0.0 <= value <= 1.0:
            return f"metrics.json: {key} is an {metric}, so it lies in [0, 1]; got {value!r}"
    for key in ("trainable_params", "total_params"):
        value = metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"metrics.json: {key} must be a positive int, got {value!r}"
    for key in ("median_step_time_s", "final_train_loss"):
        if key in metrics and not _number(metrics[key]):
            return f"metrics.json: {key} must be a finite number, got {metrics[key]!r}"
    try:
        history = files.read_json(run_dir / "history.json")
        final = history["final"]
    except (ValueError, FileNotFoundError, KeyError, TypeError) as err:
        return f"history.json cannot vouch for metrics.json ({err})"
    for key, split in (("metric_value", "validation"), ("test_metric_value", "test")):
        recorded = ((final or {}).get(split) or {}).get(metric)
        if not _number(recorded) or abs(recorded - metrics[key]) > 1e-5:
            return (f"metrics.json and history.json disagree on the {split} {metric}: {metrics[key]!r} vs {recorded!r} "
                    "(a file was edited or mixed up)")
    if need_predictions:
        path = run_dir / PREDICTIONS_FILE
        if not path.exists():
            return f"no {PREDICTIONS_FILE} (per-example predictions, needed by the verdicts)"
        try:
            predictions = files.read_json(path)
            test = predictions["test"]
        except (ValueError, KeyError, TypeError) as err:
            return f"{PREDICTIONS_FILE} cannot be read ({err})"
        if metric == "accuracy":
            predicted, labels = test.get("predicted"), test.get("label")
            if not isinstance(predicted, list) or not isinstance(labels, list) or len(predicted) != len(labels) or not labels:
                return f"{PREDICTIONS_FILE}: test predictions and labels must be lists of one length"
            accuracy = sum(p == y for p, y in zip(predicted, labels)) / len(labels)
            if abs(accuracy - metrics["test_metric_value"]) > 1e-5:
                return (f"{PREDICTIONS_FILE} gives test accuracy {accuracy:.6f} but metrics.json says "
                        f"{metrics['test_metric_value']!r}")
    return ""


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


class FolderBusy(ValueError):
    """Another ``compare`` holds the folder: two would train the same runs at once (and time them under contention)."""


class FolderLock:
    """An exclusive ``flock`` on ``out/.compare.lock`` for the life of one ``compare``; a second one on the same
    folder is refused at once, naming the process that holds it. The kernel releases the lock when the holder dies,
    so a killed ``compare`` never leaves the folder locked."""

    def __init__(self, out: Path):
        self.path = Path(out) / ".compare.lock"
        self.handle = None

    def __enter__(self) -> "FolderLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise FolderBusy(f"{self.path.parent} is in use by another compare ({holder}); wait for it to finish "
                             "or use another --out") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}")
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.close()  # closing releases the flock


class RunPool:
    """The runs of one comparison: each (re)used only if its recorded settings match and its files check out,
    run otherwise, ``jobs`` at a time (each run its own process); every outcome recorded (ok, diverged, failed)."""

    def __init__(self, out: Path, task_name: str, model_name: str, scale: str, planned: dict, show_progress: bool,
                 jobs: int = 1):
        self.out, self.task_name, self.model_name, self.scale = out, task_name, model_name, scale
        self.planned, self.show_progress, self.jobs = planned, show_progress, jobs
        self.done: dict[RunKey, dict] = {}
        self.trained: set[RunKey] = set()  # the runs this pool trained (the rest were reused from the folder)
        # At most ``jobs`` runs train at once, however many callers ask at the same time (compare tunes every
        # method in its own thread, so one method's grid never waits for another's).
        import threading

        self._slots = threading.BoundedSemaphore(jobs)
        self.notes: list[str] = []  # why runs were re-trained: printed, and recorded in results.json

    def spec(self, key: RunKey) -> dict:
        options = recipes.MethodOptions(r=self.planned[key.method]["r"], extra=dict(key.extra))
        overrides = {"lr": key.lr} if key.lr is not None else {}
        if key.head_lr is not None:
            overrides["head_lr"] = key.head_lr
        return experiment.run_spec(key.method, self.task_name, self.model_name, self.scale, key.seed, options,
                                   overrides)

    def check(self, keys) -> None:
        """Refuse (ValueError) if any of ``keys`` has a folder holding another run; nothing runs."""
        _refuse(self.out, [p for p in (_mismatch(k.path(self.out), self.spec(k)) for k in keys) if p])

    def _run_one(self, key: RunKey, need_predictions: bool) -> dict:
        run_dir, spec = key.path(self.out), self.spec(key)
        metrics, why = _recorded(run_dir)
        if metrics is not None and metrics.get("status", "ok") == "failed":
            metrics, why = None, f"its last attempt failed ({metrics.get('error')})"
        if metrics is not None:
            problem = check_run_files(run_dir, metrics, need_predictions)
            if problem:
                metrics, why = None, problem
        if metrics is None:
            if why != "not run yet":
                note = f"{key.folder}: re-running: {why}"
                self.notes.append(note)
                _say(note)
            threads = max(1, (os.cpu_count() or 1) // self.jobs) if self.jobs > 1 else None
            self.trained.add(key)  # a set: the worker threads may add at once
            with self._slots:
                output = _train_in_subprocess(key.method, self.task_name, self.model_name, self.scale, key.seed,
                                              self.planned[key.method]["r"], run_dir, self.show_progress,
                                              lr=key.lr, extra=dict(key.extra), threads=threads, head_lr=key.head_lr)
            metrics, why = _recorded(run_dir)
            if metrics is None or metrics.get("run_spec") != spec:  # died before recording anything of its own
                metrics = {"status": "failed", "error": output or why, "run_spec": spec}
            elif metrics.get("status", "ok") == "ok" and (problem := check_run_files(run_dir, metrics, need_predictions)):
                metrics = {"status": "failed", "error": f"the run's own files do not check out: {problem}",
                           "run_spec": spec}
        metrics = {**metrics, "method": key.method, "seed": key.seed, "options_r": self.planned[key.method]["r"],
                   "folder": key.folder}
        if isinstance(metrics.get("intruders"), dict):  # per-layer detail stays in the run's own metrics.json
            metrics["intruders"] = {k: v for k, v in metrics["intruders"].items() if k != "per_layer"}
        metrics.setdefault("status", "ok")
        if metrics["status"] == "ok":
            _say(f"{key.folder:<34} validation {metrics['metric']} = {metrics['metric_value']:.4f}  "
                 f"({metrics['trainable_params']:,} trainable, {metrics['median_step_time_s']:.3f} s/step)")
        else:
            _say(f"{key.folder:<34} {metrics['status'].upper()}: {str(metrics.get('error'))[-300:]}")
        return metrics

    def get(self, keys, need_predictions: bool = True) -> list[dict]:
        """The metrics of ``keys`` (in order), running the missing ones ``jobs`` at a time. ``need_predictions``:
        a run without per-example predictions is re-trained (reporting runs; tuning runs select on validation's
        summary alone)."""
        keys = list(dict.fromkeys(keys))
        self.check([k for k in keys if k not in self.done])
        todo = [k for k in keys if k not in self.done]
        if self.jobs > 1 and len(todo) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(todo)) as pool:  # threads only wait on the child processes (and a slot)
                for key, metrics in zip(todo, pool.map(lambda k: self._run_one(k, need_predictions), todo)):
                    self.done[key] = metrics
        else:
            for key in todo:
                self.done[key] = self._run_one(key, need_predictions)
        return [self.done[k] for k in keys]
