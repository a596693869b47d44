"""What a comparison writes and the README shows: the comparison table (validation and test), the learning-rate
selection, the reproduction verdicts (Holm-adjusted first), what each method forgot, the figures, and the
README's generated sections; plus the committed studies the lessons read."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from lowrank_lab import experiment, files, registry, stats

from .tuning import TUNE_SEED
from .verdicts import HEADLINE_EPSILON, outcome_counts, reproduction_rows

CSV_FIELDS = ("method", "seed", "status", "folder", "options_r", "metric", "metric_value", "test_metric_value",
              "final_train_loss", "trainable_params", "total_params", "lr", "steps", "median_step_time_s",
              "peak_memory_mb", "wall_time_s", "cpu_capability")
RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"  # the repository's committed studies
README = RESULTS_DIR.parent / "README.md"


# What every table and verdict reads from a compare's results.json (older studies lack some of the other keys).
RESULTS_KEYS = ("task", "model", "scale", "seeds", "r", "budget", "metric", "higher_is_better", "table", "matching",
                "runs")


def read_results(path: Path) -> dict:
    """A compare's ``results.json``, checked for what the tables read: a ``ValueError`` naming the file and what is
    missing or of the wrong type (an empty list, a hand-made file), not a traceback from deep inside a table."""
    results = files.read_json(path)  # ValueError naming the file: truncated, not JSON, NaN
    what = f"{path} is not a compare's results.json"
    if not isinstance(results, dict):
        raise ValueError(f"{what}: the top level must be a JSON object with the keys {list(RESULTS_KEYS)}, "
                         f"got {type(results).__name__} {str(results)[:60]}")
    missing = [key for key in RESULTS_KEYS if key not in results]
    if missing:
        raise ValueError(f"{what}: it lacks the keys {missing}")
    expected = {"table": dict, "matching": dict, "runs": list, "higher_is_better": bool, "metric": str}
    wrong = [f"{key} must be a JSON {'object' if kind is dict else kind.__name__}, got {results[key]!r:.60}"
             for key, kind in expected.items() if not isinstance(results[key], kind)]
    wrong += [f"runs[{i}] must be an object with 'method' and 'seed', got {run!r:.60}"
              for i, run in enumerate(results["runs"] if isinstance(results["runs"], list) else [])
              if not isinstance(run, dict) or "method" not in run or "seed" not in run][:3]
    if wrong:
        raise ValueError(f"{what}: " + "; ".join(wrong))
    return results


def method_order(results: dict) -> list[str]:
    """The table's methods in the order compare ran them (JSON files store objects with sorted keys)."""
    known = results.get("methods") or [m for m in registry.names() if m in results["table"]]
    return [m for m in known if m in results["table"]] + sorted(set(results["table"]) - set(known))


def test_table(results: dict) -> dict:
    """A study's test metric per method (mean ± std over seeds), the split its verdicts are reported on (the
    validation ``table`` selected the rates). Studies that predate ``test_table`` have it aggregated from their runs."""
    return results.get("test_table") or experiment.aggregate(results["runs"], key="test_metric_value",
                                                             methods=list(results["table"]))


def _protocol_text(results: dict) -> str:
    protocol = results.get("protocol", "preset")
    seeds = results.get("report_seeds")
    seeds_text = f"; reported seeds {seeds[0]}-{seeds[-1]}" if seeds and len(seeds) > 1 else ""
    if protocol == "tuned":
        return ("each method at its own learning rate, selected on validation with tuning seed "
                f"{TUNE_SEED}, never reported{seeds_text}")
    if protocol == "shared_lr":
        head = f", the new task head at {results['head_lr']:g} for every method" if results.get("head_lr") else ""
        return f"one shared learning rate {results['shared_lr']:g} for every adapter (full FT at its own){head}{seeds_text}"
    sources = {s.get("lr_source") for s in (results.get("settings") or {}).values()}
    studies = sorted(x for x in sources if x and x.endswith(".json"))  # results files that chose the rates
    if studies and sources == set(studies):
        return f"each method at its default learning rate, selected by `compare --tune-lr` ({', '.join(studies)})"
    if studies:
        return f"each method at its default learning rate (tuned in {', '.join(studies)} where listed there)"
    return "each method at its preset learning rate"


