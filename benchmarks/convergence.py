"""How long must a cpu-scale run be? Validation loss against steps for LoRA and full fine-tuning.

The comparison's budget (``presets.TRAIN_PRESETS["cpu"]``) is chosen so that LoRA's and full FT's validation
loss have stopped improving: a shorter budget measures how fast a method leaves the ln 2 plateau, not where it
ends up. This script trains one (task, method) with a long budget and frequent evaluations and writes the
curve; ``--plot`` draws every recorded curve and prints, per curve, the step of the lowest validation loss and
the first step within ``--tolerance`` of it.

    python benchmarks/convergence.py --task sentiment --method lora --steps 768 --eval-every 64
    python benchmarks/convergence.py --plot

Writes ``results/convergence/<task>-<method>[-<tag>].json`` (strict JSON, atomic) and ``results/convergence/curves.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

OUT = Path("results/convergence")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("sentiment", "trec"), default="sentiment")
    p.add_argument("--method", default="lora")
    p.add_argument("--steps", type=int, default=768, help="optimizer steps (cosine schedule over all of them)")
    p.add_argument("--eval-every", type=int, default=64)
    p.add_argument("--max-train", type=int, default=None, help="training rows (default: all)")
    p.add_argument("--lr", type=float, default=None, help="default: the method's preset rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--tag", default="", help="suffix of the output name, e.g. 's384' for a shorter schedule")
    p.add_argument("--plot", action="store_true", help="only draw the recorded curves")
    p.add_argument("--tolerance", type=float, default=0.01, help="relative: 'within 1%% of the lowest loss'")
    return p.parse_args(argv)


def plot(out: Path, tolerance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lowrank_lab import files
    from lowrank_lab.compare import convergence_line, settle_step
    from lowrank_lab.plotting import method_color

    curves = {path.stem: files.read_json(path) for path in sorted(out.glob("*.json"))}
    if not curves:
        sys.exit(f"no curves in {out}")
    tasks = sorted({c["task"] for c in curves.values()})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, curve in curves.items():
            if curve["task"] != task:
                continue
            steps = [e["step"] for e in curve["evals"]]
            short = curve["steps"] < max(c["steps"] for c in curves.values() if c["task"] == task)
            line, = ax.plot(steps, [e["loss"] for e in curve["evals"]], marker="o", ms=3,
                            color=method_color(curve["method"]), ls="--" if short else "-",
                            label=f"{curve['method']} (lr {curve['lr']:g}, {curve['steps']}-step schedule)")
            ax.axvline(settle_step(curve["evals"], tolerance)[1], color=line.get_color(), ls=":", lw=1)
        ax.set(title=f"{task}: validation loss (dotted: within {tolerance:.0%} of the lowest)", xlabel="optimizer step",
               ylabel="validation cross-entropy")
        ax.legend(loc="upper right")
    print("\n".join(convergence_line(name, curve, tolerance) for name, curve in curves.items()))  # the curves read above
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    print(f"wrote {out / 'curves.png'}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plot:
        plot(args.out, args.tolerance)
        return 0
    from lowrank_lab import experiment, files
    from lowrank_lab.compare import settle_step

    overrides = {"max_steps": args.steps, "eval_every": args.eval_every, "max_train": args.max_train}
    if args.lr is not None:
        overrides["lr"] = args.lr
    start = time.perf_counter()
    run = experiment.run_method(args.method, args.task, scale="cpu", seed=args.seed, overrides=overrides)
    history = run.history
    curve = {
        "task": args.task, "method": args.method, "model": run.model_name, "seed": args.seed, "lr": run.config.lr,
        "steps": run.config.max_steps, "batch_size": run.config.batch_size, "n_train": len(run.task.train),
        "evals": history["evals"], "train_loss": history["train_loss"], "wall_time_s": time.perf_counter() - start,
        "command": "python benchmarks/convergence.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    files.write_json(args.out / f"{args.task}-{args.method}{'-' + args.tag if args.tag else ''}.json", curve)
    best, settled = settle_step(history["evals"], args.tolerance)
    print(f"{args.task} {args.method}: lowest validation loss at step {best}, within {args.tolerance:.0%} from "
          f"step {settled}; {curve['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
