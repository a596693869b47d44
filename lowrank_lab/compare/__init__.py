"""Every method side by side at a matched trainable-parameter budget: ``python -m lowrank_lab compare``.

The budget is that of LoRA at rank ``r`` (default 8) on the model's default target modules; each method meets it
by the rule its registration names (:mod:`.budget`). Each (method, seed) runs as its own ``python -m lowrank_lab
train`` process, reused when its recorded settings match and its files check out (:mod:`.runs`). ``--tune-lr``
selects each method's rate (and knobs) on validation with a tuning seed that is never reported, the same number of
configurations per method (:mod:`.tuning`). The registered paper claims are judged from per-example predictions
with intervals over seeds and test examples, four outcomes and a refusal, Holm-adjusted per study
(:mod:`.verdicts`). Outputs in ``--out`` (:mod:`.report`): ``results.json`` (command, matching, tuning, every run's
summary, the verdicts), ``results.csv``, ``table.md``, ``reproduction.md``, ``forgetting.md`` and figures.

The package's modules, one per concern: ``budget`` (matching), ``runs`` (run folders, checks, the pool, the folder
lock), ``tuning`` (grids, selection, seeds), ``verdicts`` (the reproduction table), ``report`` (tables, figures,
README sections, committed studies), ``study`` (``compare()`` itself), ``backfill`` (the forgetting measures for runs
made before them, kept only where a re-training reproduces the run).
"""

from .budget import _trainable, plan
from .report import (CSV_FIELDS, README, RESULTS_DIR, SENTIMENT_STUDIES, _protocol_text, committed_results,
                     convergence_line, convergence_lines, first_committed_study, forgetting_markdown, markdown,
                     method_order, multi_seed_evidence, outcome_line, readme_folders, readme_markers, readme_section,
                     reproduction_markdown, settle_step, study_claim, study_compute, study_rows, test_table,
                     tuning_markdown, write_outputs, write_readme_sections, write_reports)
from .runs import FolderBusy, FolderLock, RunKey, RunPool, _run_dir, check_run_files, train_arguments
from .study import HEAD_LR, _lr_source, chance_levels, command_line, compare, readable_command, shell_join
from .tuning import (LR_GRID_POINTS, REPORT_SEED_START, TUNE_SEED, TUNE_SEEDS, TUNING_BUDGET, knob_grid,
                     lattice_index, lattice_rate, lr_grid, report_seeds, tune_lr, tune_method)
from .verdicts import outcome_counts, reproduction_claims, reproduction_rows, seed_values


def __getattr__(name: str):
    """Tables computed from the method registry on access (a method registered later is in them)."""
    from lowrank_lab import registry

    if name == "COMPARE_METHODS":  # compare's default set, in table order
        return registry.names(compare_only=True)
    if name == "MATCHING":  # method -> its budget rule
        return {m: registry.get(m).budget for m in registry.names()}
    if name == "MATCHING_TEXT":
        return dict(registry.BUDGET_RULES)
    if name == "REPRODUCTION_CLAIMS":
        return registry.claims()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
