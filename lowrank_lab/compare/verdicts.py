"""The reproduction table: each registered paper claim judged on a study's runs, with four outcomes and a refusal.

For a claim "method beats baseline" the evidence is the per-example record of every reporting run
(``predictions.json``): on each seed both arms answered the same test examples, so the difference carries two
noise sources, the seeds and the test examples. :func:`lowrank_lab.stats.paired_bootstrap` resamples both (the
same resampled examples for both arms and every seed) for the interval ``ci95``; the paired t over the per-seed
means stays beside it as ``ci95_seeds``. Outcomes (:data:`lowrank_lab.stats.OUTCOMES`):

* ``reproduced`` / ``contradicted``: the 95% interval lies above / below the claim's threshold (0, or -tolerance
  for "matches");
* ``equivalent``: the 90% interval lies inside +-``sesoi`` (the smallest effect of interest, fixed per claim before
  the runs: a TOST at 5%): the methods do not differ by anything that matters;
* ``inconclusive``: none of these: too noisy to say;
* ``no verdict`` (with a ``reason``): an arm did not learn (mean validation accuracy within 3 binomial standard
  errors of always predicting the largest class, or mean final training loss >= 0.98 x the loss of a uniform guess),
  fewer than 2 seeds, no spread to estimate (a zero-width interval is never evidence), a run that failed, or
  evidence that is missing (no predictions, no benchmark).

Diverged runs count: a diverged seed scores every example wrong (the worst outcome) in its arm, so a method that
diverges on some seeds cannot be judged better on its survivors alone; the row names them.

Each study's claims are one family: ``verdict_holm`` applies Holm's step-down adjustment to the claims' p-values
(the direction tests as one family, the equivalence tests as another), and it is the one the README and lesson 06
headline. The speed claim is judged from ``benchmarks/step_time.py`` (methods alternated in one process), never
from the training runs' own s/step, which ran two at a time on shared cores.
"""

from __future__ import annotations

import re

import math
import statistics
from pathlib import Path

from lowrank_lab import files, registry, stats

LEARNED_LOSS_FRACTION = 0.98  # a final training loss at or above 0.98 x ln C (uniform guess) has not learned
CHANCE_SE = 3.0  # validation accuracy must beat the majority rate by this many binomial standard errors
HEADLINE_EPSILON = 0.5  # the intruder threshold the claim uses (the count over a range of epsilon is reported too)
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def reproduction_claims() -> tuple[dict, ...]:
    """Every registered claim (registry order): paper, claim, the paper's evidence, method, baseline, kind,
    tolerance / sesoi / gap_to."""
    return registry.claims()


def seed_values(results: dict, method: str, key: str = "test_metric_value") -> dict[int, float]:
    """{seed: value} of ``method``'s finished runs in a study (in a tuned study, the selected rate's runs only):
    what a paired verdict pairs."""
    return {run["seed"]: run[key] for run in results["runs"]
            if run["method"] == method and run.get("status", "ok") == "ok" and run.get(key) is not None}


def _runs(results: dict, method: str) -> list[dict]:
    return [run for run in results["runs"] if run["method"] == method]


def learned(results: dict, method: str) -> tuple[bool | None, str]:
    """(did the arm learn, why not). None when the runs predate the record needed to tell."""
    done = [r for r in _runs(results, method) if r.get("status", "ok") == "ok"]
    if not done:
        return False, f"{method}: no run finished"
    base = next((r.get("baselines") for r in done if r.get("baselines")), None) or results.get("baselines")
    if not base:
        return None, f"{method}: its runs predate the record of chance levels"
    if done[0].get("metric") == "accuracy" and base.get("majority_validation") is not None:
        p, n = base["majority_validation"], max(1, base.get("n_validation") or 1)
        floor = p + CHANCE_SE * math.sqrt(p * (1 - p) / n)
        mean = statistics.fmean(r["metric_value"] for r in done)
        if mean <= floor:
            return False, (f"{method} did not learn: mean validation accuracy {mean:.4f} is within {CHANCE_SE:g} "
                           f"standard errors of always predicting the largest class ({p:.4f})")
    losses = [r["final_train_loss"] for r in done if r.get("final_train_loss") is not None]
    uniform = base.get("uniform_loss")
    if losses and uniform:
        mean_loss = statistics.fmean(losses)
        if mean_loss >= LEARNED_LOSS_FRACTION * uniform:
            return False, (f"{method} did not learn: mean final training loss {mean_loss:.3f} >= "
                           f"{LEARNED_LOSS_FRACTION} x ln C = {LEARNED_LOSS_FRACTION * uniform:.3f} (a uniform guess)")
    elif losses and base.get("initial_train_loss") and results.get("metric") != "accuracy":
        initial = statistics.fmean(r["baselines"]["initial_train_loss"] for r in done if r.get("baselines"))
        if statistics.fmean(losses) >= LEARNED_LOSS_FRACTION * initial:
            return False, f"{method} did not learn: its final training loss is not below 0.98 x its first"
    return True, ""


