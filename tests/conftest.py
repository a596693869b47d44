"""Fixtures shared by the tests: small real data loaded once (test_train.py, test_precision.py), and compare's
runs made in this process (test_compare.py, the fault matrices)."""

import pytest

from lowrank_lab.assets import load_task, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-llama")


@pytest.fixture(scope="module")
def sentiment():
    return load_task("sentiment", max_train=32, max_eval=16)


@pytest.fixture(scope="module")
def gsm():
    return load_task("gsm", max_train=8, max_eval=4)


@pytest.fixture
def compare_in_process(monkeypatch):
    """Make ``compare`` train each run in this process through the CLI's ``main`` (no interpreter start-up per
    run, and methods registered by a test exist there too). One test keeps the real subprocess path."""
    from lowrank_lab import cli, compare
    from lowrank_lab.compare import runs

    def run(method, task_name, model_name, scale, seed, r, run_dir, show_progress, lr=None, extra=None, threads=None,
            head_lr=None):
        code = cli.main(compare.train_arguments(method, task_name, model_name, scale, seed, r, run_dir, False, lr, extra,
                                                head_lr))
        return "" if code == 0 else f"exit {code}"

    monkeypatch.setattr(runs, "_train_in_subprocess", run)