def markdown(results: dict) -> str:
    metric = results["metric"] + ("" if results["higher_is_better"] else ", lower is better")
    tests = test_table(results)
    lines = [f"{results['task']} · {results['model']} · scale {results['scale']} · {results['seeds']} seed(s) · "
             f"budget: LoRA r={results['r']} = {results['budget']:,} trainable parameters · protocol: "
             f"{_protocol_text(results)}",
             "", f"| method | budget rule | r | lr | validation {metric} (mean ± std) | test {metric} (mean ± std) | "
             "trainable | s/step (information only) | peak memory (MB) |", "|---|---|---|---|---|---|---|---|---|"]
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
        from .study import readable_command  # study imports this module: resolved at call time

        lines += ["", f"Reproduce with: `{readable_command(results['command'])}`"]
    return "\n".join(lines)


def _outcome_text(row: dict, key: str) -> str:
    text = f"**{row[key]}**"
    return text + (f" ({row['reason']})" if row[key] == stats.NO_VERDICT and row.get("reason") and key == "verdict_holm"
                   else "")


def reproduction_markdown(results: dict, folder=None) -> str:
    """The reproduction table of ``results``: its stored rows when they carry today's verdicts, else the rows
    recomputed from the runs in ``folder`` (rows of an older study without per-example evidence say so)."""
    rows = results.get("reproduction") or []
    if not rows or any("verdict_holm" not in r for r in rows):
        rows = reproduction_rows(results, folder)
    if results["scale"] == "smoke":
        note = "At smoke scale a few steps on a few examples exercise the code; the verdicts test nothing."
    else:
        note = ("The papers' evidence is theirs (their models and data); ours is a direction test on a small model and "
                "budget. Intervals resample seeds and test examples together (paired hierarchical bootstrap): "
                "reproduced / contradicted when the 95% interval lies on one side of the claim's threshold, "
                "equivalent when the 90% interval lies inside ±sesoi (fixed before the runs), inconclusive otherwise; "
                "no verdict when an arm did not learn or the evidence is missing. The claims of one study are one "
                "family: the first verdict column is Holm-adjusted (the headline), the second is each claim alone.")
    counts = outcome_counts(rows) if rows else {}
    lines = [f"Reproduction at our scale: {results['task']} · {results['model']} · {results['scale']} · "
             f"{results['seeds']} seed(s) · protocol: {_protocol_text(results)}. {note}", "",
             "| paper | claim | paper's evidence | our measurement | verdict (Holm) | verdict (alone) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['paper']} | {row['claim']} | {row['paper_evidence']} | {row['measured']} | "
                     f"{_outcome_text(row, 'verdict_holm')} | {_outcome_text(row, 'verdict')} |")
    if counts:
        lines += ["", "Outcomes (Holm): " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items()) + "."]
    return "\n".join(lines)


def tuning_markdown(results: dict) -> str:
    """Each tuned method's grid (tuning seed, validation) with the selected rate in bold, whether it sits on the
    grid's edge or next to a collapse (``cliff``), and the schedule knobs tried at that rate."""
    metric = results["metric"]
    budget = {t.get("configurations") for t in (results.get("tuning") or {}).values()} - {None}
    lines = [f"Learning-rate selection (tuning seed {TUNE_SEED}, never reported; validation {metric}; "
             + (f"{budget.pop()} configurations per method" if len(budget) == 1 else "configurations per method below")
             + "; a failed or diverged rate shows its status):", "",
             "| method | rate: validation | selected | edge | cliff | knobs at the selected rate | configurations |",
             "|---|---|---|---|---|---|---|"]

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
        cliff = "**yes**: the next rate up did not learn" if tuning.get("cliff") else "no"
        knobs = " · ".join(("default" if e.get("default") else
                            ", ".join(f"{k}={v}" for k, v in sorted(e.items()) if k not in ("status", "validation", "folder")))
                           + f": {score(e)}" for e in tuning.get("knob_grid") or []) or "—"
        if tuning.get("knobs_selected") is not None and tuning.get("knob_grid"):
            chosen = ", ".join(f"{k}={v}" for k, v in sorted(tuning["knobs_selected"].items())) or "default"
            knobs += f" (selected: {chosen})"
        lines.append(f"| {method} | {grid} | {f'{selected:g}' if selected is not None else 'none'} | {edge} | {cliff} | "
                     f"{knobs} | {tuning.get('configurations', len(tuning['lr_grid']))} |")
    return "\n".join(lines)


