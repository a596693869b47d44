"""``python -m lowrank_lab train`` at smoke scale, and argument validation (exit code 2, nothing written)."""

from __future__ import annotations

import json

import pytest

from lowrank_lab.cli import main

REQUIRED_KEYS = {
    "method", "task", "model", "scale", "seed", "trainable_params", "total_params", "steps",
    "final_train_loss", "metric", "metric_value", "test", "test_metric_value", "validation",
    "median_step_time_s", "peak_memory_mb", "wall_time_s", "device", "versions",
}


def run_smoke(method: str, out) -> dict:
    argv = ["train", "--method", method, "--task", "sentiment", "--scale", "smoke", "--seed", "0",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "lora"
    return out, run_smoke("lora", out)


def test_smoke_lora_writes_metrics_history_and_curves(lora_run, capsys):
    out, metrics = lora_run
    assert REQUIRED_KEYS <= set(metrics)
    assert metrics["method"] == "lora" and metrics["model"] == "minilm" and metrics["scale"] == "smoke"
    assert metrics["metric"] == "accuracy"
    assert metrics["metric_value"] == metrics["validation"]["accuracy"]
    assert 0.0 <= metrics["test_metric_value"] <= 1.0
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    assert metrics["steps"] == 8
    history = json.loads((out / "history.json").read_text())
    assert len(history["train_loss"]) == 8 and history["final"]["test"] is not None
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_full_trains_every_parameter(tmp_path):
    metrics = run_smoke("full", tmp_path / "full")
    assert metrics["trainable_params"] == metrics["total_params"]


@pytest.mark.parametrize("flag, value", [
    ("--method", "not-a-method"), ("--task", "imdb"), ("--model", "gpt-9"), ("--scale", "huge"),
    ("--seed", "-1"), ("--r", "0"), ("--lr", "0"),
])
def test_bad_arguments_exit_2_and_write_nothing(flag, value, tmp_path, capsys):
    args = {"--method": "lora", "--task": "sentiment", "--scale": "smoke", flag: value}
    out = tmp_path / "out"
    argv = ["train", *[x for kv in args.items() for x in kv], "--out", str(out)]
    assert main(argv) == 2
    assert value in capsys.readouterr().err
    assert not out.exists()


def test_model_that_cannot_do_the_task_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--method", "lora", "--task", "gsm", "--model", "minilm", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "minilm" in err and "smollm2-135m" in err
    assert not out.exists()


def test_bad_scale_from_environment_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOWRANK_LAB_SCALE", "gigantic")
    out = tmp_path / "out"
    assert main(["train", "--method", "lora", "--task", "sentiment", "--out", str(out)]) == 2
    assert "gigantic" in capsys.readouterr().err
    assert not out.exists()


def test_target_modules_matching_nothing_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", "--method", "lora", "--task", "sentiment", "--scale", "smoke",
            "--target-modules", "no_such_layer", "--out", str(out)]
    assert main(argv) == 2
    assert "no_such_layer" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("method, flags, expected", [
    ("lora", ["--steps-per-round", "2"], "--steps-per-round only apply to --method xgblora"),
    ("xgblora", ["--steps-per-round", "100"], "total_steps=8], got 100"),  # smoke budget: K = 8 steps
    ("xgblora", ["--max-steps", "4", "--steps-per-round", "5"], "total_steps=4], got 5"),
    ("xgblora", ["--blocks-per-round", "0"], "'0'"),
    ("xgblora", ["--blocks-per-round", "7"], "L=6"),  # MiniLM has 6 layers: found once the model is loaded
    ("xgblora", ["--shrinkage", "0"], "'0'"),
    ("xgblora", ["--booster-penalty", "-1"], "'-1'"),
    ("xgblora", ["--r", "0"], "'0'"),
])
def test_bad_xgblora_flags_exit_2_and_write_nothing(method, flags, expected, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", "--method", method, "--task", "sentiment", "--scale", "smoke", *flags, "--out", str(out), "--quiet"]
    assert main(argv) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_smoke_xgblora_with_its_flags(tmp_path):
    argv = ["train", "--method", "xgblora", "--task", "sentiment", "--scale", "smoke", "--r", "1",
            "--steps-per-round", "2", "--blocks-per-round", "2", "--shrinkage", "1", "--booster-penalty", "0.01",
            "--out", str(tmp_path / "xgb"), "--quiet"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "xgb" / "metrics.json").read_text())
    assert metrics["method"] == "xgblora" and metrics["steps"] == 8 and metrics["r"] == 1
    assert 0.0 <= metrics["metric_value"] <= 1.0
