"""Presets: the tuned cpu defaults agree with the committed study that chose them, and stay off other scales."""

from pathlib import Path

import pytest

from lowrank_lab import files, presets

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("task_name", sorted(presets.TUNED_RATES))
def test_tuned_rates_are_the_rates_their_results_file_selected(task_name):
    entry = presets.TUNED_RATES[task_name]
    results = files.read_json(ROOT / entry["results"])
    assert results["protocol"] == "tuned" and results["task"] == task_name and results["scale"] == "cpu"
    assert results["command"] == entry["command"]
    for method, rate in entry["lr"].items():
        assert results["tuning"][method]["lr_selected"] == rate, method
        assert presets.train_preset(task_name, "cpu", method)["lr"] == rate
    assert set(entry["lr"]) == {m for m, t in results["tuning"].items() if t["lr_selected"] is not None}
    for method, knobs in entry.get("options", {}).items():
        assert results["tuning"][method]["knobs_selected"] == knobs, method
        assert presets.tuned_options(task_name, "cpu", method) == knobs


def test_tuned_rates_apply_only_at_the_cpu_scale_they_were_tuned_at(monkeypatch):
    monkeypatch.setitem(presets.TUNED_RATES, "trec", {"results": "results/x.json", "command": "c",
                                                      "lr": {"lora": 5e-3}})
    assert presets.tuned_rate("trec", "cpu", "lora") == (5e-3, "results/x.json")
    assert presets.train_preset("trec", "cpu", "lora")["lr"] == 5e-3
    for scale in ("smoke", "full"):
        assert presets.tuned_rate("trec", scale, "lora") is None
        assert presets.train_preset("trec", scale, "lora")["lr"] == presets.learning_rate("lora", "classification")
    assert presets.tuned_rate("trec", "cpu", "bone") is None  # untuned methods keep the prior
    monkeypatch.setitem(presets.TUNED_RATES["trec"], "options", {"xgblora": {"blocks_per_round": 6}})
    assert presets.tuned_options("trec", "cpu", "xgblora") == {"blocks_per_round": 6}
    assert presets.tuned_options("trec", "smoke", "xgblora") == {} == presets.tuned_options("trec", "cpu", "lora")


def test_the_tuned_rates_entry_is_printed_from_a_study_not_typed():
    results = {"protocol": "tuned", "scale": "cpu", "task": "trec", "command": "python -m lowrank_lab compare x",
               "tuning": {"lora": {"lr_selected": 0.005, "knobs_selected": None},
                          "xgblora": {"lr_selected": 0.02, "knobs_selected": {"blocks_per_round": 6}},
                          "bone": {"lr_selected": None}}}
    text = presets.tuned_rates_entry(results, "results/study-trec-minilm-cpu/results.json")
    entry = eval("{" + text + "}")["trec"]  # the printed entry is valid Python for presets.TUNED_RATES
    assert entry["lr"] == {"lora": 0.005, "xgblora": 0.02} and entry["options"] == {"xgblora": {"blocks_per_round": 6}}
    assert entry["results"] == "results/study-trec-minilm-cpu/results.json" and entry["command"] == results["command"]
    with pytest.raises(ValueError, match="not a cpu-scale --tune-lr study"):
        presets.tuned_rates_entry({**results, "protocol": "preset"}, "x.json")


def test_colab_stays_at_cpu_scale_with_a_gpu_unless_full_is_asked_for(monkeypatch):
    # a free Colab GPU session is too short for the full preset: auto-detection keeps cpu there and says what full
    # would run; outside Colab a GPU still means full, and an explicit scale always wins
    import sys
    import types

    import torch

    from lowrank_lab import runtime

    monkeypatch.delenv(runtime.SCALE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.get_scale() == "full" and runtime.full_scale_note() == ""
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert runtime.get_scale() == "cpu"
    note = runtime.full_scale_note()
    assert "SCALE = 'full'" in note and str(presets.TRAIN_PRESETS["full"]["classification"]["epochs"]) in note
    assert runtime.get_scale("full") == "full" and runtime.full_scale_note("full") == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.get_scale() == "cpu" and runtime.full_scale_note() == ""