def _portable_command(command) -> str:
    """A recorded command as a reader types it: ``python ...``, never the recording machine's interpreter path."""
    first, _, rest = str(command or "").partition(" ")
    return f"python {rest}" if re.fullmatch(r".*/python[0-9.]*", first) else str(command or "")


# ------------------------------------------------------------------------------------- per-example evidence
def _predictions(folder: Path, run: dict) -> dict:
    return files.read_json(Path(folder) / "runs" / run["folder"] / "predictions.json")


def _example_scores(folder: Path, run: dict, kind: str) -> tuple[list[float], list[float] | None]:
    """One run's per-example scores for a claim of ``kind`` and their weights (None: equal)."""
    predictions = _predictions(folder, run)
    if kind == "forgets_less":
        retained = predictions.get("retained") or {}
        if not retained:
            raise KeyError("no retained-capability probes in predictions.json")
        return [float(x) for task in sorted(retained) for x in retained[task]], None
    test = predictions["test"]
    if "predicted" in test:
        return [float(p == y) for p, y in zip(test["predicted"], test["label"])], None
    losses, tokens = test["answer_loss_sum"], test["answer_tokens"]
    return [loss / max(1, t) for loss, t in zip(losses, tokens)], [float(t) for t in tokens]


def _intruder_count(run: dict) -> float:
    """A run's intruder dimensions at :data:`HEADLINE_EPSILON`, summed over its measured matrices
    (``metrics.json``'s ``intruders``: ``count`` at its ``epsilon``, and ``counts`` over ``epsilons``)."""
    intruders = run.get("intruders") or {}
    if intruders.get("epsilon") is not None and abs(intruders["epsilon"] - HEADLINE_EPSILON) < 1e-9 \
            and intruders.get("count") is not None:
        return float(intruders["count"])
    for epsilon, count in zip(intruders.get("epsilons") or [], intruders.get("total") or intruders.get("counts") or []):
        if abs(float(epsilon) - HEADLINE_EPSILON) < 1e-9:
            return float(count)
    raise KeyError(f"no intruder count at epsilon {HEADLINE_EPSILON}")


def arm_evidence(folder: Path | None, results: dict, method: str, kind: str):
    """({seed: per-example scores}, weights, notes, problem) of one arm; diverged seeds score the worst outcome."""
    runs = _runs(results, method)
    notes, scores, weights, problem = [], {}, None, ""
    failed = [r["seed"] for r in runs if r.get("status") == "failed"]
    if failed:
        return {}, None, notes, f"{method}: run(s) failed on seed(s) {failed}; re-run the command"
    diverged = [r["seed"] for r in runs if r.get("status") == "diverged"]
    for run in runs:
        if run.get("status", "ok") != "ok":
            continue
        try:
            if kind == "more_intruders":
                scores[run["seed"]] = [_intruder_count(run)]
            else:
                if folder is None:
                    raise FileNotFoundError("no study folder to read predictions from")
                scores[run["seed"]], weights = _example_scores(folder, run, kind)
        except FileNotFoundError:
            # named relative to the study folder: a verdict row reads the same on every machine
            return {}, None, notes, (f"{method} seed {run['seed']}: per-example evidence missing "
                                     f"(no runs/{run['folder']}/predictions.json)")
        except (KeyError, ValueError, TypeError) as err:
            return {}, None, notes, f"{method} seed {run['seed']}: per-example evidence missing ({err})"
    if diverged:
        if kind in ("more_intruders",) or weights is not None or not scores:
            return {}, None, notes, f"{method} diverged on seed(s) {diverged}: no worst outcome for this metric"
        width = len(next(iter(scores.values())))
        for seed in diverged:
            scores[seed] = [0.0] * width  # every example wrong: the worst outcome, not a dropped seed
        notes.append(f"{method} diverged on {len(diverged)} of {len(runs)} seeds ({diverged}), counted as every "
                     "example wrong")
    return scores, weights, notes, problem


