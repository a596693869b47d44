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
import shlex
import sys
import time
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
CSV_FIELDS = ("method", "seed", "status", "options_r", "metric", "metric_value", "test_metric_value", "final_train_loss",
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
    return planned


def _run_dir(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / f"{method}-s{seed}"


def _train_in_subprocess(method, task_name, model_name, scale, seed, r, run_dir: Path, show_progress: bool) -> str:
    """One run = one ``python -m lowrank_lab train`` process: its peak memory is its own (on CPU the process
    peak RSS is all a process can report), and a crash loses only that run. Returns what the child printed
    when it did not finish normally (its own status is in its metrics.json)."""
    import subprocess

    cmd = [sys.executable, "-m", "lowrank_lab", "train", "--method", method, "--task", task_name,
           "--model", model_name, "--scale", scale, "--seed", str(seed), "--r", str(r), "--out", str(run_dir)]
    if not show_progress:
        cmd.append("--quiet")
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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


def check_resumable(out: Path, runs: dict[tuple[str, int], dict]) -> None:
    """Refuse (``ValueError``, before any run) when a run folder holds a run made with other settings."""
    problems = []
    for (method, seed), spec in runs.items():
        metrics, _ = _recorded(_run_dir(out, method, seed))
        if metrics is None:
            continue  # nothing there, or unreadable: it will be (re-)run
        recorded = metrics.get("run_spec")
        if not isinstance(recorded, dict):
            problems.append(f"{_run_dir(out, method, seed)}: made without a record of its settings "
                            "(an older lowrank-lab)")
            continue
        differences = experiment.spec_differences(recorded, spec)
        if differences:
            problems.append(f"{_run_dir(out, method, seed)}: " + "; ".join(differences))
    if problems:
        raise ValueError(f"{out} holds runs made with other settings than this comparison asks for, so they "
                         f"cannot be reused; use another --out or delete them:\n  " + "\n  ".join(problems))


def compare(task_name: str, model_name: str | None = None, scale: str = "smoke", seeds: int = 1,
            out: str | Path = "runs/compare", methods=COMPARE_METHODS, r: int = 8, show_progress: bool = True,
            command: str | None = None) -> dict:
    """Run (or resume) the comparison; return the results dict also written to ``out/results.json``.

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
    model_name = model_name or experiment.default_model(task_name)
    from lowrank_lab.assets import MODEL_NAMES, model_spec

    if model_name not in MODEL_NAMES:
        raise ValueError(f"model must be one of {MODEL_NAMES}, got {model_name!r}")
    if presets.task_kind(task_name) not in model_spec(model_name).kinds:
        raise ValueError(f"model {model_name!r} cannot do task {task_name!r} ({presets.task_kind(task_name)})")
    out = Path(out)
    files.check_writable_folder(out)
    planned = plan(methods, task_name, model_name, r)  # every budget problem surfaces before the first run
    specs = {(method, seed): experiment.run_spec(method, task_name, model_name, scale, seed,
                                                 recipes.MethodOptions(r=planned[method]["r"]))
             for method in methods for seed in range(seeds)}
    check_resumable(out, specs)  # and every stale run folder

    start = time.perf_counter()
    summaries, histories, failed = [], {}, []
    for (method, seed), spec in specs.items():
        run_dir = _run_dir(out, method, seed)
        metrics, why = _recorded(run_dir)
        if metrics is not None and metrics.get("status", "ok") == "failed":
            metrics, why = None, f"its last attempt failed ({metrics.get('error')})"
        if metrics is None:
            if why != "not run yet":
                print(f"{method:<19} seed {seed}: re-running: {why}")
            output = _train_in_subprocess(method, task_name, model_name, scale, seed, planned[method]["r"],
                                          run_dir, show_progress)
            metrics, why = _recorded(run_dir)
            if metrics is None or metrics.get("run_spec") != spec:  # died before recording anything of its own
                metrics = {"status": "failed", "error": output or why, "run_spec": spec}
        metrics = {**metrics, "method": method, "seed": seed, "options_r": planned[method]["r"]}
        metrics.setdefault("status", "ok")
        summaries.append(metrics)
        if metrics["status"] == "ok":
            if seed == 0 or method not in histories:
                try:
                    histories[method] = files.read_json(run_dir / "history.json")
                except (ValueError, FileNotFoundError) as err:
                    print(f"{method:<19} seed {seed}: no curve: {err}")
            print(f"{method:<19} seed {seed}: {metrics['metric']} = {metrics['metric_value']:.4f}  "
                  f"({metrics['trainable_params']:,} trainable, {metrics['median_step_time_s']:.3f} s/step)")
        else:
            print(f"{method:<19} seed {seed}: {metrics['status'].upper()}: {str(metrics.get('error'))[-300:]}")
            if metrics["status"] == "failed":
                failed.append({"method": method, "seed": seed, "error": metrics.get("error")})

    metric, higher = presets.primary_metric(presets.task_kind(task_name), scale)
    results = {
        "command": command, "task": task_name, "model": model_name, "scale": scale, "seeds": seeds, "r": r,
        "budget": next(iter(planned.values()))["budget"], "matching": planned, "metric": metric,
        "higher_is_better": higher, "table": experiment.aggregate(summaries, methods=methods), "runs": summaries,
        "failed": failed, "wall_time_s": time.perf_counter() - start,
    }
    write_outputs(out, results, histories)
    return results


def markdown(results: dict) -> str:
    metric = results["metric"] + ("" if results["higher_is_better"] else ", lower is better")
    lines = [f"{results['task']} · {results['model']} · scale {results['scale']} · {results['seeds']} seed(s) · "
             f"budget: LoRA r={results['r']} = {results['budget']:,} trainable parameters",
             "", f"| method | budget rule | r | validation {metric} (mean ± std) | test (mean) | trainable | s/step | "
             "peak memory (MB) |", "|---|---|---|---|---|---|---|---|"]
    for method, row in results["table"].items():
        tests = [s["test_metric_value"] for s in results["runs"]
                 if s["method"] == method and s.get("test_metric_value") is not None]
        test = f"{sum(tests) / len(tests):.4f}" if tests else "—"
        match = results["matching"][method]
        trainable = (f"{row['trainable_params']:,} ({row['trainable_params'] / row['total_params']:.2%})"
                     if row.get("trainable_params") else "—")
        step = f"{row['median_step_time_s']:.3f}" if row.get("median_step_time_s") is not None else "—"
        memory = f"{row['peak_memory_mb']:.0f}" if row.get("peak_memory_mb") is not None else "—"
        lines.append(f"| {method} | {match['rule_text']} | {match['r'] if match['rule'] != 'reference' else '—'} | "
                     f"{experiment.describe(row)} | {test} | {trainable} | {step} | {memory} |")
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


def reproduction_rows(results: dict) -> list[dict]:
    """Our verdict on each claim whose methods are in ``results``: reproduced / not reproduced, with numbers."""
    table, sign = results["table"], 1.0 if results["higher_is_better"] else -1.0
    rows = []
    for claim in REPRODUCTION_CLAIMS:
        ours, base = table.get(claim["method"]), table.get(claim["baseline"])
        if ours is None or base is None:
            continue
        if ours["mean"] is None or base["mean"] is None:  # every run of one side diverged or failed
            rows.append({**claim, "verdict": "n/a: no finished run",
                         "measured": f"{claim['method']}: {experiment.describe(ours)}; "
                                     f"{claim['baseline']}: {experiment.describe(base)}"})
            continue
        diff = sign * (ours["mean"] - base["mean"])  # > 0: the method is better
        spread = max(ours["std"], base["std"])
        if claim["kind"] == "faster":
            held = ours["median_step_time_s"] < base["median_step_time_s"]
            measured = (f"{ours['median_step_time_s']:.3f} vs {base['median_step_time_s']:.3f} s/step "
                        f"({ours['median_step_time_s'] / base['median_step_time_s']:.2f}x)")
        else:
            if claim["kind"] == "matches":
                held = diff >= -claim["tolerance"]
            elif claim["kind"] == "fewer_params":
                held = diff >= 0 and ours["trainable_params"] < base["trainable_params"]
            else:
                held = diff > 0
            measured = (f"{results['metric']} {ours['mean']:.4f} ± {ours['std']:.4f} vs {base['mean']:.4f} ± "
                        f"{base['std']:.4f} ({claim['baseline']})")
            if claim["kind"] == "fewer_params":
                measured += f"; trainable {ours['trainable_params']:,} vs {base['trainable_params']:,}"
            if claim["kind"] == "matches":
                measured += f"; tolerance {claim['tolerance']}"
            if table.get(claim.get("gap_to"), {}).get("mean") is not None:
                from lowrank_lab.experiment import gap_closed

                fraction = gap_closed(base["mean"], ours["mean"], table[claim["gap_to"]]["mean"],
                                      results["higher_is_better"])
                measured += "; gap to full FT closed: " + ("n/a (full FT not better)" if fraction is None
                                                           else f"{fraction:.0%}")
            if results["seeds"] > 1 and abs(diff) <= spread:
                measured += " (difference within the seed spread)"
        verdict = "reproduced" if held else "not reproduced"
        if results["scale"] == "smoke":  # a few steps on a few examples exercise the code, they test nothing
            verdict = "n/a at smoke scale"
        rows.append({**claim, "measured": measured, "verdict": verdict})
    return rows


def reproduction_markdown(results: dict) -> str:
    lines = [f"Reproduction at our scale: {results['task']} · {results['model']} · {results['scale']} · "
             f"{results['seeds']} seed(s). The papers' evidence is theirs (their models and data); ours is a "
             "direction test on a small model and budget.", "",
             "| paper | claim | paper's evidence | our measurement | verdict |", "|---|---|---|---|---|"]
    for row in reproduction_rows(results):
        lines.append(f"| {row['paper']} | {row['claim']} | {row['paper_evidence']} | {row['measured']} | "
                     f"**{row['verdict']}** |")
    return "\n".join(lines)


def write_outputs(out: Path, results: dict, histories: dict) -> None:
    import matplotlib.pyplot as plt

    from lowrank_lab.plotting import plot_curves

    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / "results.json", results)

    def write_csv(path):
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(results["runs"])

    files.atomic_write(out / "results.csv", write_csv)
    files.write_text(out / "table.md", markdown(results) + "\n")
    files.write_text(out / "reproduction.md", reproduction_markdown(results) + "\n")

    title = f"{results['task']} ({results['model']}, {results['scale']})"
    if histories:
        plt.close(plot_curves(histories, out / "curves.png", title=f"{title}, seed 0", metric=results["metric"]))
    table = {m: row for m, row in results["table"].items() if row["mean"] is not None}  # finished runs only
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (method, row) in enumerate(table.items()):
        ax.errorbar(row["trainable_params"], row["mean"], yerr=row["std"], fmt="o", color=f"C{i % 10}",
                    capsize=3, label=method)
    ax.set(xscale="log", xlabel="trainable parameters (log)", ylabel=f"validation {results['metric']}",
           title=f"{title}: metric vs trainable parameters")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "metric_vs_params.png")
    plt.close(fig)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = list(table)
    ax_t.bar(names, [table[m]["median_step_time_s"] for m in names], color=[f"C{i % 10}" for i in range(len(names))])
    ax_m.bar(names, [table[m]["peak_memory_mb"] for m in names], color=[f"C{i % 10}" for i in range(len(names))])
    ax_t.set(ylabel="median s / optimizer step", title="step time")
    ax_m.set(ylabel="peak memory (MB)", title="peak memory (CPU: peak RSS of the run's process; GPU: allocator peak)")
    for ax in (ax_t, ax_m):
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "cost.png")
    plt.close(fig)


def command_line(argv: list[str] | None) -> str:
    return "python -m lowrank_lab " + shlex.join(sys.argv[1:] if argv is None else argv)
