"""Step time on a shared machine: the CLI with one busy process beside it, OpenMP waiting passive vs active.

OpenMP worker threads that spin while they wait (``OMP_WAIT_POLICY=ACTIVE``, the runtime's usual behaviour)
fight any other process for the cores; ``lowrank_lab`` sets ``PASSIVE`` before torch loads unless the user
set a policy. This script runs the same short training run (``python -m lowrank_lab train``) under both
settings, each while a busy process (a Python loop, as a notebook kernel or a browser tab would be) holds one
core, and prints the median step times and their ratio: the price of the spinning default on a shared laptop.

    python benchmarks/contended.py                      # lora, sentiment, cpu preset cut to 12 steps
    python benchmarks/contended.py --busy 0             # the same without the busy process
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY_LOOP = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="lora")
    p.add_argument("--task", default="sentiment")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--busy", type=int, default=1, help="busy processes running beside the training run")
    return p.parse_args(argv)


def run(args, policy: str | None, folder: Path) -> float:
    """Median step time of one CLI run with ``OMP_WAIT_POLICY=policy`` (None: lowrank_lab's default)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(seconds=3600)]) for _ in range(args.busy)]
    try:
        out = folder / (policy or "default")
        subprocess.run([sys.executable, "-m", "lowrank_lab", "train", "--method", args.method, "--task", args.task,
                        "--scale", "cpu", "--max-steps", str(args.steps), "--out", str(out), "--quiet"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
    finally:
        for process in busy:
            process.kill()
    return json.loads((out / "metrics.json").read_text())["median_step_time_s"]


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        passive = run(args, None, Path(tmp))
        active = run(args, "ACTIVE", Path(tmp))
    print(f"{args.method} on {args.task}, cpu preset cut to {args.steps} steps, {args.busy} busy process(es), "
          f"{os.cpu_count()} cores:")
    print(f"  lowrank_lab default (OMP_WAIT_POLICY=PASSIVE): median step {passive:.3f} s")
    print(f"  OMP_WAIT_POLICY=ACTIVE (spinning workers):     median step {active:.3f} s  ({active / passive:.1f}x)")
    print(f"  ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
