"""Fixtures shared by the training-loop tests (test_train.py, test_precision.py): small real data, loaded once."""

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
