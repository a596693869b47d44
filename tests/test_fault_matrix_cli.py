"""Fault matrix, the command line (issue 22, items 6 and 13-16): what ``report`` does with a results.json that is not
one, and which ``--out``, ``--seed`` and ``--scale`` values ``train`` and ``compare`` refuse (exit 2, one message, no
traceback, nothing written, nothing loaded) or warn about. Test names carry the item number of the issue.
"""

from __future__ import annotations

import pytest

from lowrank_lab import cli, files

SMOKE = ["--task", "sentiment", "--scale", "smoke", "--quiet"]


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if a command gets as far as loading a model or training."""
    monkeypatch.setattr(cli, "run_method", lambda *a, **k: pytest.fail("loaded and trained before refusing"))


def argv_for(command: str, out: str, *extra: str) -> list[str]:
    if command == "train":
        return ["train", "--method", "lora", *SMOKE, "--out", out, *extra]
    return ["compare", "--task", "sentiment", "--scale", "smoke", "--methods", "lora", "--out", out, "--quiet", *extra]


# ------------------------------------------------------------------ 13: an --out the system cannot hold


@pytest.mark.parametrize("command", ["train", "compare"])
@pytest.mark.parametrize("kind, words", [
    ("long name", "is 300 bytes; a file or folder name is at most 255 bytes"),
    ("long path", "long as an absolute path; at most 3840"),
    ("empty", "is empty"),
])
def test_22_13_an_out_path_the_system_cannot_hold_exits_2(tmp_path, monkeypatch, capsys, nothing_loads, command,
                                                          kind, words):
    monkeypatch.chdir(tmp_path)  # `--out ""` used to write into the current folder
    out = {"long name": str(tmp_path / ("x" * 300)), "long path": "/".join(["d" * 200] * 21), "empty": ""}[kind]
    assert cli.main(argv_for(command, out)) == cli.USAGE_ERROR  # was OSError: File name too long (exit 1) / exit 0
    err = capsys.readouterr().err
    assert "argument --out" in err and words in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_22_13_the_api_refuses_the_same_paths_before_any_run(tmp_path):
    from lowrank_lab.compare import compare

    with pytest.raises(ValueError, match="at most 255 bytes"):
        compare("sentiment", scale="smoke", out=tmp_path / ("y" * 256), methods=("lora",), show_progress=False)
    with pytest.raises(ValueError, match="is empty"):
        files.check_writable_folder("")
    with pytest.raises(ValueError, match="NUL character"):
        files.check_writable_folder(str(tmp_path / "a\0b"))
    files.check_writable_folder(tmp_path / ("z" * 255))  # the longest name is fine
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 14: flags that full fine-tuning ignores


def test_22_14_rank_alpha_and_targets_are_refused_for_full_fine_tuning(tmp_path, capsys, nothing_loads):
    out = tmp_path / "run"
    argv = ["train", "--method", "full", *SMOKE, "--alpha", "4", "--r", "64", "--target-modules", "no_such_module",
            "--out", str(out)]
    assert cli.main(argv) == cli.USAGE_ERROR  # was exit 0, recording target_modules: ["no_such_module"]
    err = capsys.readouterr().err
    assert "--r, --alpha, --target-modules do not apply to --method 'full'" in err and "Traceback" not in err
    assert not out.exists()


# ------------------------------------------------------------------ 15: a seed out of numpy's range


@pytest.mark.parametrize("seed", ["18446744073709551616", "4294967296", "-1", "1.5"])
def test_22_15_a_seed_beyond_32_bits_is_refused_at_parse_time(tmp_path, capsys, nothing_loads, seed):
    out = tmp_path / "run"
    assert cli.main(["train", "--method", "lora", *SMOKE, "--seed", seed, "--out", str(out)]) == cli.USAGE_ERROR
    err = capsys.readouterr().err
    assert "argument --seed: must be an int in [0, 2**32 - 1 = 4294967295]" in err and f"got '{seed}'" in err
    assert "could not prepare" not in err and not out.exists()  # it used to blame the model


def test_22_15_the_largest_seed_is_accepted():
    assert cli._seed(str(2**32 - 1)) == cli.MAX_SEED == 2**32 - 1


# ------------------------------------------------------------------ 16: the GPU preset on a CPU


def test_22_16_scale_full_without_a_gpu_says_what_it_costs_first(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def stop(*args, **kwargs):
        raise ValueError("stopped by the test before loading")

    monkeypatch.setattr(cli, "run_method", stop)
    assert cli.main(["train", "--method", "lora", "--task", "sentiment", "--scale", "full", "--quiet",
                     "--out", str(tmp_path / "run")]) == cli.USAGE_ERROR  # the stand-in's refusal, not the warning's
    lines = capsys.readouterr().err.strip().splitlines()
    warning = [line for line in lines if "warning" in line]
    assert len(warning) == 1 and lines[0] == warning[0]  # one line, before anything is loaded
    assert "--scale full is the GPU preset (3 epochs" in warning[0] and "no GPU was found" in warning[0]
    assert "several times the work of --scale cpu (512 steps" in warning[0]
    for scale in ("smoke", "cpu"):  # the CPU presets say nothing
        cli._warn_full_on_cpu(scale, "classification")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cli._warn_full_on_cpu("full", "classification")  # with a GPU: nothing to say
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ 6: report on a file that is not a results.json


@pytest.mark.parametrize("content, words", [
    ([], "the top level must be a JSON object"),
    ({}, "it lacks the keys ['task', 'model', 'scale', 'seeds', 'r', 'budget', 'metric', 'higher_is_better'"),
    ("drop", "it lacks the keys ['higher_is_better', 'runs']"),
    ("runs", "runs[0] must be an object with 'method' and 'seed'"),
])
@pytest.mark.parametrize("flags", [[], ["--tuned-rates"]])
def test_22_06_report_names_the_file_and_what_it_lacks(tmp_path, capsys, content, words, flags):
    results = {"task": "sentiment", "model": "minilm", "scale": "smoke", "seeds": 1, "r": 8, "budget": 100,
               "metric": "accuracy", "higher_is_better": True, "table": {}, "matching": {}, "runs": []}
    if content == "drop":
        content = {k: v for k, v in results.items() if k not in ("higher_is_better", "runs")}
    elif content == "runs":
        content = {**results, "runs": [["lora", 1]]}
    files.write_json(tmp_path / "results.json", content)
    assert cli.main(["report", str(tmp_path), *flags]) == cli.USAGE_ERROR  # was a traceback, exit 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'results.json'} is not a compare's results.json" in err and words in err
    assert "Traceback" not in err
