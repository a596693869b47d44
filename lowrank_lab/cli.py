"""Command line: ``python -m lowrank_lab train --method lora --task sentiment --scale cpu``.

Each subcommand is an ``add_<name>_parser(subparsers)`` function that sets ``func`` on its parser;
``main`` dispatches to it. ``--method`` choices, and each method's own flags, come from
:mod:`lowrank_lab.registry`, so a method registered with ``register_method`` is available here without editing
this file.

Every argument is checked before any model or data is loaded; a bad value exits with code 2 and a message
naming the value and the valid ones, and nothing is written to ``--out``. Exit codes: 0 done, 2 bad arguments
(or a model/method that cannot be set up with them), 3 training failed, 4 the run diverged (a non-finite
loss, update or evaluation). A failed or diverged run still writes ``metrics.json`` (``status`` says which,
with the error; no metric) and ``history.json`` up to the failure, and prints one line, no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lowrank_lab import distributed, files, presets, recipes, registry
from lowrank_lab.experiment import DEFAULT_MODELS, run_method, run_spec
from lowrank_lab.runtime import SCALES, environment_report, get_device, get_scale
from lowrank_lab.site import add_site_parser
from lowrank_lab.train import TrainingDiverged, TrainingFailed

USAGE_ERROR = 2  # argparse's own exit code for bad arguments
TRAINING_FAILED = 3  # training started and broke (a crash, out of memory): nothing to report
DIVERGED = 4  # the run finished as a result: it diverged at these settings
EXIT_CODES = {"failed": TRAINING_FAILED, "diverged": DIVERGED}
# Upper bounds checked at parse time: beyond them a value is a typo, or overflows float32 inside a step.
MAX_RANK = 65536
MAX_LR = 10.0
MAX_ALPHA = 1e4
MAX_SHRINKAGE = 10.0
MAX_PENALTY = 1e4
MAX_SEED = 2**32 - 1  # numpy seeds are 32-bit (torch takes 64): a larger seed is a typo, not a seed


class UsageError(Exception):
    """A bad argument found after parsing (e.g. a model that cannot do the task): exit code 2."""


def _int_at_least(lowest: int, what: str, highest: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < lowest or (highest is not None and value > highest):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    return parse


def _finite_float_above(lowest: float, inclusive: bool, what: str, highest: float = float("inf")):
    """A parser for finite floats > lowest (>= lowest when ``inclusive``) and <= highest, failing with ``what``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        above = value >= lowest if inclusive else value > lowest
        if not above or not value <= highest or value == float("inf"):  # NaN fails "<=" too
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    return parse


_rank = _int_at_least(1, f"a positive int <= {MAX_RANK}", MAX_RANK)
_learning_rate = _finite_float_above(0.0, inclusive=False, what=f"a positive number <= {MAX_LR:g}", highest=MAX_LR)
_alpha = _finite_float_above(0.0, inclusive=False, what=f"a positive number <= {MAX_ALPHA:g}", highest=MAX_ALPHA)
_shrinkage = _finite_float_above(0.0, inclusive=False, what=f"a positive number <= {MAX_SHRINKAGE:g}",
                                 highest=MAX_SHRINKAGE)
_penalty = _finite_float_above(0.0, inclusive=True, what=f"a number in [0, {MAX_PENALTY:g}]", highest=MAX_PENALTY)


_seed = _int_at_least(0, f"an int in [0, 2**32 - 1 = {MAX_SEED}] (numpy's seeds are 32-bit)", MAX_SEED)