def _per_seed_means(scores: dict, weights) -> dict:
    if weights is None:
        return {s: statistics.fmean(v) for s, v in scores.items()}
    total = sum(weights)
    return {s: sum(w * x for w, x in zip(weights, v)) / total for s, v in scores.items()}


def speed_evidence(results: dict, claim: dict) -> dict | None:
    """The step-time benchmark's judgement of a "faster" claim for this study's task and model, if one is
    committed (``results/step-time-<task>-<model>-cpu/results.json``, written by ``benchmarks/step_time.py
    --claim``), else None. It is a separate experiment (methods alternated in one process), so its row is a family
    of its own: no Holm adjustment with the accuracy claims."""
    from .report import RESULTS_DIR

    path = RESULTS_DIR / f"step-time-{results['task']}-{results['model']}-cpu" / "results.json"
    if not path.exists():
        return None
    bench = files.read_json(path)
    found = (bench.get("comparisons") or {}).get(claim["method"])
    if not found or found.get("baseline") != claim["baseline"]:
        return None
    ratio = found["ratio"]
    measured = (f"step time {claim['method']}/{claim['baseline']} {ratio['estimate']:.3f}, 95% CI "
                f"[{ratio['ci95'][0]:.3f}, {ratio['ci95'][1]:.3f}], 90% CI [{ratio['ci90'][0]:.3f}, "
                f"{ratio['ci90'][1]:.3f}] over {found['rounds']} alternating rounds "
                f"({(bench.get('machine') or {}).get('cpu_capability', '?')} CPU); equivalent within "
                f"+-{100 * found['equivalence']['margin']:g}%; `{_portable_command(bench.get('command'))}`")
    return {"verdict": found["verdict"], "ci95": ratio["ci95"], "ci90": ratio["ci90"], "mean": ratio["estimate"],
            "rounds": found["rounds"], "measured": measured, "valid": bench.get("valid", False),
            "invalid_reason": "; ".join(bench.get("invalid_reasons") or []),
            "ci_method": (bench.get("statistics") or {}).get("method") if isinstance(bench.get("statistics"), dict) else None,
            "source": str(path.relative_to(RESULTS_DIR.parent))}


def seed_only_interval(ours: dict, base: dict, higher: bool, threshold: float, sesoi: float | None) -> dict:
    """For a quantity with one value per run (an intruder count): the paired t over seeds, with the keys of
    :func:`lowrank_lab.stats.paired_bootstrap` (there are no examples to resample)."""
    paired = stats.paired_difference(ours, base, higher, threshold)
    out = {"mean": paired["mean"], "ci95": paired["ci95"], "ci90": None, "p_value": None, "p_tost": None,
           "n_examples": None, "ci_method": stats.CI_METHOD, "degenerate": False, "reason": None}
    if paired["ci95"] is None:
        return {**out, "reason": "fewer than 2 seeds"}
    n, sd = paired["n"], paired["sd"]
    if not sd > 0:
        return {**out, "degenerate": True, "reason": "no spread to estimate"}
    se, df = sd / n ** 0.5, n - 1
    t90 = stats.t_quantile(0.95, df)
    out["ci90"] = [paired["mean"] - t90 * se, paired["mean"] + t90 * se]
    t = (paired["mean"] - threshold) / se
    out["p_value"] = 2 * min(stats.t_cdf(t, df), 1 - stats.t_cdf(t, df))
    if sesoi is not None:
        out["p_tost"] = stats.tost_p(paired["mean"], se, df, sesoi)
    return out


