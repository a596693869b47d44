"""Choosing each method's learning rate (and schedule knobs) on validation, with seeds that are never reported.

The protocol (``compare --tune-lr``), fixed in ``results/PREREGISTRATION.md`` before the studies' reruns:

* **Tuning seeds are not reporting seeds.** Every tuning run uses seed :data:`TUNE_SEED` (0); the reported runs
  use seeds ``REPORT_SEED_START, ...`` (1-5). A selection made on a seed that is then reported flatters it.
* **The same budget for every method**: :data:`TUNING_BUDGET` configurations each. A method with schedule knobs
  (XGBLoRA) splits it: its knob grid (one knob at a time around the default) takes what it needs and the rate grid
  the rest.
* **The rate grid** starts with :data:`LR_GRID_POINTS` rates of the 1-2-5 lattice around the method's prior rate
  (one below, two above) and grows one rate at a time until the budget is spent: past the edge where the best rate
  sits, or, when the best is interior, past the edge nearer to it (ties: the higher one). The grid stays on the
  lattice, so every study, and a later one centred elsewhere, names the same rates and can reuse their runs.
* **Selection** on validation accuracy (ties: validation loss, then the smaller rate); a selected rate whose upper
  neighbour in the grid did not learn (chance-level validation accuracy) or diverged is flagged ``cliff``: a small
  change of machine or seed may push it over.
"""

from __future__ import annotations

import math

from lowrank_lab import registry

from .runs import RunKey, RunPool

LR_GRID_POINTS = 4  # the lattice rate nearest the method's default, one below and two above it: a 10x span
TUNING_BUDGET = 6  # configurations per method (rates + knobs), the same for every method
TUNE_SEED = 0  # every tuning run uses this seed ...
TUNE_SEEDS = (TUNE_SEED,)
REPORT_SEED_START = 1  # ... and no reported run does: reporting seeds are 1, 2, ...


def report_seeds(n: int) -> list[int]:
    """The seeds a comparison reports: ``n`` seeds from :data:`REPORT_SEED_START`, disjoint from :data:`TUNE_SEEDS`."""
    return list(range(REPORT_SEED_START, REPORT_SEED_START + n))


def lattice_rate(index: int) -> float:
    """The ``index``-th rate of the 1-2-5 lattice: index 3e + j is (1, 2, 5)[j] x 10^e."""
    exponent, position = divmod(index, 3)
    return float(f"{(1, 2, 5)[position]}e{exponent}")


def lattice_index(rate: float) -> int:
    """The index of the lattice rate nearest ``rate`` in log scale."""
    start = 3 * math.floor(math.log10(rate))
    return min(range(start - 1, start + 4), key=lambda i: abs(math.log(lattice_rate(i) / rate)))


def lr_grid(center: float, points: int = LR_GRID_POINTS) -> list[float]:
    """``points`` consecutive 1-2-5 lattice rates around the one nearest ``center``: (points - 1) // 2 below
    it, the rest above (4 points: one below, two above)."""
    first = lattice_index(center) - (points - 1) // 2
    return [lattice_rate(i) for i in range(first, first + points)]


def _validation_score(metrics: dict, higher_is_better: bool):
    """Sort key of a grid run on VALIDATION only (never test): the primary metric, ties broken by the
    validation loss; None for a run that did not finish (diverged, failed)."""
    if metrics.get("status", "ok") != "ok" or metrics.get("metric_value") is None:
        return None
    value = metrics["metric_value"] if higher_is_better else -metrics["metric_value"]
    loss = (metrics.get("validation") or {}).get("loss")
    return (value, -loss if loss is not None and higher_is_better else 0.0)


def at_chance(metrics: dict, chance: dict | None) -> bool:
    """A run that did not learn: diverged, or validation accuracy within 3 binomial standard errors of always
    predicting the largest class (``chance``: ``{"majority_validation", "n_validation"}``)."""
    if metrics.get("status", "ok") != "ok":
        return True
    if not chance or chance.get("majority_validation") is None or metrics.get("metric") != "accuracy":
        return False
    p, n = chance["majority_validation"], max(1, chance.get("n_validation") or 1)
    return metrics["metric_value"] <= p + 3 * math.sqrt(p * (1 - p) / n)


def _grid_entry(lr: float, metrics: dict) -> dict:
    return {"lr": lr, "status": metrics["status"], "validation": metrics.get("metric_value"),
            "validation_loss": (metrics.get("validation") or {}).get("loss"), "folder": metrics["folder"]}


