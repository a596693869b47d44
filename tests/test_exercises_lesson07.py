"""Lesson 07's exercise checks: the worked answers pass, wrong ones raise ExerciseError, None is 'not attempted'."""

import math

import pytest

from lowrank_lab import presets
from lowrank_lab.exercises import ExerciseError
from lowrank_lab.exercises import lesson07 as ex


def test_unanswered_exercises_are_reported_not_failed(capsys):
    assert ex.check_memory_bytes(None, None) is False
    assert ex.check_low_precision(None, None) is False
    assert ex.check_global_batch(None, None, None) is False
    assert ex.check_resolved_steps(None, n_rows=100) is False
    assert capsys.readouterr().out.count("not attempted yet") == 4


def test_memory_bytes(capsys):
    mn = sum(m * n for m, n in ex.SMOLLM2_BLOCK.values())
    n_train = sum(8 * (m + n) for m, n in ex.SMOLLM2_BLOCK.values())
    assert ex.check_memory_bytes(16 * mn, 4 * (mn + n_train) + 12 * n_train)
    with pytest.raises(ExerciseError, match="full fine-tuning"):
        ex.check_memory_bytes(4 * mn, 4 * (mn + n_train) + 12 * n_train)  # forgot gradients and moments
    with pytest.raises(ExerciseError, match="LoRA"):
        ex.check_memory_bytes(16 * mn, 4 * mn + 12 * n_train)  # forgot that the factors are parameters too
    assert capsys.readouterr().out.count("✓") == 1  # one tick per passed exercise, not per part
    # Another layer list and rank: the reference follows the arguments.
    assert ex.check_memory_bytes(16 * 12, 4 * (12 + 2 * 7) + 12 * 2 * 7, layers={"w": (3, 4)}, r=2)


def test_low_precision():
    assert ex.check_low_precision(4.0, [2e-8]) and ex.check_low_precision(4, 2e-8)  # a lone number is a list of one
    with pytest.raises(ExerciseError, match="7 fraction bits"):
        ex.check_low_precision(2.0, [2e-8])
    with pytest.raises(ExerciseError, match="round-to-nearest"):
        ex.check_low_precision(4.0, [3e-8, 2e-8])  # 3e-8 rounds up to the smallest subnormal, 2^-24
    with pytest.raises(ExerciseError, match="FP16_GRADIENTS"):
        ex.check_low_precision(4.0, [1e-9])


def test_global_batch():
    assert ex.check_global_batch(128, 32, 4)
    with pytest.raises(ExerciseError, match="every process"):
        ex.check_global_batch(32, 32, 4)
    with pytest.raises(ExerciseError, match="global micro-batch"):
        ex.check_global_batch(128, 8, 16)  # the per-process batch typed as the global one
    with pytest.raises(ExerciseError, match="global micro-batch"):
        ex.check_global_batch(128, 30, 4)  # does not split over 4 ranks
    with pytest.raises(ExerciseError, match="accumulation"):
        ex.check_global_batch(128, 32, 1)


def test_resolved_steps_match_the_library():
    rows = 2_000
    preset = presets.train_preset("gsm", "full", "lora")
    steps = presets.resolve_max_steps({**preset, "grad_accum_steps": 2}, 3 * rows)
    assert steps == math.ceil(preset["epochs"] * 3 * rows / (preset["batch_size"] * 2))
    assert ex.check_resolved_steps(steps, rows)
    with pytest.raises(ExerciseError, match="global"):
        ex.check_resolved_steps(math.ceil(steps / 4), rows)  # divided by the 4 GPUs
    with pytest.raises(ExerciseError, match="global"):
        ex.check_resolved_steps(preset["epochs"] * 3 * rows // (preset["batch_size"] * 2), rows)  # rounded down


# ------------------------------------------------------------------ issue 22, items 19-21


def test_22_right_answers_in_float32_arrays_and_frozensets_pass():
    import numpy as np
    import torch

    g = torch.tensor(ex.FP16_GRADIENTS)  # float32: 2e-08 reads back as 1.9999999878e-08
    assert ex.check_low_precision(4.0, g[g.half() == 0].tolist())
    assert ex.check_low_precision(torch.tensor(4.0), np.array([2e-8]))
    assert ex.check_low_precision(4.0, frozenset({2e-8})) and ex.check_low_precision(4.0, g[g.half() == 0])
    with pytest.raises(ExerciseError, match="round-to-nearest"):
        ex.check_low_precision(4.0, np.array([3e-8, 2e-8]))
    with pytest.raises(ExerciseError, match="list of finite numbers"):
        ex.check_low_precision(4.0, "2e-8")


def test_22_counts_are_whole_numbers_not_truncated():
    mn = sum(m * n for m, n in ex.SMOLLM2_BLOCK.values())
    n_train = sum(8 * (m + n) for m, n in ex.SMOLLM2_BLOCK.values())
    lora = 4 * (mn + n_train) + 12 * n_train
    assert ex.check_memory_bytes(float(16 * mn), lora)
    for wrong in (16 * mn + 0.9, "1.5e6", float("nan")):
        with pytest.raises(ExerciseError, match="full_bytes must be a whole number"):
            ex.check_memory_bytes(wrong, lora)
    with pytest.raises(ExerciseError, match="batch_size must be a whole number"):
        ex.check_global_batch(128, 32.5, 4)
    rows = 2_000
    preset = presets.train_preset("gsm", "full", "lora")
    steps = presets.resolve_max_steps({**preset, "grad_accum_steps": 2}, 3 * rows)
    with pytest.raises(ExerciseError, match="number of steps must be a whole number"):
        ex.check_resolved_steps(steps + 0.9, rows)