# ------------------------------------------------------------------------------------------------ the rows
def _no_verdict(claim: dict, reason: str, measured: str = "") -> dict:
    return {**claim, "measured": measured or reason, "verdict": stats.NO_VERDICT, "verdict_holm": stats.NO_VERDICT,
            "reason": reason, "ci95": None, "ci90": None, "ci95_seeds": None, "difference": None, "n": 0,
            "p_value": None, "p_tost": None, "p_holm": None, "p_tost_holm": None, "sesoi": claim.get("sesoi"),
            "threshold": -claim.get("tolerance", 0.0), "ci_method": None, "split": None, "detectable": None}


def _judge(claim: dict, results: dict, folder: Path | None) -> dict:
    method, baseline, kind = claim["method"], claim["baseline"], claim["kind"]
    higher = results["higher_is_better"]
    threshold = -claim.get("tolerance", 0.0)
    sesoi = claim.get("sesoi") if kind != "matches" else None  # "matches" is a one-sided (non-inferiority) claim
    if kind == "faster":
        bench = speed_evidence(results, claim)
        if bench is None:
            return _no_verdict(claim, "no step-time benchmark for this task and model (benchmarks/step_time.py "
                                      "--claim); training runs' s/step shared the cores and decide nothing")
        if not bench.get("valid", True):
            return _no_verdict(claim, f"the step-time benchmark is not valid: {bench.get('invalid_reason')}")
        return {**claim, "measured": bench["measured"], "source": bench["source"], "verdict": bench["verdict"],
                "verdict_holm": bench["verdict"], "ci95": bench["ci95"], "ci90": bench["ci90"], "ci95_seeds": None,
                "difference": None, "ratio": bench["mean"], "n": bench["rounds"], "p_value": None, "p_tost": None,
                "sesoi": claim.get("sesoi"), "threshold": 1.0, "ci_method": bench.get("ci_method"),
                "split": "step time ratio (benchmark)", "detectable": None, "reason": None}
    for arm in (method, baseline):
        ok, why = learned(results, arm)
        if ok is False:
            return _no_verdict(claim, why)
    ours, weights, notes_a, problem = arm_evidence(folder, results, method, kind)
    if problem:
        return _no_verdict(claim, problem)
    base, _, notes_b, problem = arm_evidence(folder, results, baseline, kind)
    if problem:
        return _no_verdict(claim, problem)
    common = sorted(set(ours) & set(base))
    if len(common) < 2:
        if ours and base and set(ours) != set(base):  # both arms ran, on other seeds: a pair needs the same seed
            return _no_verdict(claim, f"fewer than 2 seeds where both arms ran: both ran, but on seeds that do not "
                                      f"overlap ({method}: {sorted(ours)}, {baseline}: {sorted(base)}; in common: "
                                      f"{common})")
        return _no_verdict(claim, f"fewer than 2 seeds where both arms ran ({method}: {sorted(ours)}, "
                                  f"{baseline}: {sorted(base)})")
    key_higher = True if kind in ("more_intruders", "forgets_less") else higher
    means_a, means_b = _per_seed_means(ours, weights), _per_seed_means(base, weights)
    if kind == "more_intruders":  # one number per run: seeds are the only noise
        boot = seed_only_interval({s: means_a[s] for s in common}, {s: means_b[s] for s in common}, key_higher,
                                  threshold, sesoi)
    else:
        boot = stats.paired_bootstrap({s: ours[s] for s in common}, {s: base[s] for s in common}, weights=weights,
                                      higher_is_better=key_higher, threshold=threshold, sesoi=sesoi,
                                      resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)
    seeds_only = stats.paired_difference({s: means_a[s] for s in common}, {s: means_b[s] for s in common},
                                         key_higher, threshold)
    unit = {"forgets_less": "retained probe accuracy (other tasks)",
            "more_intruders": f"intruder dimensions (epsilon {HEADLINE_EPSILON}, summed over layers)"}.get(
        kind, f"test {results['metric']}")
    mean_a = statistics.fmean(means_a[s] for s in common)
    mean_b = statistics.fmean(means_b[s] for s in common)
    measured = (f"{unit} {mean_a:.4f} vs {mean_b:.4f} ({baseline}); difference {boot['mean']:+.4f}"
                + ((f", 95% CI {stats.ci_text(boot)} (seeds and examples), seeds only {stats.ci_text(seeds_only)}"
                    if kind != "more_intruders" else f", 95% CI {stats.ci_text(boot)} (seeds)")
                   if boot.get("ci95") else "") + f"; n={len(common)}")
    if kind == "matches":
        measured += f"; claim holds if the difference is > -{claim['tolerance']}"
    if sesoi is not None:
        measured += f"; equivalent within +-{sesoi:g}"
    if kind == "fewer_params":
        measured += (f"; trainable {results['table'][method]['trainable_params']:,} vs "
                     f"{results['table'][baseline]['trainable_params']:,}")
    if claim.get("gap_to") and kind == "better":
        from lowrank_lab.experiment import gap_closed

        target = seed_values(results, claim["gap_to"])
        if target:
            fraction = gap_closed(mean_b, mean_a, statistics.fmean(target.values()), higher)
            measured += "; gap to full FT closed: " + ("n/a (full FT not better)" if fraction is None else f"{fraction:.0%}")
    notes = notes_a + notes_b
    if notes:
        measured += "; " + "; ".join(notes)
    row = {**claim, "measured": measured, "ci95": boot.get("ci95"), "ci90": boot.get("ci90"),
           "ci95_seeds": seeds_only["ci95"], "difference": boot["mean"], "n": len(common), "seeds": common,
           "p_value": boot.get("p_value"), "p_tost": boot.get("p_tost"), "sesoi": sesoi, "threshold": threshold,
           "ci_method": boot.get("ci_method"), "split": unit, "detectable": seeds_only.get("detectable"),
           "reason": None, "n_examples": boot.get("n_examples")}
    if boot.get("ci95") is None or boot.get("degenerate"):
        return {**row, "verdict": stats.NO_VERDICT, "verdict_holm": stats.NO_VERDICT,
                "reason": boot.get("reason") or "no spread to estimate"}
    row["verdict"] = stats.outcome(boot["ci95"], boot.get("ci90"), threshold, sesoi, kind="better" if sesoi else kind)
    return row