def _mean_ci(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) < 2:
        return f"{values[0]:.4f}"
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = stats.t_quantile(0.975, len(values) - 1) * sd / len(values) ** 0.5
    return f"{mean:.4f} [{mean - half:.4f}, {mean + half:.4f}]"


def forgetting_markdown(results: dict) -> str:
    """What each method forgot, per method over its reporting seeds (mean [95% t interval over seeds]): retained
    probe accuracy on the tasks it was not trained on (base model's value beside it), CKA between base and
    fine-tuned embeddings, intruder dimensions and the effective rank of the update."""
    rows = [r for r in results["runs"] if r.get("status", "ok") == "ok" and (r.get("retained") or r.get("intruders"))]
    if not rows:
        return ""
    first = next((r for r in rows if r.get("retained")), {})
    retained_key = "probe_accuracy" if "probe_accuracy" in (first.get("retained") or {}) else "heldout_loss"
    base = (first.get("retained") or {}).get("base_" + retained_key)
    lines = [f"What each method forgot (mean [95% interval over seeds]); retained {retained_key.replace('_', ' ')} of the "
             f"base model: {base:.4f}" if base is not None else "What each method forgot", "",
             f"| method | retained {retained_key.replace('_', ' ')} | CKA to base | intruder dimensions (epsilon "
             f"{HEADLINE_EPSILON:g}) | effective rank of the update (mean over layers) |", "|---|---|---|---|---|"]
    from .verdicts import _intruder_count

    for method in method_order(results):
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        retained = [r["retained"][retained_key] for r in mine if (r.get("retained") or {}).get(retained_key) is not None]
        cka = [r["retained"]["cka"] for r in mine if (r.get("retained") or {}).get("cka") is not None]
        intruders, ranks = [], []
        for r in mine:
            try:
                intruders.append(_intruder_count(r))
            except (KeyError, TypeError, AttributeError):
                pass
            rank = (r.get("intruders") or {}).get("mean_effective_rank")
            if rank is not None:
                ranks.append(rank)
        lines.append(f"| {method} | {_mean_ci(retained)} | {_mean_ci(cka)} | {_mean_ci(intruders)} | {_mean_ci(ranks)} |")
    return "\n".join(lines)


def write_reports(out: Path, results: dict) -> None:
    """``table.md``, ``reproduction.md``, ``forgetting.md`` and the verdict, learn-forget and learning-rate figures
    from ``results`` (its ``reproduction`` rows, its ``tuning`` record): what ``compare`` writes and ``report --write``
    re-renders (after ``backfill --replace`` changed a tuning record, say)."""
    import matplotlib.pyplot as plt

    from lowrank_lab.plotting import plot_learn_forget, plot_lr_sensitivity, plot_paired_differences

    files.write_text(out / "table.md", markdown(results) + "\n")
    files.write_text(out / "reproduction.md", reproduction_markdown(results) + "\n")
    forgetting = forgetting_markdown(results)
    if forgetting:
        files.write_text(out / "forgetting.md", forgetting + "\n")
    title = f"{results['task']} ({results['model']}, {results['scale']})"
    if any(r.get("difference") is not None for r in results.get("reproduction") or []):
        plt.close(plot_paired_differences(results["reproduction"], out / "paired_differences.png",
                                          f"{title}: paired differences, 95% CI (seeds and test examples)"))
    if any((r.get("retained") or {}).get("probe_accuracy") is not None for r in results["runs"]):
        plt.close(plot_learn_forget(results["runs"], out / "learn_forget.png", f"{title}: learned vs retained",
                                    results["metric"]))
    if results.get("tuning"):
        plt.close(plot_lr_sensitivity(results["tuning"], out / "lr_sensitivity.png", results["metric"],
                                      f"{title}: validation {results['metric']} against learning rate"))


