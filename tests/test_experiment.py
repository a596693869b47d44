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


def test_gap_closed_both_directions_and_undefined_cases():
    from lowrank_lab.experiment import gap_closed

    assert gap_closed(0.70, 0.75, 0.80) == pytest.approx(0.5)
    assert gap_closed(2.0, 1.5, 1.0, higher_is_better=False) == pytest.approx(0.5)
    assert gap_closed(0.70, 0.65, 0.80) == pytest.approx(-0.5)
    assert gap_closed(0.80, 0.85, 0.70) is None  # the target is worse than the baseline
    assert gap_closed(1.0, 0.5, 2.0, higher_is_better=False) is None
    assert gap_closed(0.7, float("nan"), 0.8) is None


def test_aggregate_and_table():
    from lowrank_lab.experiment import aggregate, format_table

    rows = [dict(method=m, seed=s, metric_value=v, trainable_params=10, total_params=100, median_step_time_s=0.1,
                 peak_memory_mb=5.0) for m, s, v in (("lora", 0, 0.7), ("lora", 1, 0.8), ("full", 0, 0.9))]
    table = aggregate(rows)
    assert list(table) == ["lora", "full"]
    assert table["lora"]["mean"] == pytest.approx(0.75) and table["lora"]["std"] == pytest.approx(0.0707107, rel=1e-5)
    assert table["full"]["std"] == 0.0 and table["lora"]["seeds"] == [0, 1]
    text = format_table(table, "accuracy")
    assert "| lora | 0.7500 ± 0.0707 | 2 | 10 (10.00%) |" in text