def reproduction_rows(results: dict, folder: str | Path | None = None) -> list[dict]:
    """Our verdict on each registered claim whose methods are in ``results`` (module docstring), read from the
    runs in ``folder`` (the study's folder: its predictions); ``verdict_holm`` adjusts for the study's family."""
    folder = Path(folder) if folder is not None else None
    rows = [_judge(claim, results, folder) for claim in reproduction_claims()
            if claim["method"] in results["table"] and claim["baseline"] in results["table"]]
    judged = [r for r in rows if r["verdict"] != stats.NO_VERDICT and r.get("p_value") is not None]
    direction = stats.holm([r["p_value"] for r in judged])
    equivalence = stats.holm([r.get("p_tost") for r in judged])
    for row, p_dir, p_eq in zip(judged, direction, equivalence):
        row["p_holm"], row["p_tost_holm"] = p_dir, p_eq
        row["verdict_holm"] = stats.outcome_from_p(p_dir, p_eq, row["difference"], row["threshold"])
    for row in rows:
        row.setdefault("verdict_holm", row["verdict"])
        row.setdefault("p_holm", None)
        row.setdefault("p_tost_holm", None)
    return rows


def outcome_counts(rows: list[dict], key: str = "verdict_holm") -> dict[str, int]:
    """How many rows have each outcome (the claims summaries count by outcome, never PASS/FAIL)."""
    order = (*stats.OUTCOMES, stats.NO_VERDICT)
    return {outcome: sum(r[key] == outcome for r in rows) for outcome in order if any(r[key] == outcome for r in rows)}