def write_outputs(out: Path, results: dict, histories: dict) -> None:
    import matplotlib.pyplot as plt

    from lowrank_lab.plotting import method_color, plot_curves

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
    seeds = results.get("report_seeds") or [0]
    if histories:
        plt.close(plot_curves(histories, out / "curves.png", title=f"{title}, seed {seeds[0]}", metric=results["metric"]))
    table = {m: row for m, row in test_table(results).items() if row["mean"] is not None}  # finished runs only
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (method, row) in enumerate(table.items()):
        ax.errorbar(row["trainable_params"], row["mean"], yerr=row["std"] or None, fmt="o",
                    color=method_color(method, i), capsize=3 if row["std"] else 0, label=method)
    ax.set(xscale="log", xlabel="trainable parameters (log)", ylabel=f"test {results['metric']}",
           title=f"{title}: test metric vs trainable parameters")
    if table:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out / "metric_vs_params.png")
    plt.close(fig)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(table)
    colors = [method_color(m, i) for i, m in enumerate(names)]
    ax_t.bar(names, [table[m]["median_step_time_s"] or 0 for m in names], color=colors)
    ax_m.bar(names, [table[m]["peak_memory_mb"] or 0 for m in names], color=colors)
    ax_t.set(ylabel="median s / optimizer step", title="step time (runs shared the cores: information only)")
    ax_m.set(ylabel="peak memory (MB)", title="peak memory (CPU: peak RSS of the run's process)")
    for ax in (ax_t, ax_m):
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "cost.png")
    plt.close(fig)


def committed_results(name: str) -> dict | None:
    """``results/<name>/results.json`` of the repository (a committed study, e.g. "study-trec-minilm-cpu"), or
    None when this checkout does not have it (a non-editable install carries no results/). A file that is
    there but unreadable raises, naming it."""
    path = RESULTS_DIR / name / "results.json"
    return files.read_json(path) if path.exists() else None


SENTIMENT_STUDIES = ("study-sentiment-minilm-cpu",)  # the committed studies lessons 01-05 read, newest first


def first_committed_study(names, methods=()) -> tuple[str, dict] | None:
    """The first of the committed studies ``names`` (newest first) that ran every one of ``methods``, as
    (name, results); None when this checkout has none of them."""
    for name in names:
        results = committed_results(name)
        if results is not None and all(m in results["table"] for m in methods):
            return name, results
    return None


def seed_values(results: dict, method: str, key: str = "test_metric_value") -> dict[int, float]:
    from .verdicts import seed_values as values

    return values(results, method, key)


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
    source = f"results/{name}/ ({study['seeds']} seeds, {first['steps']} steps, test {study['metric']})"
    table = test_table(study)
    return {m: seed_values(study, m) for m in methods}, {m: table[m] for m in methods}, source


_ROWS_CACHE: dict = {}


def settle_step(evals: list[dict], tolerance: float = 0.01) -> tuple[int, int]:
    """(step of the lowest validation loss, first step whose loss is within ``tolerance`` of it) of a training curve's
    evaluations (``[{"step": ..., "loss": ...}, ...]``): how long a budget must be for the loss to have levelled."""
    if not evals:
        raise ValueError("evals must hold at least one evaluation, got none")
    best = min(evals, key=lambda e: e["loss"])
    first = next(e for e in evals if e["loss"] <= best["loss"] * (1 + tolerance))
    return best["step"], first["step"]


def convergence_line(name: str, curve: dict, tolerance: float = 0.01) -> str:
    """Where one curve of ``benchmarks/convergence.py`` has its lowest validation loss and from which step it stays
    within ``tolerance`` of it."""
    best, settled = settle_step(curve["evals"], tolerance)
    return (f"{name}: lowest validation loss at step {best}; within {tolerance:.0%} of it from step {settled} (of "
            f"{curve['steps']}; lr {curve['lr']:g}; {curve['n_train']} training rows, batch {curve['batch_size']})")


def convergence_lines(folder: Path = RESULTS_DIR / "convergence", tolerance: float = 0.01) -> list[str]:
    """:func:`convergence_line` of every committed curve (``folder/*.json``): what the cpu budget's length rests on."""
    return [convergence_line(path.stem, files.read_json(path), tolerance) for path in sorted(Path(folder).glob("*.json"))]


def study_rows(name: str) -> list[dict] | None:
    """The reproduction rows of the committed study ``results/<name>`` with today's statistics (the verdicts the
    README shows), or None when this checkout does not have it. Computed once per process."""
    results = committed_results(name)
    if results is None:
        return None
    key = (name, (RESULTS_DIR / name / "results.json").stat().st_mtime_ns)
    if key not in _ROWS_CACHE:
        _ROWS_CACHE[key] = reproduction_rows(results, RESULTS_DIR / name)
    return _ROWS_CACHE[key]