def _out_folder(text: str) -> Path:
    """``--out``: a folder path the system can hold, checked at parse time (an empty one would be the current folder;
    a name over 255 bytes or a path over 4096 fails every file call with ``File name too long``)."""
    try:
        files.check_folder_path(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return Path(text)


def _module_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of module names, got {text!r}")
    return names


# ---------------------------------------------------------------------------------------------- train


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    from lowrank_lab.assets import MODEL_NAMES, TASK_NAMES

    p = subparsers.add_parser(
        "train", help="fine-tune one model on one task with one method",
        description="Fine-tune a model on a task; writes metrics.json, history.json and curves.png to --out.",
    )
    p.add_argument("--method", required=True, choices=sorted(recipes.METHODS), help="fine-tuning method")
    p.add_argument("--task", required=True, choices=TASK_NAMES, help="task to train on")
    p.add_argument("--model", choices=MODEL_NAMES, default=None, help="model (default: the task's default)")
    p.add_argument("--scale", choices=SCALES, default=None,
                   help="budget preset (default: $LOWRANK_LAB_SCALE, else full with CUDA, else cpu)")
    p.add_argument("--seed", type=_seed, default=0, help=f"random seed, 0 to {MAX_SEED} (default 0)")
    p.add_argument("--out", type=_out_folder, default=None,
                   help="output folder (default: runs/<task>-<model>-<method>-<scale>-s<seed>)")
    p.add_argument("--r", type=_rank, default=None, help="adapter rank (default 8)")
    p.add_argument("--alpha", type=_alpha, default=None, help="LoRA alpha (default: 2*r)")
    p.add_argument("--lr", type=_learning_rate, default=None, help="peak learning rate (default: preset)")
    p.add_argument("--head-lr", type=_learning_rate, default=None,
                   help="peak learning rate of the task's new head (default: --lr); compare's shared-rate protocol "
                        "fixes it so the head learns whatever rate the adapters share")
    p.add_argument("--max-steps", type=_int_at_least(1, "a positive int"), default=None,
                   help="optimizer steps (default: preset)")
    p.add_argument("--target-modules", type=_module_list, default=None,
                   help="comma-separated module names for the adapters (default: the model's)")
    seen: dict[str, str] = {}
    for method, options in registry.cli_options().items():  # each method's own flags, from its registration
        group = p.add_argument_group(method, f"only with --method {method}")
        for option in options:
            if option.name in seen:
                raise ValueError(f"methods {seen[option.name]!r} and {method!r} both declare --{option.name}")
            seen[option.name] = method
            group.add_argument("--" + option.name.replace("_", "-"), dest=option.name, type=option.parse,
                               default=None, help=option.help)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
    return p


def _check_train_args(args) -> tuple[str, str, Path]:
    """Resolve defaults and cross-check arguments; nothing is loaded yet."""
    from lowrank_lab.assets import MODEL_NAMES, model_spec

    try:
        scale = get_scale(args.scale)
    except ValueError as err:  # a bad $LOWRANK_LAB_SCALE
        raise UsageError(str(err)) from None
    kind = presets.task_kind(args.task)
    model = args.model or DEFAULT_MODELS[kind]
    if kind not in model_spec(model).kinds:
        able = [m for m in MODEL_NAMES if kind in model_spec(m).kinds]
        raise UsageError(f"model {model!r} cannot do task {args.task!r} ({kind}); use one of {able}")
    out = args.out or Path("runs") / f"{args.task}-{model}-{args.method}-{scale}-s{args.seed}"
    try:
        files.check_folder_path(out)  # the default too: a long task or model name
    except ValueError as err:
        raise UsageError(f"--out: {err}") from None
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out must be a folder, got the file {str(out)!r}")
    _warn_full_on_cpu(scale, kind)
    return scale, model, out


def _warn_full_on_cpu(scale: str, kind: str) -> None:
    """``--scale full`` is the GPU preset; asked for on a machine without a GPU it still runs (the user asked), but
    says so first, in one line on stderr, with roughly what it costs."""
    if scale != "full" or get_device(scale).type != "cpu":
        return
    preset = presets.TRAIN_PRESETS["full"][kind]
    cpu = presets.TRAIN_PRESETS["cpu"][kind]
    # what it costs, from the presets themselves (a typed duration would drift from them and from the machine)
    cpu_work = (f"{cpu['max_steps']} steps of batch {cpu['batch_size']} at length {cpu['max_length']}"
                + (f" on at most {cpu['max_train']} training rows" if cpu.get("max_train") else ""))
    print(f"python -m lowrank_lab train: warning: --scale full is the GPU preset ({preset['epochs']} epochs over all "
          f"the training data, batch {preset['batch_size']}, length {preset['max_length']}) and no GPU was found, so "
          f"it runs on the CPU in fp32, several times the work of --scale cpu ({cpu_work}), the preset sized for a "
          "CPU", file=sys.stderr)


def _check_writable(out: Path) -> None:
    """Last check before loading: a run whose results cannot be written is not started."""
    try:
        files.check_writable_folder(out)
    except ValueError as err:
        raise UsageError(f"--out: {err}") from None


def _adapter_scale(model) -> dict:
    """The alpha and scale s the adapters actually used (defaults resolved), or None where not applicable."""
    from lowrank_lab.adapters import adapter_layers, get_config

    config = get_config(model)
    scalings = {name: layer.scaling for name, layer in adapter_layers(model).items() if hasattr(layer, "scaling")}
    if config is None or not hasattr(config, "alpha") or not scalings:
        return {"alpha": None, "scaling": None}
    distinct = sorted(set(scalings.values()))
    return {"alpha": config.alpha, "use_rslora": config.use_rslora,
            "scaling": distinct[0] if len(distinct) == 1 else None,  # per layer below when ranks differ
            **({"scaling_by_layer": scalings} if len(distinct) > 1 else {})}


def _summary_metrics(args, run, wall, spec: dict) -> dict:
    env = environment_report(run.scale)
    metrics = {
        **run.summary(), "run_spec": spec,
        "r": args.r if registry.options_apply(args.method) else None, **_adapter_scale(run.model),
        "target_modules": list(args.target_modules) if args.target_modules else None,
        "validation": run.history["final"]["validation"], "test": run.history["final"]["test"] or {},
        "wall_time_s": wall, "device": run.history["device"],
        "versions": {k: env[k] for k in ("python", "torch", "transformers", "datasets", "lowrank-lab")},
    }
    if run.task.kind == "causal_lm":  # exact match beside the primary metric, whichever that is
        metrics["exact_match"] = metrics["validation"].get("exact_match")
        metrics["test_exact_match"] = metrics["test"].get("exact_match")
    return metrics


PER_EXAMPLE_KEYS = ("correct", "base_correct", "per_passage", "base_per_passage")


def _forgetting_rows(metrics: dict) -> dict:
    """The per-example rows of the retained-capability measures, moved out of metrics.json into predictions.json
    (``{"retained": {probe task: [0/1 per probe example]}, "retained_base": {...}}`` for a classifier; the per-passage
    held-out losses of a causal LM): what a paired bootstrap resamples, and metrics.json stays a summary."""
    retained = metrics.get("retained") or {}
    rows, base = {}, {}
    for task, values in (retained.get("per_task") or {}).items():
        if isinstance(values, dict):
            if "correct" in values:
                rows[task] = values.pop("correct")
            if "base_correct" in values:
                base[task] = values.pop("base_correct")
    for key, target in (("per_passage", rows), ("base_per_passage", base)):
        if key in retained:
            target["heldout_loss"] = retained.pop(key)
    return {k: v for k, v in (("retained", rows), ("retained_base", base)) if v}


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_table(rows: list[dict]) -> None:
    """A plain-text result table, one row per run."""
    columns = ["method", "task", "model", "trainable", "val", "test", "s/step"]
    lines = [[
        m["method"], m["task"], m["model"],
        f"{m['trainable_params']:,} ({100 * m['trainable_params'] / m['total_params']:.2f}%)",
        f"{m['metric']}={_fmt(m['metric_value'])}", f"{m['metric']}={_fmt(m['test_metric_value'])}",
        f"{m['median_step_time_s']:.3f}",
    ] for m in rows]
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(columns)]
    for line in [columns, ["-" * w for w in widths], *lines]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)))


