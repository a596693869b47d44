"""Figures for training histories. Nothing is written unless a ``path`` is given."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

VERDICT_COLORS = {"reproduced": "tab:green", "contradicted": "tab:red", "equivalent": "tab:blue",
                  "inconclusive": "tab:gray", "no verdict": "tab:olive"}


def method_colors() -> dict[str, str]:
    """One colour per method in every figure: the colour its registration names, else the next free tab-20 colour
    in table order (so a method added later keeps one colour across figures too)."""
    from lowrank_lab import registry

    names = registry.names()
    taken = {registry.get(n).color for n in names if registry.get(n).color}
    free = iter(c for c in [f"C{i}" for i in range(10)] + [f"tab:{c}" for c in ("olive", "cyan", "pink", "brown")]
                if c not in taken)
    return {n: registry.get(n).color or next(free, "black") for n in names}


def method_color(label: str, index: int = 0) -> str:
    """The method's own colour, else a tab-10 colour past the methods' (by ``index``)."""
    colors = method_colors()
    return colors.get(label, f"C{(len(colors) + index) % 10}")


def __getattr__(name: str):
    if name == "METHOD_COLORS":  # the registry's colours, as a table (read-only view, computed on access)
        return method_colors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Metrics that an eval record may carry, in the order we prefer to plot them.
EVAL_METRICS = ("accuracy", "exact_match", "answer_loss", "loss")


def set_style() -> None:
    """A plain, readable style shared by every lesson figure."""
    plt.rcParams.update({
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "savefig.bbox": "tight",
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "font.size": 10,
        "legend.frameon": False,
    })


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average (TensorBoard-style), so early points are not pulled to 0."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def _pick_metric(histories: dict) -> str | None:
    """The metric with the most eval points (ties: ``EVAL_METRICS`` order); e.g. gsm's exact match is
    only computed at the end, so its loss curve wins."""
    counts = {name: sum(e.get(name) is not None for h in histories.values() for e in h.get("evals", []))
              for name in EVAL_METRICS}
    best = max(EVAL_METRICS, key=lambda name: counts[name])  # max keeps the first of equal counts
    return best if counts[best] else None


def plot_curves(histories: dict[str, dict], path=None, title: str = "Training curves",
                metric: str | None = None, smoothing: float = 0.9):
    """Train loss per optimizer step (raw, faint; smoothed, solid) and the eval metric vs step.

    ``histories`` maps a label (e.g. the method) to a :func:`lowrank_lab.train.train` history. ``metric``
    defaults to the first of ``EVAL_METRICS`` that the evals contain. Returns the figure; saves it to
    ``path`` only when given (parent folders are created).
    """
    metric = metric or _pick_metric(histories)
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (label, h) in enumerate(histories.items()):
        color = method_color(label, i)
        steps, losses = h["step"], h["train_loss"]
        ax_loss.plot(steps, losses, color=color, alpha=0.25, linewidth=0.8)
        ax_loss.plot(steps, smooth(losses, smoothing), color=color, label=label)
        evals = [e for e in h.get("evals", []) if metric and e.get(metric) is not None]
        if evals:
            ax_eval.plot([e["step"] for e in evals], [e[metric] for e in evals], "o-", color=color, label=label)
    ax_loss.set(xlabel="optimizer step", ylabel="train loss", title=f"train loss (EMA {smoothing})")
    ax_eval.set(xlabel="optimizer step", ylabel=f"validation {metric or 'metric'}",
                title=f"validation {metric or '(no evals)'}")
    source = ax_eval if ax_eval.get_legend_handles_labels()[0] else ax_loss
    if source.get_legend_handles_labels()[0]:  # one legend for both panels, outside them: off the data
        source.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    return fig


def plot_lr_sensitivity(tuning: dict[str, dict], path=None, metric: str = "accuracy", title: str = ""):
    """Validation metric against learning rate (log), one line per method (``compare --tune-lr``'s
    ``tuning``); the selected rate is a star, a run that did not finish an x on the axis."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, (method, tuned) in enumerate(tuning.items()):
        color = method_color(method, i)
        done = [g for g in tuned["lr_grid"] if g["status"] == "ok" and g["validation"] is not None]
        ax.plot([g["lr"] for g in done], [g["validation"] for g in done], "o-", color=color, label=method, ms=4)
        for g in tuned["lr_grid"]:
            if g not in done:
                ax.plot(g["lr"], 0, "x", color=color, clip_on=False, ms=8)
        chosen = [g for g in done if g["lr"] == tuned.get("lr_selected")]
        if chosen:
            ax.plot(chosen[0]["lr"], chosen[0]["validation"], "*", color=color, ms=14, markeredgecolor="k")
    ax.set(xscale="log", xlabel="peak learning rate (log)", ylabel=f"validation {metric} (tuning seed)",
           title=title or "learning-rate sensitivity (star: selected on validation; x: diverged or failed)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)  # off the data
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


# Claim kinds measured in accuracy-like units (what one axis can show together); intruder counts and step times
# have figures and tables of their own.
ACCURACY_KINDS = ("better", "matches", "fewer_params", "forgets_less")


def plot_paired_differences(rows: list[dict], path=None, title: str = ""):
    """Each accuracy-like claim's mean paired difference (method − baseline, positive = better) with its 95%
    interval (seeds and test examples), coloured by its Holm-adjusted outcome; the dashed line is the claim's
    threshold (0, or −tolerance for "matches") and the shaded band ±sesoi (inside it: equivalent)."""
    rows = [r for r in rows if r.get("difference") is not None and r.get("kind") in ACCURACY_KINDS]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    for y, row in enumerate(rows):
        outcome = row.get("verdict_holm", row["verdict"])
        color = VERDICT_COLORS.get(outcome, "k")
        if row.get("ci95"):
            low, high = row["ci95"]
            ax.errorbar(row["difference"], y, xerr=[[row["difference"] - low], [high - row["difference"]]], fmt="o",
                        color=color, capsize=4)
        else:  # no interval: a point without caps, never a zero-width bar
            low = high = row["difference"]
            ax.plot(row["difference"], y, "o", color=color)
        if row.get("sesoi"):
            ax.fill_betweenx([y - 0.35, y + 0.35], -row["sesoi"], row["sesoi"], color="tab:blue", alpha=0.08, lw=0)
        ax.plot([row.get("threshold", -row.get("tolerance", 0.0))] * 2, [y - 0.35, y + 0.35], "--", color="k", lw=1)
        ax.annotate(outcome, (high, y), xytext=(6, 0), textcoords="offset points", va="center", color=color, fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{r['method']} vs {r['baseline']} ({r['kind']})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="paired difference, method − baseline (positive = better)",
           title=title or "paired differences, 95% CI over seeds and test examples")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def plot_learn_forget(runs: list[dict], path=None, title: str = "", metric: str = "accuracy"):
    """What each run learned against what it kept: target test ``metric`` (x) against retained probe accuracy on
    the tasks it was not trained on (y), one point per run, one marker and colour per method; the dashed line is the
    base model's retained value (nothing forgotten). The picture of Biderman et al. (arXiv 2405.09673), here for
    every method at one budget."""
    markers = "osD^v<>Pp*hX"
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    base = None
    methods = list(dict.fromkeys(r["method"] for r in runs))
    for i, method in enumerate(methods):
        points = [(r["test_metric_value"], r["retained"]["probe_accuracy"]) for r in runs
                  if r["method"] == method and r.get("status", "ok") == "ok" and (r.get("retained") or {}).get("probe_accuracy") is not None]
        base = base or next((r["retained"].get("base_probe_accuracy") for r in runs if r.get("retained")), None)
        if points:
            ax.scatter(*zip(*points), marker=markers[i % len(markers)], color=method_color(method, i), label=method,
                       s=36, alpha=0.85, edgecolor="k", linewidth=0.4)
    if base is not None:
        ax.axhline(base, ls="--", color="k", lw=1, label="base model (nothing forgotten)")
    ax.set(xlabel=f"learned: target test {metric}", ylabel="retained: probe accuracy on other tasks",
           title=title or "learn vs forget, one point per run")
    if methods:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def _as_png(fig):
    """A figure as an IPython PNG image (the figure is closed: nothing else draws it a second time)."""
    import io

    from IPython.display import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return Image(data=buffer.getvalue())


EXPLORER_CLASS = "lowrank-lab-explorer"


def explorer(draw, defaults: dict, controls=None, path=None):
    """One figure that a lesson's reader can explore, and that stays one figure everywhere.

    ``draw(**values)`` returns a matplotlib figure (it neither shows nor saves it). The default view
    ``draw(**defaults)`` is saved to ``path`` (once: moving a control never overwrites it) and displayed as a PNG
    under a display handle, so an executed copy, a rendered site and a reopened notebook all show the default view
    (a plain image needs no widget state). In a live Jupyter session (:func:`lowrank_lab.widgets_enabled`) the
    controls that ``controls(ipywidgets)`` builds, ``{name: widget}`` starting at the defaults, appear above it
    and redraw into the same handle: one figure, never a static copy above an interactive one. Returns the handle."""
    from IPython.display import display

    from lowrank_lab.runtime import widgets_enabled

    fig = draw(**defaults)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    image = _as_png(fig)
    made = None
    if controls is not None and widgets_enabled():
        try:
            import ipywidgets
        except ImportError:
            print("ipywidgets is not installed: the figure shows the default view")
        else:
            made = controls(ipywidgets)
            box = ipywidgets.HBox(list(made.values()), layout=ipywidgets.Layout(flex_flow="row wrap"))
            box.add_class(EXPLORER_CLASS)  # how a browser test finds an explorer's controls on the page
            display(box)
    handle = display(image, display_id=True)
    if made:
        def redraw(_change=None):
            handle.update(_as_png(draw(**{**defaults, **{name: control.value for name, control in made.items()}})))

        for control in made.values():
            control.observe(redraw, names="value")
    return handle