def study_claim(method: str, baseline: str, kind: str = "better", names=SENTIMENT_STUDIES) -> tuple[dict | None, str]:
    """What the committed studies say of one claim: (its row from the first study in ``names`` that judged it, a
    line naming that study), or (None, why not). The lessons print this row's outcome for every claim about a trained
    model, so a lesson and the README never disagree; a lesson's own short run is an illustration, not evidence."""
    for name in names:
        rows = study_rows(name)
        for row in rows or []:
            if (row["method"], row["baseline"], row["kind"]) == (method, baseline, kind):
                results = committed_results(name)
                return {**row, "study": name}, (f"results/{name}/ ({results['seeds']} seeds at each method's tuned rate, "
                             f"{results['metric']} on test)")  # claims.summary names the command once
    return None, f"no committed study in this checkout judged {method} vs {baseline} ({kind})"


def outcome_line(row: dict | None, source: str) -> str:
    """One line a lesson prints for a claim about a trained model: the Holm-adjusted outcome, the one alone, the
    difference with its interval, or why there is no verdict."""
    if row is None:
        return f"no study outcome: {source}"
    head = f"{row['claim']} ({row['paper']}): {row['verdict_holm']} (Holm-adjusted; alone: {row['verdict']})"
    if row.get("reason"):
        return f"{head}: {row['reason']}; {source}"
    if row.get("difference") is not None and row.get("ci95"):
        head += f"; difference {row['difference']:+.4f}, 95% CI {stats.ci_text(row)}"
    return f"{head}; {source}"


def run_metrics(folder: Path) -> dict[str, dict]:
    """Every finished run of a study's folder: run folder name -> its metrics.json."""
    return {m.parent.name: files.read_json(m) for m in sorted((Path(folder) / "runs").glob("*/metrics.json"))}


def study_compute(folder: Path, metrics: dict[str, dict] | None = None) -> tuple[int, float]:
    """(run folders, summed wall time in seconds) of every finished run a study's folder holds: the compute it
    cost, tuning grids included (runs went ``jobs`` at a time, so the elapsed time was less). ``metrics``: the
    folder's :func:`run_metrics`, when already read."""
    times = [m.get("wall_time_s") or 0.0 for m in (run_metrics(folder) if metrics is None else metrics).values()]
    return len(times), sum(times)


def tuning_folders(tuning: dict) -> list[str]:
    """The run folders one method's tuning record visited, in its order: the rates, then the knobs."""
    return [c["folder"] for c in (*tuning.get("lr_grid", []), *tuning.get("knob_grid", [])) if c.get("folder")]


def study_folders(results: dict) -> set[str]:
    """Every run folder a study's results.json uses: its reported runs and its tuning configurations."""
    return ({run["folder"] for run in results.get("runs", []) if run.get("folder")}
            | {f for t in (results.get("tuning") or {}).values() for f in tuning_folders(t)})


def unrecorded_runs(results: dict, folder: Path, metrics: dict[str, dict] | None = None) -> tuple[list[str], list[str]]:
    """Run folders of a study that its results.json does not account for: (folders it does not list, as a reported
    run or a tuning configuration; listed reported runs whose metrics.json differs from the copy results.json
    holds). Either is a rerun in progress (or a folder left over from one): the tables are results.json's, not
    theirs. ``metrics``: the folder's :func:`run_metrics`, when already read."""
    listed = {run["folder"]: run for run in results.get("runs", []) if run.get("folder")}
    used = study_folders(results)
    new, changed = [], []
    for name, recorded in (run_metrics(folder) if metrics is None else metrics).items():
        if name not in used:
            new.append(name)
        elif name in listed and any(recorded.get(key) != listed[name].get(key)
                                    for key in ("test", "validation", "wall_time_s")):
            changed.append(name)
    return new, changed


def readme_markers(folder: str) -> tuple[str, str]:
    """The README lines that enclose a committed study's generated tables (``folder`` as in the README)."""
    return (f"<!-- tables of {folder}: generated by `python -m lowrank_lab report {folder} --readme` -->",
            f"<!-- end of the tables of {folder} -->")


def readme_folders(text: str) -> list[str]:
    """The study folders whose tables a README holds between :func:`readme_markers`."""
    head = "<!-- tables of "
    return [line[len(head):].split(":", 1)[0] for line in text.splitlines() if line.startswith(head)]