def _method_extra(args, scale: str) -> dict:
    """The method's own flags as MethodOptions.extra, checked by the method (e.g. XGBLoRA's kappa <= the step
    budget) before anything loads; another method's flags are refused, naming them."""
    extra, foreign = {}, []
    for method, options in registry.cli_options().items():
        for option in options:
            value = getattr(args, option.name, None)
            if value is None:
                continue
            if method == args.method:
                extra[option.name] = value
            else:
                foreign.append(("--" + option.name.replace("_", "-"), method))
    if foreign:
        flags = ", ".join(flag for flag, _ in foreign)
        owners = sorted({method for _, method in foreign})
        raise UsageError(f"{flags} only apply to --method {' / '.join(owners)}, got --method {args.method!r}")
    check = registry.get(args.method).check_extra
    if extra and check is not None:
        check(extra, args.max_steps or presets.train_preset(args.task, scale, args.method)["max_steps"])
    return extra


def _check_options_apply(args) -> None:
    """A method whose runs ignore rank, alpha and target modules (full fine-tuning) refuses them instead of
    recording flags that changed nothing."""
    if registry.options_apply(args.method):
        return
    given = [flag for flag, value in (("--r", args.r), ("--alpha", args.alpha), ("--target-modules", args.target_modules))
             if value is not None]
    if given:
        raise UsageError(f"{', '.join(given)} do not apply to --method {args.method!r} (every parameter trains)")


