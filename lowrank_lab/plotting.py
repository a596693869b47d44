"""Figures for training histories. Nothing is written unless a ``path`` is given."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

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
        color = f"C{i % 10}"
        steps, losses = h["step"], h["train_loss"]
        ax_loss.plot(steps, losses, color=color, alpha=0.25, linewidth=0.8)
        ax_loss.plot(steps, smooth(losses, smoothing), color=color, label=label)
        evals = [e for e in h.get("evals", []) if metric and e.get(metric) is not None]
        if evals:
            ax_eval.plot([e["step"] for e in evals], [e[metric] for e in evals], "o-", color=color, label=label)
    ax_loss.set(xlabel="optimizer step", ylabel="train loss", title=f"train loss (EMA {smoothing})")
    ax_eval.set(xlabel="optimizer step", ylabel=f"validation {metric or 'metric'}",
                title=f"validation {metric or '(no evals)'}")
    for ax in (ax_loss, ax_eval):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    return fig
