"""run_method: the one training path shared by the CLI, the lessons and compare."""

import math

import pytest

from lowrank_lab.experiment import run_method


@pytest.mark.parametrize("kwargs, field", [
    (dict(method="nope", task_name="sentiment"), "method"),
    (dict(method="lora", task_name="nope"), "task_name"),
    (dict(method="lora", task_name="sentiment", scale="huge"), "scale"),
    (dict(method="lora", task_name="sentiment", seed=-1), "seed"),
    (dict(method="lora", task_name="sentiment", model_name="nope"), "model_name"),
    (dict(method="lora", task_name="sentiment", overrides={"max_stepz": 3}), "max_stepz"),
    (dict(method="lora", task_name="sentiment", options={"r": 0}), "r"),
])
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        run_method(**kwargs)


def test_smoke_run_summary_is_complete_and_seeded():
    runs = [run_method("lora", "sentiment", scale="smoke", seed=3, overrides={"max_steps": 2}, show_progress=False)
            for _ in range(2)]
    a, b = (run.summary() for run in runs)
    assert a["steps"] == 2 and a["metric"] == "accuracy" and a["higher_is_better"]
    assert 0.0 <= a["metric_value"] <= 1.0 and math.isfinite(a["final_train_loss"])
    assert 0 < a["trainable_params"] < a["total_params"]
    assert runs[0].history["train_loss"] == runs[1].history["train_loss"]  # same seed, same numbers
    assert a["metric_value"] == b["metric_value"]
