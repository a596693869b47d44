"""``backfill``: older runs get the forgetting measures only through an exact reproduction; anything else is kept
as it was and said."""

import shutil

import pytest

from lowrank_lab import cli, files
from lowrank_lab.compare import _run_dir
from lowrank_lab.compare.backfill import RECORD_FILE, backfill, differences, missing_measures

SMOKE = ["--task", "sentiment", "--model", "minilm", "--scale", "smoke", "--quiet"]


@pytest.fixture(scope="module")
def old_study(tmp_path_factory):
    """A study folder with one finished smoke tuning run (seed 0) whose metrics.json lacks the forgetting measures,
    as the runs made before they existed do."""
    out = tmp_path_factory.mktemp("backfill") / "study"
    run_dir = _run_dir(out, "lora", 0, 1e-3)
    assert cli.main(["train", "--method", "lora", *SMOKE, "--seed", "0", "--r", "8", "--lr", "0.001",
                     "--out", str(run_dir)]) == 0
    metrics = files.read_json(run_dir / "metrics.json")
    assert metrics["retained"] is not None and metrics["intruders"] is not None
    files.write_json(run_dir / "metrics.json", {k: v for k, v in metrics.items() if k not in ("retained", "intruders")})
    return out, run_dir.name


def copy_of(old_study, tmp_path):
    out, name = old_study
    shutil.copytree(out, tmp_path / "study")
    return tmp_path / "study", tmp_path / "study" / "runs" / name


def test_a_run_that_reproduces_gets_the_measures_and_keeps_everything_else(old_study, tmp_path, compare_in_process):
    out, run_dir = copy_of(old_study, tmp_path)
    history = files.read_json(run_dir / "history.json")
    history["train_loss"][3] *= 1 + 1e-5  # another CPU kind's rounding: within the tolerance
    files.write_json(run_dir / "history.json", history)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != "metrics.json"}
    metrics_before = files.read_json(run_dir / "metrics.json")
    assert missing_measures(run_dir)
    done = backfill(out, show_progress=False)
    assert done["added"] == [run_dir.name] and not done["not_reproduced"] and not done["left"]
    after = files.read_json(run_dir / "metrics.json")
    assert after["retained"] is not None and after["intruders"]["total"] is not None
    assert {k: v for k, v in after.items() if k not in ("retained", "intruders", "forgetting_source")} == metrics_before
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != "metrics.json"} == before
    source = after["forgetting_source"]
    assert source["accuracies"] == "identical"
    assert source["max_loss_relative_difference"] == pytest.approx(1e-5, rel=0.01)
    assert files.read_json(out / RECORD_FILE)["runs"][run_dir.name]["status"] == "added"
    assert not (out / ".backfill").exists()
    assert backfill(out, show_progress=False)["added"] == []  # nothing left to do: a second call trains nothing


@pytest.mark.parametrize("edit, named", [
    (lambda h: h["train_loss"].__setitem__(2, h["train_loss"][2] * 1.05), "history.json train_loss[2]"),
    (lambda h: h["final"]["validation"].__setitem__("accuracy", h["final"]["validation"]["accuracy"] + 1e-6),
     "history.json final.validation.accuracy"),
])
def test_a_run_that_does_not_reproduce_is_kept_untouched_and_said(old_study, tmp_path, compare_in_process, capsys,
                                                                   edit, named):
    out, run_dir = copy_of(old_study, tmp_path)
    history = files.read_json(run_dir / "history.json")
    edit(history)  # a loss 5% off (another seed's size), or an accuracy off by any amount
    files.write_json(run_dir / "history.json", history)
    kept = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    code = cli.main(["backfill", str(out), "--quiet"])
    assert code == cli.TRAINING_FAILED
    assert named in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == kept
    entry = files.read_json(out / RECORD_FILE)["runs"][run_dir.name]
    assert entry["status"] == "not reproduced" and entry["differences"][0].startswith(named)
    assert backfill(out, show_progress=False)["not_reproduced"] == []  # recorded: skipped unless retry
    assert backfill(out, show_progress=False, retry=True)["not_reproduced"] == [run_dir.name]


def test_differences_name_each_field_and_allow_loss_rounding_only(old_study, tmp_path):
    out, run_dir = copy_of(old_study, tmp_path)
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    assert differences(run_dir, other) == ([], 0.0)
    metrics = files.read_json(other / "metrics.json")
    metrics["test_metric_value"] = 0.5
    metrics["run_spec"]["preset"]["lr"] = 0.002
    metrics["final_train_loss"] *= 1 + 1e-4
    files.write_json(other / "metrics.json", metrics)
    found, worst = differences(run_dir, other)
    assert [f.split(":")[0] for f in found] == ["metrics.json test_metric_value", "metrics.json run_spec.preset.lr"]
    assert worst == pytest.approx(1e-4, rel=0.01)


