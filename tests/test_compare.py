"""`python -m lowrank_lab compare`: matched budgets, resumable runs, every artifact, errors before any run."""

import json

import pytest

from lowrank_lab import cli
from lowrank_lab.compare import COMPARE_METHODS, compare, plan

ARTIFACTS = ("results.json", "results.csv", "table.md", "reproduction.md", "curves.png", "metric_vs_params.png", "cost.png")


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
        # LoRA r=512 on MiniLM q/v: 4.7M trainable; Bone's largest rank (384) reaches 1.8M, beyond a factor 2.
        plan(("lora", "bone"), "sentiment", "minilm", r=512)


def _results(scale="cpu", seeds=3, higher=True, **means):
    row = lambda mean, std=0.01, params=1000, time_s=0.1: {"mean": mean, "std": std, "trainable_params": params,
                                                            "median_step_time_s": time_s}
    return {"metric": "accuracy", "higher_is_better": higher, "scale": scale, "seeds": seeds, "task": "t",
            "model": "m", "table": {k: row(*v) if isinstance(v, tuple) else row(v) for k, v in means.items()}}


def test_reproduction_verdicts_follow_the_numbers():
    from lowrank_lab.compare import reproduction_rows

    rows = {(r["method"], r["kind"]): r for r in reproduction_rows(_results(
        full=0.90, lora=0.80, **{"lora-pro": 0.85}, bone=(0.79, 0.01, 1000, 0.09), bat=(0.81, 0.01, 1000, 0.2)))}
    assert rows[("lora-pro", "better")]["verdict"] == "reproduced"
    assert "gap to full FT closed: 50%" in rows[("lora-pro", "better")]["measured"]
    assert rows[("lora", "matches")]["verdict"] == "not reproduced"  # 0.80 vs 0.90, tolerance 0.02
    assert rows[("bone", "better")]["verdict"] == "not reproduced"
    assert rows[("bone", "faster")]["verdict"] == "reproduced"
    assert rows[("bat", "better")]["verdict"] == "reproduced"
    assert ("gelora", "better") not in rows  # a method not in the table gives no row
    lower = reproduction_rows(_results(higher=False, lora=2.0, **{"lora-pro": 1.5}))
    assert lower[0]["verdict"] == "reproduced"  # lower loss is better
    smoke = reproduction_rows(_results(scale="smoke", lora=0.5, **{"lora-pro": 0.9}))
    assert smoke[0]["verdict"] == "n/a at smoke scale"
