"""`python -m lowrank_lab compare`: matched budgets, resumable runs, every artifact, errors before any run."""

import json

import pytest

from lowrank_lab import cli
from lowrank_lab.compare import COMPARE_METHODS, compare, plan

ARTIFACTS = ("results.json", "results.csv", "table.md", "curves.png", "metric_vs_params.png", "cost.png")


def test_every_method_at_smoke_writes_every_artifact_and_resumes(tmp_path):
    out = tmp_path / "cmp"
    results = compare("sentiment", scale="smoke", seeds=1, out=out, show_progress=False, command="test")
    for name in ARTIFACTS:
        assert (out / name).stat().st_size > 0, name
    assert list(results["table"]) == list(COMPARE_METHODS)
    saved = json.loads((out / "results.json").read_text())
    assert saved["budget"] == saved["table"]["lora"]["trainable_params"]
    for method, match in saved["matching"].items():
        assert match["rule_text"] in (out / "table.md").read_text()
        if match["rule"] in ("same_r", "search_r", "budget"):  # matched methods sit within 2x of the budget
            assert saved["budget"] / 2 <= saved["table"][method]["trainable_params"] <= 2 * saved["budget"], method
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    assert len(stamps) == len(COMPARE_METHODS)
    compare("sentiment", scale="smoke", seeds=1, out=out, show_progress=False)
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}  # nothing re-ran


@pytest.mark.parametrize("argv, message", [
    (["--methods", "lora,nope"], "unknown method"),
    (["--task", "nope"], "invalid choice"),
    (["--r", "0"], "must be a positive int"),
])
def test_bad_input_exits_2_before_any_run(tmp_path, capsys, argv, message):
    out = tmp_path / "cmp"
    base = {"--task": "sentiment", "--scale": "smoke", "--out": str(out)}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    assert cli.main(["compare", *[x for kv in base.items() for x in kv]]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_budget_no_rank_can_meet_is_refused_before_any_run():
    with pytest.raises(ValueError, match="cannot meet the budget"):
        plan(("lora", "bone"), "sentiment", "minilm", r=4096)