def test_bad_input_is_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(ValueError, match="out must be a study folder"):
        backfill(tmp_path / "nowhere")
    (tmp_path / "s" / "runs").mkdir(parents=True)
    with pytest.raises(ValueError, match="jobs must be a positive int, got 0"):
        backfill(tmp_path / "s", jobs=0)
    with pytest.raises(ValueError, match="limit must be a positive int or None, got 0"):
        backfill(tmp_path / "s", limit=0)
    assert cli.main(["backfill", str(tmp_path / "nowhere")]) == cli.USAGE_ERROR
    assert "study folder" in capsys.readouterr().err


# ------------------------------------------------------------------ replacing a tuning run the selection survives


@pytest.fixture(scope="module")
def tuned_study(tmp_path_factory):
    """A tuned smoke study (LoRA, 6 rates on tuning seed 0, one reporting seed) with its results.json."""
    from lowrank_lab.compare import compare

    out = tmp_path_factory.mktemp("tuned") / "study"
    compare("sentiment", "minilm", "smoke", seeds=1, out=out, methods=("lora",), tune=True, show_progress=False)
    return out


def _tamper(out, folder, validation):
    """Record ``validation`` as run ``folder``'s validation accuracy (metrics and history agree), and the study's
    tuning record as the protocol makes it from the recorded runs: a run another machine would not reproduce."""
    from lowrank_lab.compare.backfill import replay_tuning
    from lowrank_lab.compare.report import read_results, run_metrics

    run_dir = out / "runs" / folder
    metrics, history = files.read_json(run_dir / "metrics.json"), files.read_json(run_dir / "history.json")
    metrics["metric_value"] = history["final"]["validation"]["accuracy"] = validation
    metrics = {k: v for k, v in metrics.items() if k not in ("retained", "intruders")}
    files.write_json(run_dir / "metrics.json", metrics)
    files.write_json(run_dir / "history.json", history)
    results = read_results(out / "results.json")
    results["tuning"]["lora"] = replay_tuning(results, "lora", run_metrics(out))
    files.write_json(out / "results.json", results)
    return results["tuning"]["lora"]


def test_replaying_the_tuning_gives_back_the_record(tuned_study):
    from lowrank_lab.compare.backfill import replay_tuning
    from lowrank_lab.compare.report import read_results, run_metrics

    results = read_results(tuned_study / "results.json")
    assert replay_tuning(results, "lora", run_metrics(tuned_study)) == results["tuning"]["lora"]


def test_a_tuning_run_that_does_not_reproduce_is_replaced_where_the_selection_stands(tuned_study, tmp_path,
                                                                                    compare_in_process):
    out = tmp_path / "study"
    shutil.copytree(tuned_study, out)
    record = files.read_json(out / "results.json")["tuning"]["lora"]
    loser = min(record["lr_grid"], key=lambda e: e["validation"])  # the worst rate: a small change selects nothing
    _tamper(out, loser["folder"], round(loser["validation"] - 0.001, 6))
    done = backfill(out, show_progress=False, replace=True)
    assert done["replaced"] == [loser["folder"]] and not done["not_reproduced"]
    run = files.read_json(out / "runs" / loser["folder"] / "metrics.json")
    assert run["metric_value"] == loser["validation"] and run["retained"] is not None  # the re-training's own
    after = files.read_json(out / "results.json")["tuning"]["lora"]
    assert after == record  # the record follows the run back to what it was; the selection never moved
    assert files.read_json(out / RECORD_FILE)["runs"][loser["folder"]]["status"] == "replaced"


def test_a_tuning_run_is_not_replaced_where_the_selection_would_change(tuned_study, tmp_path, compare_in_process):
    out = tmp_path / "study"
    shutil.copytree(tuned_study, out)
    record = files.read_json(out / "results.json")["tuning"]["lora"]
    loser = min(record["lr_grid"], key=lambda e: e["validation"])
    tampered = _tamper(out, loser["folder"], 1.0)  # recorded as the best: the record now selects its rate
    assert tampered["lr_selected"] == loser["lr"]
    kept = {p.name: p.read_bytes() for p in (out / "runs" / loser["folder"]).iterdir()}
    done = backfill(out, show_progress=False, replace=True)
    assert done["not_reproduced"] == [loser["folder"]] and not done["replaced"]
    entry = files.read_json(out / RECORD_FILE)["runs"][loser["folder"]]
    assert "lr_selected" in entry["not_replaced"]
    assert {p.name: p.read_bytes() for p in (out / "runs" / loser["folder"]).iterdir()} == kept
    assert files.read_json(out / "results.json")["tuning"]["lora"] == tampered


def test_a_reported_run_is_never_replaced(tuned_study, tmp_path, compare_in_process):
    out = tmp_path / "study"
    shutil.copytree(tuned_study, out)
    reported = files.read_json(out / "results.json")["runs"][0]["folder"]
    run_dir = out / "runs" / reported
    metrics = files.read_json(run_dir / "metrics.json")
    files.write_json(run_dir / "metrics.json", {k: v for k, v in metrics.items() if k not in ("retained", "intruders")})
    history = files.read_json(run_dir / "history.json")
    history["train_loss"][1] *= 1.5
    files.write_json(run_dir / "history.json", history)
    done = backfill(out, show_progress=False, replace=True)
    assert done["not_reproduced"] == [reported]
    assert "a reported run is never replaced" in files.read_json(out / RECORD_FILE)["runs"][reported]["not_replaced"]