def _failure_metrics(args, scale: str, model_name: str, spec: dict, err: TrainingFailed, wall: float) -> dict:
    """What a failed or diverged run records: its settings, what happened and where; no metric (strict JSON)."""
    kind = presets.task_kind(args.task)
    metric, higher = presets.primary_metric(kind, scale)
    history = err.history or {}
    return {
        "status": err.status, "error": str(err), "failed_at_step": err.step, "run_spec": spec,
        "method": args.method, "task": args.task, "model": model_name, "scale": scale, "seed": args.seed,
        "lr": spec["preset"]["lr"], "steps": (history.get("config") or {}).get("max_steps"),
        "r": args.r if registry.options_apply(args.method) else None, "metric": metric, "higher_is_better": higher,
        "metric_value": None, "test_metric_value": None, "validation": None, "test": None,
        "final_train_loss": None, "trainable_params": history.get("trainable_params"),
        "total_params": history.get("total_params"), "median_step_time_s": None, "peak_memory_mb": None,
        "wall_time_s": wall, "device": history.get("device"),
    }


def run_train(args) -> int:
    scale, model_name, out = _check_train_args(args)
    _check_options_apply(args)
    if args.r is None:
        args.r = 8
    try:  # option values are checked before loading too (rank, alpha)
        options = recipes.MethodOptions(r=args.r, alpha=args.alpha, target_modules=args.target_modules,
                                        extra=_method_extra(args, scale))
    except ValueError as err:
        raise UsageError(str(err)) from None
    overrides = {k: v for k, v in (("lr", args.lr), ("max_steps", args.max_steps), ("head_lr", args.head_lr))
                 if v is not None}
    spec = run_spec(args.method, args.task, model_name, scale, args.seed, options, overrides)
    _check_writable(out)

    from lowrank_lab.plotting import plot_curves

    start = time.perf_counter()
    # Under torchrun / accelerate launch (WORLD_SIZE > 1): one DDP rank per process; train() shards batches.
    started = distributed.init_from_env(get_device(scale))
    main_process = distributed.is_main_process()
    try:
        run = run_method(args.method, args.task, model_name, scale, args.seed, options, overrides, out_dir=out,
                         show_progress=not args.quiet, measure_forgetting=True)
    except TrainingFailed as err:  # training started and broke: a result to record, not a usage error
        if main_process:
            files.write_json(out / "metrics.json",
                             _failure_metrics(args, scale, model_name, spec, err, time.perf_counter() - start))
        what = "diverged" if isinstance(err, TrainingDiverged) else "training failed"
        print(f"python -m lowrank_lab train: {args.method} on {args.task} (seed {args.seed}) {what} at step "
              f"{err.step}: {err}; recorded in {out}/metrics.json", file=sys.stderr)
        return EXIT_CODES[err.status]
    except (ValueError, FileNotFoundError) as err:  # setup: e.g. --target-modules matching no layer of this model
        raise UsageError(f"method {args.method!r} could not prepare {model_name!r}: {err}") from None
    finally:
        if started:
            distributed.teardown()
    if not main_process:  # rank 0 alone writes metrics.json and curves.png and prints the table
        return 0
    metrics = _summary_metrics(args, run, time.perf_counter() - start, spec)
    # predictions first, metrics.json last: a finished run's metrics.json vouches for the files beside it
    files.write_json(out / "predictions.json", {**run.predictions, **_forgetting_rows(metrics)})
    files.write_json(out / "metrics.json", metrics)
    fig = plot_curves({args.method: run.history}, out / "curves.png", metric=metrics["metric"],
                      title=f"{args.method} on {args.task} ({model_name}, {scale}, seed {args.seed})")
    import matplotlib.pyplot as plt

    plt.close(fig)
    print_table([metrics])
    print(f"wrote {out}/metrics.json, history.json, curves.png  ({metrics['wall_time_s']:.1f} s)")
    return 0