def backfill_line(folder: Path) -> str:
    """What ``backfill`` did to a study's tuning runs, from its ``backfill.json`` ("" when it never ran there): how
    many got the forgetting measures from a reproducing re-training, how many were replaced by their re-training (the
    values in the tuning table are then the re-training's), which were re-tuned (replaced although the selection
    moved, the study then run again) and which could not be, with why."""
    from .backfill import RECORD_FILE, RETIRED_FOLDER

    path = Path(folder) / RECORD_FILE
    if not path.exists():
        return ""
    runs = files.read_json(path)["runs"]
    by = {s: sorted(k for k, v in runs.items() if v["status"] == s)
          for s in ("added", "replaced", "retuned", "not reproduced")}
    kinds = sorted({v.get("cpu_capability") or "not recorded" for v in runs.values()
                    if v["status"] in ("replaced", "retuned")})
    line = (f"Forgetting measures for the tuning runs (`backfill`): {len(by['added'])} re-trained runs reproduced "
            f"theirs and lent them their measures; {len(by['replaced'])} did not reproduce and were replaced by the "
            f"re-training ({', '.join(kinds) or '—'}), their values above, because the tuning replayed with them "
            f"selects exactly what it selected")
    if by["retuned"]:
        retired = sorted({name for k in by["retuned"] for name in runs[k].get("retired", [])})
        line += ("; re-tuned (`backfill --retune`: replaced by the re-training although the selection moved, then the "
                 "study's command ran again and trained what the new selection needs, the table above is that "
                 "tuning's): " + "; ".join(f"{k} ({runs[k].get('retuned_because', '')})" for k in by["retuned"])
                 + (f"; the runs the study no longer uses are kept in `{RETIRED_FOLDER}/`: {', '.join(retired)}"
                    if retired else ""))
        pending = [k for k in by["retuned"] if "retired" not in runs[k]]
        if pending:
            line += (f"; **the study has not run again since {', '.join(pending)} took its folder**: its tables "
                     f"are stale")
    if by["not reproduced"]:
        line += ("; not reproduced and kept as they were, without the measures: " + "; ".join(
            f"{k} ({runs[k].get('not_replaced') or 'the re-training differs'})" for k in by["not reproduced"]))
    return line + "."


def readme_section(folder: str, root: Path = RESULTS_DIR.parent) -> str:
    """A study's README tables, rendered from ``root/folder/results.json`` and its runs with the current
    statistics: the verdicts first (Holm-adjusted), the comparison table, the learning-rate selection, what each
    method forgot, the compute and the figures."""
    results = read_results(root / folder / "results.json")
    results["reproduction"] = reproduction_rows(results, root / folder)
    metrics = run_metrics(root / folder)  # read once: the compute line and the rerun check both need them
    runs, seconds = study_compute(root / folder, metrics)
    parts = [reproduction_markdown(results), markdown(results)]
    if results.get("tuning"):
        parts.append(tuning_markdown(results))
        backfilled = backfill_line(root / folder)
        if backfilled:
            parts.append(backfilled)
    forgetting = forgetting_markdown(results)
    if forgetting:
        parts.append(forgetting)
    compute = (f"Compute: {runs} runs, {seconds / 3600:.1f} h of run time in all (each run's wall time summed; "
               f"{results.get('jobs', 1)} ran at a time).")
    if results.get("runs_trained") and not results.get("runs_reused"):  # one invocation did all of it
        compute += (f" This command, from start to finish with every run trained by it: "
                    f"{results['wall_time_s'] / 60:.1f} min on {results['cpu_count']} CPU cores.")
    kinds = sorted({r.get("cpu_capability") or "not recorded" for r in results["runs"]})
    compute += f" CPU kind of the reported runs: {', '.join(kinds)}."
    if results.get("exploratory"):
        compute += f" **Exploratory**: {results['exploratory']}"
    new, changed = unrecorded_runs(results, root / folder, metrics)
    if new or changed:
        compute += (f" **A rerun is in progress** (or left folders behind): {len(new)} run folder(s) that "
                    f"results.json does not list and {len(changed)} whose metrics differ from its copy; every table "
                    f"above is results.json's, and the compute count above includes those folders.")
    parts.append(compute)
    figures = [(name, caption) for name, caption in (("paired_differences.png", "paired differences with 95% CIs"),
                                                    ("learn_forget.png", "learned against retained, one point per run"),
                                                    ("lr_sensitivity.png", "validation metric against learning rate"))
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