def test_retune_replaces_a_run_the_selection_moves_for_and_runs_the_study_again(tuned_study, tmp_path,
                                                                                compare_in_process):
    from lowrank_lab.compare import compare
    from lowrank_lab.compare.report import backfill_line

    out = tmp_path / "study"
    shutil.copytree(tuned_study, out)
    results = files.read_json(out / "results.json")
    record, reported = results["tuning"]["lora"], [r["folder"] for r in results["runs"]]
    loser = min(record["lr_grid"], key=lambda e: e["validation"])
    _tamper(out, loser["folder"], 1.0)  # recorded as the best, and the study run on that record:
    compare("sentiment", "minilm", "smoke", seeds=1, out=out, methods=("lora",), tune=True, show_progress=False)
    moved = [r["folder"] for r in files.read_json(out / "results.json")["runs"]]
    assert moved != reported  # its reporting seed was trained at the tampered run's rate
    done = backfill(out, show_progress=False, retune=True)
    assert done["retuned"] == [loser["folder"]] and not done["not_reproduced"] and not done["replaced"]
    after = files.read_json(out / "results.json")
    assert after["tuning"]["lora"] == record  # the re-training's value: the selection is back where it was
    assert [r["folder"] for r in after["runs"]] == reported and not after["failed"]
    assert done["retired"] == moved and (out / "retired" / moved[0] / "metrics.json").exists()
    assert not (out / "runs" / moved[0]).exists()
    entry = files.read_json(out / RECORD_FILE)["runs"][loser["folder"]]
    assert entry["status"] == "retuned" and "lr_selected" in entry["retuned_because"] and entry["retired"] == moved
    assert files.read_json(out / "runs" / loser["folder"] / "metrics.json")["retained"] is not None
    line = backfill_line(out)
    assert "re-tuned" in line and loser["folder"] in line and moved[0] in line and "stale" not in line
    assert backfill(out, show_progress=False, retune=True)["retuned"] == []  # done: a second call trains nothing


def test_a_retune_a_stop_interrupted_runs_the_study_on_the_next_call(tuned_study, tmp_path, compare_in_process):
    out = tmp_path / "study"
    shutil.copytree(tuned_study, out)
    before = files.read_json(out / "results.json")
    folder = before["tuning"]["lora"]["lr_grid"][0]["folder"]
    # stopped after the swap, before the study ran again: the record says retuned, nothing says what was retired
    files.write_json(out / RECORD_FILE, {"runs": {folder: {"status": "retuned", "retuned_because": "a test"}}})
    done = backfill(out, show_progress=False, retune=True)
    assert done["retuned"] == [] and done["retired"] == [] and not done["study"]["failed"]
    assert files.read_json(out / RECORD_FILE)["runs"][folder]["retired"] == []  # done now: not run a third time
    after = files.read_json(out / "results.json")
    assert after["tuning"] == before["tuning"] and [r["folder"] for r in after["runs"]] == [
        r["folder"] for r in before["runs"]]


def test_retune_refuses_a_study_it_cannot_run_again_before_training(old_study, tmp_path):
    out, run_dir = copy_of(old_study, tmp_path)
    with pytest.raises(ValueError, match="retune needs the study's results.json"):
        backfill(out, show_progress=False, retune=True)
    assert missing_measures(run_dir) and not (out / RECORD_FILE).exists()


def test_the_readme_line_counts_each_outcome_and_names_what_could_not_be_backfilled(tmp_path):
    from lowrank_lab.compare.report import backfill_line

    assert backfill_line(tmp_path) == ""  # never ran here: nothing to say
    files.write_json(tmp_path / RECORD_FILE, {"runs": {
        "a-s0": {"status": "added"}, "b-s0": {"status": "replaced", "cpu_capability": "AVX512"},
        "c-s0": {"status": "not reproduced", "not_replaced": "with the re-trained values the tuning would change"}}})
    line = backfill_line(tmp_path)
    assert "1 re-trained runs reproduced" in line and "1 did not reproduce and were replaced" in line
    assert "re-tuned" not in line
    record = files.read_json(tmp_path / RECORD_FILE)
    record["runs"]["d-s0"] = {"status": "retuned", "retuned_because": "lr_selected 0.01 -> 0.005"}
    files.write_json(tmp_path / RECORD_FILE, record)  # swapped in, the study not yet run again: stale, and said
    assert "lr_selected 0.01 -> 0.005" in backfill_line(tmp_path) and "stale" in backfill_line(tmp_path)
    assert "(AVX512)" in line and "c-s0 (with the re-trained values the tuning would change)" in line