# ---------------------------------------------------------------------------------------------- compare


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    from lowrank_lab.assets import MODEL_NAMES, TASK_NAMES

    default_methods = registry.names(compare_only=True)
    p = subparsers.add_parser(
        "compare", help="every method side by side at a matched trainable-parameter budget",
        description="Train every method (or --methods) on one task over --seeds seeds at a matched budget "
                    "(LoRA rank --r); resumable; writes results.json/.csv, table.md and figures to --out.")
    p.add_argument("--task", required=True, choices=TASK_NAMES, help="task to train on")
    p.add_argument("--model", choices=MODEL_NAMES, default=None, help="model (default: the task's default)")
    p.add_argument("--scale", choices=SCALES, default=None, help="smoke | cpu | full (default: $LOWRANK_LAB_SCALE)")
    p.add_argument("--seeds", type=_int_at_least(1, "a positive int <= 1000", 1000), default=1,
                   help="reporting seeds 1..N per method (seed 0 is the tuning seed, never reported)")
    p.add_argument("--out", type=_out_folder, default=None,
                   help="output folder (default: runs/compare-<task>-<model>-<scale>)")
    p.add_argument("--methods", type=_module_list, default=default_methods,
                   help=f"comma-separated subset (default: {','.join(default_methods)})")
    p.add_argument("--r", type=_rank, default=8, help="the budget: trainable parameters of LoRA at this rank")
    protocol = p.add_mutually_exclusive_group()
    protocol.add_argument("--tune-lr", action="store_true",
                          help="per method: a learning-rate grid (and XGBLoRA's schedule knobs) selected on "
                               "validation, then --seeds seeds at the selected settings, reported on test")
    protocol.add_argument("--shared-lr", type=_learning_rate, default=None,
                          help="one learning rate for every adapter method, full FT at its own (the Bone paper's protocol)")
    p.add_argument("--jobs", type=_int_at_least(1, "a positive int <= 64", 64), default=1,
                   help="runs at a time, each a process with cpu_count/jobs threads (default 1)")
    p.add_argument("--exploratory", default=None, metavar="WHY",
                   help="mark the study exploratory (added after seeing other results), saying why; recorded and shown")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_compare)
    return p


def run_compare(args) -> int:
    from lowrank_lab.compare import command_line, compare

    try:
        scale = get_scale(args.scale)
    except ValueError as err:
        raise UsageError(str(err)) from None
    kind = presets.task_kind(args.task)
    model = args.model or DEFAULT_MODELS[kind]
    out = args.out or Path("runs") / f"compare-{args.task}-{model}-{scale}"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out must be a folder, got the file {str(out)!r}")
    _warn_full_on_cpu(scale, kind)  # its train children warn too, but compare shows their output only on failure
    try:
        results = compare(args.task, model, scale, args.seeds, out, args.methods, args.r,
                          show_progress=not args.quiet, command=command_line(args.argv), tune=args.tune_lr,
                          shared_lr=args.shared_lr, jobs=args.jobs, exploratory=args.exploratory)
    except ValueError as err:  # unknown method, a budget a method cannot meet, stale runs: before any run starts
        raise UsageError(str(err)) from None
    from lowrank_lab.compare import markdown, reproduction_markdown

    print()
    print(markdown(results))
    print()
    print(reproduction_markdown(results))
    print(f"\nwrote {out}/results.json, results.csv, table.md, reproduction.md, forgetting.md and figures "
          f"({results['wall_time_s']:.0f} s)")
    if results["failed"]:  # diverged runs are results; a run that broke is not, and says so in the exit code
        runs = ", ".join(f"{f['method']} seed {f['seed']}" for f in results["failed"])
        print(f"{len(results['failed'])} run(s) failed: {runs}; run the same command again to retry them",
              file=sys.stderr)
        return TRAINING_FAILED
    return 0


# ---------------------------------------------------------------------------------------------- report


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="re-render a comparison's tables from its results.json with the current statistics",
        description="Read FOLDER/results.json (written by compare), recompute the reproduction verdicts from its "
                    "runs' predictions (paired bootstrap over seeds and test examples, Holm within the study) and "
                    "print the comparison table and the reproduction table as markdown.")
    p.add_argument("folder", type=Path, help="a compare output folder (holds results.json)")
    p.add_argument("--write", action="store_true",
                   help="also rewrite FOLDER/table.md, reproduction.md, forgetting.md and the verdict, learn-forget "
                        "and learning-rate figures")
    p.add_argument("--readme", action="store_true",
                   help="also rewrite the README's generated tables of FOLDER (between its markers)")
    p.add_argument("--tuned-rates", action="store_true",
                   help="only print the presets.TUNED_RATES entry of a --tune-lr study (its selected rates and knobs)")
    p.set_defaults(func=run_report)
    return p