def tune_lr(pool: RunPool, method: str, center: float, higher_is_better: bool, extra: tuple = (),
            budget: int = TUNING_BUDGET, chance: dict | None = None) -> dict:
    """Run ``method`` (seed :data:`TUNE_SEED`) over ``budget`` lattice rates grown around ``center`` (module
    docstring) and select on validation.

    Returns ``{"lr_grid": [{"lr", "status", "validation", ...}] (sorted by lr), "lr_selected": lr or None,
    "edge": "low"/"high"/None (the selected rate is the grid's edge), "cliff": bool, "tune_seeds": [...]}``."""
    grid = lr_grid(center, min(LR_GRID_POINTS, budget))
    while True:
        results = dict(zip(grid, pool.get([RunKey(method, TUNE_SEED, lr, extra) for lr in grid],
                                          need_predictions=False)))
        scored = {lr: _validation_score(m, higher_is_better) for lr, m in results.items()}
        finished = {lr: s for lr, s in scored.items() if s is not None}
        best = max(finished, key=lambda lr: (finished[lr], -lr)) if finished else None  # ties: the smaller rate
        ordered = sorted(grid)
        if len(grid) >= budget:
            break
        if best is None:  # nothing finished: look below the grid, where rates are safer
            side = "low"
        elif best == ordered[0] or best == ordered[-1]:
            side = "low" if best == ordered[0] else "high"
        else:  # interior: spend the budget next to the best
            position = ordered.index(best)
            side = "low" if position < len(ordered) - 1 - position else "high"
        edge_index = lattice_index(ordered[0]) - 1 if side == "low" else lattice_index(ordered[-1]) + 1
        grid.append(lattice_rate(edge_index))
    ordered = sorted(grid)
    side = None if best is None else "low" if best == ordered[0] else "high" if best == ordered[-1] else None
    above = [lr for lr in ordered if best is not None and lr > best]
    cliff = bool(above) and at_chance(results[above[0]], chance)
    return {"lr_grid": [_grid_entry(lr, results[lr]) for lr in ordered], "lr_selected": best, "edge": side,
            "cliff": cliff, "selected_on": "validation", "tune_seeds": list(TUNE_SEEDS), "configurations": len(grid)}


def knob_grid(method: str, planned: dict, steps: int | None, budget: int | None = None) -> list[dict]:
    """The schedule knobs ``method``'s registration asks ``compare --tune-lr`` to try at the selected rate
    (XGBLoRA: blocks per round and steps per round, one at a time around the default); [] for most methods."""
    grid = registry.get(method).knob_grid
    return grid(planned.get(method, {}), steps, budget) if grid is not None else []


def tune_method(pool: RunPool, method: str, center: float, higher_is_better: bool, planned: dict, steps: int | None,
                chance: dict | None = None) -> tuple[dict, float | None, tuple]:
    """The whole tuning of one method within :data:`TUNING_BUDGET`: knobs take what their grid needs (at most
    the budget minus :data:`LR_GRID_POINTS`), rates the rest. Returns (tuning record, selected rate, knobs)."""
    knobs = knob_grid(method, planned, steps, TUNING_BUDGET - LR_GRID_POINTS)
    tuning = tune_lr(pool, method, center, higher_is_better, budget=TUNING_BUDGET - len(knobs), chance=chance)
    rate, extra = tuning["lr_selected"], ()
    if knobs and rate is not None:
        candidates = [tuple(sorted(k.items())) for k in knobs]
        runs = pool.get([RunKey(method, TUNE_SEED, rate, c) for c in candidates], need_predictions=False)
        default = next(e for e in tuning["lr_grid"] if e["lr"] == rate)
        scored = [(_validation_score(m, higher_is_better), c) for m, c in zip(runs, candidates)]
        best_default = _validation_score(pool.done[RunKey(method, TUNE_SEED, rate)], higher_is_better)
        best = max([s for s in scored if s[0] is not None] + ([(best_default, ())] if best_default else []),
                   default=None, key=lambda s: s[0])
        tuning["knob_grid"] = [{"default": True, "status": default["status"], "validation": default["validation"],
                                "folder": default["folder"]}]
        tuning["knob_grid"] += [{**dict(c), "status": m["status"], "validation": m.get("metric_value"),
                                 "folder": m["folder"]} for m, c in zip(runs, candidates)]
        extra = best[1] if best else ()
        tuning["knobs_selected"] = dict(extra)
        tuning["configurations"] += len(candidates)
    return tuning, rate, extra
