"""``torchrun --nproc_per_node=2 -m lowrank_lab train ...`` on CPU: the CLI starts the gloo process group from
torchrun's environment, trains data-parallel, and only rank 0 writes files and prints the table."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest

from lowrank_lab import distributed
from lowrank_lab.cli import main

ARGS = ["train", "--method", "lora", "--task", "sentiment", "--model", "tiny-llama", "--scale", "smoke"]


def _free_port() -> int:
    # torchrun's default port 29500 may be taken by another job on a shared machine.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torchrun")
    out = tmp / "ddp2"
    # `python -m torch.distributed.run` is the `torchrun` console script, run with this interpreter.
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               "-m", "lowrank_lab", *ARGS, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


def test_torchrun_two_cpu_processes_write_metrics_once(two_process_run):
    out, stdout = two_process_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["final_train_loss"]) and metrics["steps"] == 8
    assert (out / "history.json").is_file() and (out / "curves.png").is_file()
    assert stdout.count("wrote ") == 1 and stdout.count("s/step") == 1  # rank 0 alone printed the table


def test_torchrun_run_matches_one_process(two_process_run, tmp_path):
    """Each rank trains on half of every global batch; DDP averages the gradients, so the losses equal one
    process's on the full batch up to the order of float additions."""
    out, _ = two_process_run
    assert main([*ARGS, "--out", str(tmp_path / "ddp1"), "--quiet"]) == 0
    two = json.loads((out / "history.json").read_text())
    one = json.loads((tmp_path / "ddp1" / "history.json").read_text())
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
    assert two["final"]["validation"]["loss"] == pytest.approx(one["final"]["validation"]["loss"], rel=1e-4)


def test_init_from_env_is_a_no_op_for_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env("cpu") is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env("cpu") is False
    assert distributed.world() == (1, 0) and distributed.is_main_process()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be a positive int, got 'two'"):
        distributed.init_from_env("cpu")