def run_report(args) -> int:
    from lowrank_lab.compare import markdown, reproduction_markdown, reproduction_rows, write_reports
    from lowrank_lab.compare.report import read_results

    try:  # a file that is not a compare's results.json (``[]``, keys missing) is named with what it lacks
        results = read_results(args.folder / "results.json")
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    if args.tuned_rates:
        from lowrank_lab.presets import tuned_rates_entry

        try:
            print(tuned_rates_entry(results, str(args.folder / "results.json")))
        except ValueError as err:
            raise UsageError(str(err)) from None
        return 0
    results["reproduction"] = reproduction_rows(results, args.folder)  # the current statistics, not the stored verdicts
    print(markdown(results), reproduction_markdown(results), sep="\n\n")
    if args.write:
        write_reports(args.folder, results)
    if args.readme:
        from lowrank_lab.compare import README, write_readme_sections

        try:
            folder = args.folder.resolve().relative_to(README.parent).as_posix()
            write_readme_sections([folder])
        except ValueError as err:  # outside the repository, or the README has no markers for it
            raise UsageError(str(err)) from None
        print(f"rewrote the tables of {folder} in {README}")
    return 0


# ---------------------------------------------------------------------------------------------- backfill


def add_backfill_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "backfill", help="add the forgetting measures to a study's older runs, where a re-training reproduces them",
        description="Re-train each finished run in FOLDER/runs whose metrics.json lacks retained/intruders (the "
                    "forgetting measures) and add the re-training's measures to it only if the re-training reproduces "
                    "the run (the same settings, identical accuracies at every evaluation, every logged loss within "
                    "1% relative); the rest of the run stays as it was. A run that does not reproduce is left "
                    "untouched and recorded as not reproduced (--replace and --retune say when a tuning run's "
                    "re-training may take its place). Progress in FOLDER/backfill.json; run again to go on.")
    p.add_argument("folder", type=Path, help="a compare output folder (holds runs/)")
    p.add_argument("--jobs", type=_int_at_least(1, "a positive int <= 64", 64), default=1,
                   help="runs at a time, each a process with cpu_count/jobs threads (default 1)")
    p.add_argument("--limit", type=_int_at_least(1, "a positive int"), default=None,
                   help="re-train at most this many runs this time (default: all that lack the measures)")
    p.add_argument("--retry", action="store_true", help="also retry runs recorded as not reproduced")
    p.add_argument("--replace", action="store_true",
                   help="replace a tuning run that does not reproduce by its re-training where the study's tuning, "
                        "replayed with it, selects exactly what it selected (results.json's tuning record follows)")
    p.add_argument("--retune", action="store_true",
                   help="like --replace, and where the selection would change, replace the tuning run all the same "
                        "and run the study's command again: it trains what the new selection needs (reporting seeds "
                        "included) and rewrites results.json; runs it no longer uses move to FOLDER/retired/")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_backfill)
    return p


def run_backfill(args) -> int:
    from lowrank_lab.compare.backfill import backfill

    try:
        done = backfill(args.folder, jobs=args.jobs, limit=args.limit, retry=args.retry,
                        show_progress=not args.quiet, replace=args.replace, retune=args.retune)
    except ValueError as err:  # not a study folder, a run without its settings, a folder in use
        raise UsageError(str(err)) from None
    print(f"{len(done['added'])} run(s) re-trained and reproduced (measures added), "
          f"{len(done['replaced'])} replaced (the selection stands), {len(done['retuned'])} retuned, "
          f"{len(done['not_reproduced'])} not reproduced (kept as they were), {len(done['failed'])} failed; "
          f"{len(done['left'])} still without the measures")
    if "study" in done:
        print(f"the study ran again for the retuned runs: {len(done['study']['failed'])} run(s) failed, "
              f"{len(done['retired'])} moved to {args.folder / 'retired'}: {', '.join(done['retired']) or 'none'}")
    if done["replaced"] or "study" in done:
        print(f"results.json's tuning record changed: python -m lowrank_lab report {args.folder} --write --readme")
    failed = done["not_reproduced"] or done["failed"] or ("study" in done and done["study"]["failed"])
    return TRAINING_FAILED if failed else 0


# ---------------------------------------------------------------------------------------------- lessons


