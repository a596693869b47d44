"""Repository-wide pytest setup: tests and nbmake kernels default to the smoke scale and stay offline."""

import os


def pytest_configure(config):
    # setdefault: an explicit LOWRANK_LAB_SCALE=cpu/full from the user still wins.
    os.environ.setdefault("LOWRANK_LAB_SCALE", "smoke")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Spinning OpenMP workers made a training step 2.0x slower when the 2 cores were shared (benchmarks/contended.py).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Executed lesson copies (python -m lowrank_lab lessons --execute) are outputs, checked against their sources by
# tests/test_lessons_executed.py; `pytest --nbmake lessons/` runs the lessons themselves, not the copies again.
collect_ignore_glob = ["lessons/executed/*"]