def add_lessons_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "lessons", help="executed copies of the lessons and their solutions, their drift check and the runtime table",
        description="--execute runs lessons (numbers such as 01 03, default all) in a fresh kernel at --scale and "
                    "writes lessons/executed/<lesson>.ipynb with the commit and scale named, and their wall times "
                    "to lessons/executed/timings.json; with --solutions it runs those lessons' worked solutions "
                    "(lessons/solutions/<lesson>_solutions.ipynb) instead, into lessons/executed/solutions/; "
                    "--table rewrites the runtime table of lessons/README.md from those timings (lessons, then "
                    "solutions); --sync-prose copies corrected text cells into executed copies whose code did not "
                    "change; --check lists executed copies, of lessons and of solutions, that are missing or no "
                    "longer match their source.")
    p.add_argument("--execute", nargs="*", metavar="LESSON", default=None, help="lessons to execute (none: all)")
    p.add_argument("--sync-prose", nargs="*", metavar="LESSON", default=None,
                   help="copy the text cells of lessons (none: all) whose code did not change into their executed "
                        "copies, without re-running them")
    p.add_argument("--solutions", action="store_true",
                   help="with --execute or --sync-prose: the named lessons' worked solutions instead of the lessons")
    p.add_argument("--scale", choices=("smoke", "cpu", "full"), default="cpu", help="scale to execute at (cpu)")
    p.add_argument("--timeout", type=_int_at_least(1, "a positive int", 86400), default=3600,
                   help="seconds a cell may run (default 3600)")
    p.add_argument("--table", action="store_true", help="rewrite the runtime table in lessons/README.md")
    p.add_argument("--check", action="store_true",
                   help="check every executed copy (lessons and solutions) against its source")
    p.set_defaults(func=run_lessons)
    return p


def run_lessons(args) -> int:
    from lowrank_lab import notebooks

    if args.solutions and args.execute is None and args.sync_prose is None:
        raise UsageError("--solutions chooses what --execute or --sync-prose works on: --execute [LESSON ...] "
                         "--solutions (--check and --table always cover the solutions)")
    if args.execute is not None and args.sync_prose is not None:
        raise UsageError("--execute regenerates whole copies; --sync-prose only their text: choose one")
    if args.execute is None and args.sync_prose is None and not args.table and not args.check:
        raise UsageError("say what to do: --execute [LESSON ...] [--solutions], --sync-prose [LESSON ...], --table "
                         "and/or --check")
    if args.sync_prose is not None:
        try:
            chosen = notebooks.select(args.sync_prose, solutions=args.solutions)
            for source in chosen:  # every copy checked before the first one is written
                notebooks.sync_prose(source, dry_run=True)
            for source in chosen:
                changed = notebooks.sync_prose(source)
                print(f"{source.name}: {len(changed)} text cell(s) updated" + (f" ({changed})" if changed else ""))
        except ValueError as err:
            raise UsageError(str(err)) from None
    if args.execute is not None:
        try:
            chosen = notebooks.select(args.execute, solutions=args.solutions)
            for source in chosen:
                notebooks.commit_of(source)  # every notebook checked before the first one runs
        except ValueError as err:
            raise UsageError(str(err)) from None
        for source in chosen:
            print(f"executing {source.name} at scale {args.scale} ...", flush=True)
            record = notebooks.execute(source, args.scale, args.timeout)
            copy = notebooks.executed_copy(source).relative_to(notebooks.ROOT).as_posix()
            print(f"  {record['wall_time_s'] / 60:.1f} min -> {copy}", flush=True)
    if args.table:
        notebooks.write_runtime_table()
        print("rewrote the runtime table in lessons/README.md")
    if args.check:
        problems = notebooks.check_all()
        print("\n".join(problems) if problems else "every executed copy matches its lesson or solutions notebook")
        return 1 if problems else 0
    return 0


# ---------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    recipes.load_method_plugins()  # so methods registered in lowrank_lab.methods appear in --method
    parser = argparse.ArgumentParser(prog="python -m lowrank_lab",
                                     description="lowrank_lab: low-rank fine-tuning experiments")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(subparsers)
    add_compare_parser(subparsers)
    add_report_parser(subparsers)
    add_backfill_parser(subparsers)
    add_lessons_parser(subparsers)
    add_site_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad arguments) instead of exiting."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = argv
    except SystemExit as exit_:  # argparse exits 2 on errors (message already printed), 0 on --help
        return exit_.code if isinstance(exit_.code, int) else USAGE_ERROR
    try:
        return args.func(args)
    except UsageError as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
