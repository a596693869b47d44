"""Fault matrix, runs and results: what a diverged, failed, interrupted or mismatched run must (not) become.

Each test names the behaviour it pins down (numbers follow the reliability issue): a diverged run is never
scored, a reused run matches its settings, files are strict JSON written atomically, the CLI separates bad
arguments (exit 2) from failed (3) and diverged (4) training, with one line and no traceback.
The adapter-state half (merged loads, scaling, shapes, malformed files, PEFT heads, Sylvester) lives in
``test_fault_matrix_adapters.py``.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from lowrank_lab import cli, compare as compare_module, experiment, files, recipes
from lowrank_lab.assets import load_model
from lowrank_lab.compare import compare
from lowrank_lab.layers.base import NonFiniteError
from lowrank_lab.train import TrainConfig, TrainingDiverged, TrainingFailed, train

SMOKE = ["--task", "sentiment", "--scale", "smoke", "--quiet"]


class SabotagedAdamW(torch.optim.AdamW):
    """AdamW that breaks at step ``at``: NaN in a weight (``how="nan"``), a refused update (``"refuse"``) or an
    unrelated crash (``"crash"``). The loss before that step is finite, so only a check after it can tell."""

    def __init__(self, params, lr, at: int, how: str):
        super().__init__(params, lr=lr)
        self.at, self.how, self.count = at, how, 0

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        self.count += 1
        if self.count == self.at:
            if self.how == "nan":
                self.param_groups[0]["params"][0].fill_(float("nan"))
            elif self.how == "refuse":
                raise NonFiniteError("merging would write non-finite values; refusing")
            else:
                raise RuntimeError("out of memory (simulated)")


def sabotaged(how: str, at: int | None = None):
    """A make_optimizer hook for a LoRA run that breaks at step ``at`` (default: the last one)."""
    def make(model, config):
        params = [p for p in model.parameters() if p.requires_grad]
        return SabotagedAdamW(params, config.lr, at or config.max_steps, how)
    return make


@pytest.fixture
def broken_methods(monkeypatch):
    """Registers lora-nan-last (NaN after the final update), lora-refused, lora-crash for this test only."""
    for name, how in (("lora-nan-last", "nan"), ("lora-refused", "refuse"), ("lora-crash", "crash")):
        monkeypatch.setitem(recipes.METHODS, name, recipes.prepare_lora)
        monkeypatch.setitem(recipes.OPTIMIZERS, name, sabotaged(how, at=None if how == "nan" else 2))


def no_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("compare started a run it should have reused or refused")
    monkeypatch.setattr(compare_module.runs, "_train_in_subprocess", refuse)


# ------------------------------------------------------------------ 2: non-finite on the last step


def test_02_nan_after_the_final_update_is_a_divergence_not_an_accuracy(tmp_path):
    from lowrank_lab.assets import load_task, load_tokenizer

    task, tok = load_task("sentiment", max_train=16, max_eval=8), load_tokenizer("tiny-llama")
    torch.manual_seed(0)
    model = recipes.prepare("lora", load_model("tiny-llama", "classification", num_labels=2), "tiny-llama", task)
    config = TrainConfig(max_steps=3, batch_size=4, max_length=32, device="cpu", warmup_ratio=0.0)
    optimizer = sabotaged("nan")(model, config)
    with pytest.raises(TrainingDiverged, match="non-finite values after the update") as caught:
        train(model, task, tok, config, optimizer=optimizer, out_dir=tmp_path, show_progress=False)
    assert caught.value.step == 3 and len(caught.value.history["train_loss"]) == 3  # every loss was finite
    assert files.read_json(tmp_path / "history.json")["status"] == "diverged"  # strict JSON: no NaN


def test_02_cli_reports_a_diverged_run_in_one_line_and_exits_4(tmp_path, capsys, broken_methods):
    out = tmp_path / "run"
    assert cli.main(["train", "--method", "lora-nan-last", *SMOKE, "--out", str(out)]) == cli.DIVERGED
    err = capsys.readouterr().err
    assert "diverged at step 8" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    metrics = files.read_json(out / "metrics.json")  # raises on NaN/Infinity
    assert metrics["status"] == "diverged" and metrics["metric_value"] is None
    assert metrics["failed_at_step"] == 8 and metrics["run_spec"]["method"] == "lora-nan-last"
    assert "NaN" not in (out / "metrics.json").read_text() + (out / "history.json").read_text()


def test_02_compare_records_the_diverged_run_and_goes_on(tmp_path, capsys, broken_methods, compare_in_process):
    out = tmp_path / "cmp"
    results = compare("sentiment", scale="smoke", seeds=1, out=out, methods=("lora-nan-last", "lora"),
                      show_progress=False)
    saved = files.read_json(out / "results.json")  # strict: no NaN anywhere
    assert [r["status"] for r in saved["runs"]] == ["diverged", "ok"]
    row = saved["table"]["lora-nan-last"]
    assert row["mean"] is None and row["n"] == 0 and row["diverged"] == 1
    assert saved["table"]["lora"]["n"] == 1 and results["failed"] == []
    assert "1 of 1 diverged" in (out / "table.md").read_text()


# ------------------------------------------------------------------ 3: resume only a run of the same settings


@pytest.fixture(scope="module")
def lora_r8_run(tmp_path_factory):
    """A finished smoke LoRA run at r=8, exactly as compare would have made it."""
    out = tmp_path_factory.mktemp("resume") / "cmp"
    run_dir = compare_module._run_dir(out, "lora", 1)  # seed 1: compare's first reporting seed
    assert cli.main(["train", "--method", "lora", "--model", "minilm", *SMOKE, "--seed", "1", "--r", "8",
                     "--out", str(run_dir)]) == 0
    return out


def copy_of(lora_r8_run, tmp_path):
    shutil.copytree(lora_r8_run, tmp_path / "cmp")
    return tmp_path / "cmp"


def test_03_a_run_with_the_same_settings_is_reused(lora_r8_run, tmp_path, monkeypatch):
    no_runs(monkeypatch)
    out = copy_of(lora_r8_run, tmp_path)
    results = compare("sentiment", scale="smoke", seeds=1, out=out, methods=("lora",), r=8, show_progress=False)
    assert results["table"]["lora"]["n"] == 1


@pytest.mark.parametrize("change, named", [
    (dict(r=2), "options.r: 8 (recorded) vs 2 (wanted)"),
    (dict(lr=5e-4), "preset.lr: 0.001 (recorded) vs 0.0005 (wanted)"),
])
def test_03_a_run_with_other_settings_is_refused_naming_the_difference(lora_r8_run, tmp_path, monkeypatch,
                                                                        change, named):
    no_runs(monkeypatch)
    out = copy_of(lora_r8_run, tmp_path)
    if "lr" in change:  # a changed default learning rate makes every old run another run
        monkeypatch.setitem(compare_module.study.presets.LEARNING_RATES, "lora",
                            {"classification": change["lr"], "causal_lm": 2e-4})
    with pytest.raises(ValueError, match="other settings") as caught:
        compare("sentiment", scale="smoke", seeds=1, out=out, methods=("lora",), r=change.get("r", 8),
                show_progress=False)
    assert named in str(caught.value) and "lora-s1" in str(caught.value)


def test_03_a_run_without_a_record_of_its_settings_is_refused(lora_r8_run, tmp_path, monkeypatch, capsys):
    no_runs(monkeypatch)
    out = copy_of(lora_r8_run, tmp_path)
    path = out / "runs" / "lora-s1" / "metrics.json"
    metrics = files.read_json(path)
    del metrics["run_spec"]
    files.write_json(path, metrics)
    argv = ["compare", "--task", "sentiment", "--scale", "smoke", "--methods", "lora", "--out", str(out), "--quiet"]
    assert cli.main(argv) == cli.USAGE_ERROR
    assert "without a record of its settings" in capsys.readouterr().err


# ------------------------------------------------------------------ 10: atomic, strict files


def test_10_a_truncated_run_file_is_named_and_re_run(lora_r8_run, tmp_path, capsys, compare_in_process):
    out = copy_of(lora_r8_run, tmp_path)
    path = out / "runs" / "lora-s1" / "metrics.json"
    path.write_text(path.read_text()[:100])  # what a plain write interrupted half-way leaves
    results = compare("sentiment", scale="smoke", seeds=1, out=out, methods=("lora",), show_progress=False)
    assert f"re-running: cannot read {path}" in capsys.readouterr().out
    assert results["runs"][0]["status"] == "ok" and files.read_json(path)["status"] == "ok"


def test_10_writes_are_atomic_and_strict(tmp_path):
    target = tmp_path / "metrics.json"
    files.write_json(target, {"accuracy": 0.8})

    def interrupted(temporary):
        with open(temporary, "w") as handle:
            handle.write('{"accur')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(target, interrupted)
    with pytest.raises(ValueError, match="non-finite"):
        files.write_json(target, {"accuracy": float("nan")})
    assert files.read_json(target) == {"accuracy": 0.8}  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind
    target.write_text('{"loss": NaN}')
    with pytest.raises(ValueError, match=f"cannot read {target}.*NaN"):
        files.read_json(target)
    target.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="not UTF-8"):
        files.read_json(target)


# ------------------------------------------------------------------ 7: unwritable output, found first


def test_07_an_output_path_under_a_file_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "run_method", lambda *a, **k: pytest.fail("loaded and trained before checking --out"))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert cli.main(["train", "--method", "lora", *SMOKE, "--out", str(blocker / "run")]) == cli.USAGE_ERROR
    assert "lies under the file" in capsys.readouterr().err
    argv = ["compare", "--task", "sentiment", "--scale", "smoke", "--out", str(blocker / "cmp")]
    assert cli.main(argv) == cli.USAGE_ERROR


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_07_a_read_only_output_folder_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "run_method", lambda *a, **k: pytest.fail("loaded and trained before checking --out"))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert cli.main(["train", "--method", "lora", *SMOKE, "--out", str(locked / "run")]) == cli.USAGE_ERROR
    finally:
        locked.chmod(0o755)
    assert "not writable" in capsys.readouterr().err


# ------------------------------------------------------------------ 11: setup errors vs training failures


@pytest.mark.parametrize("method, code, words", [
    ("lora-refused", cli.DIVERGED, "diverged at step 2"),  # a refused non-finite merge/step is a divergence
    ("lora-crash", cli.TRAINING_FAILED, "training failed at step 2: RuntimeError: out of memory"),
])
def test_11_training_failures_are_not_usage_errors(tmp_path, capsys, broken_methods, method, code, words):
    out = tmp_path / "run"
    assert cli.main(["train", "--method", method, *SMOKE, "--out", str(out)]) == code
    err = capsys.readouterr().err
    assert words in err and "could not prepare" not in err and "Traceback" not in err
    assert files.read_json(out / "metrics.json")["status"] == ("diverged" if code == cli.DIVERGED else "failed")


def test_11_a_failed_run_is_retried_by_compare_and_the_command_exits_3(tmp_path, capsys, broken_methods,
                                                                       compare_in_process):
    out = tmp_path / "cmp"
    argv = ["compare", "--task", "sentiment", "--scale", "smoke", "--methods", "lora-crash", "--out", str(out),
            "--quiet"]
    assert cli.main(argv) == cli.TRAINING_FAILED
    assert "1 run(s) failed: lora-crash seed 1" in capsys.readouterr().err
    assert cli.main(argv) == cli.TRAINING_FAILED  # retried, not reused
    assert "re-running: its last attempt failed" in capsys.readouterr().out


def test_11_setup_errors_stay_usage_errors(tmp_path, capsys):
    argv = ["train", "--method", "lora", *SMOKE, "--target-modules", "nothing_here", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == cli.USAGE_ERROR
    assert "could not prepare" in capsys.readouterr().err


# ------------------------------------------------------------------ 12: values that overflow float32


@pytest.mark.parametrize("flags, value", [
    (["--lr", "1e38"], "1e38"), (["--alpha", "1e300"], "1e300"), (["--r", "1000000000"], "1000000000"),
    (["--method", "xgblora", "--shrinkage", "1e300"], "1e300"),
    (["--method", "xgblora", "--booster-penalty", "1e300"], "1e300"), (["--lr", "nan"], "nan"),
])
def test_12_out_of_range_values_are_refused_at_parse_time(tmp_path, capsys, flags, value):
    out = tmp_path / "out"
    args = {"--method": "lora", **dict(zip(flags[::2], flags[1::2]))}
    assert cli.main(["train", *[x for kv in args.items() for x in kv], *SMOKE, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"got '{value}'" in err and "Traceback" not in err
    assert not out.exists()


# ------------------------------------------------------------------ 13: a method listed twice


def test_13_a_method_listed_twice_is_refused(tmp_path, capsys):
    argv = ["compare", "--task", "sentiment", "--scale", "smoke", "--methods", "lora,lora", "--out", str(tmp_path / "c")]
    assert cli.main(argv) == cli.USAGE_ERROR
    assert "more than once" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------ also: the effective alpha is recorded


def test_metrics_record_the_effective_alpha_and_scale(lora_r8_run):
    metrics = json.loads((lora_r8_run / "runs" / "lora-s1" / "metrics.json").read_text())
    assert metrics["alpha"] == 16.0 and metrics["scaling"] == 2.0 and metrics["use_rslora"] is False  # 2r / r


def test_setup_failures_in_the_api_are_value_errors_before_training():
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        experiment.run_method("lora", "sentiment", scale="smoke", seed=-1)
    assert issubclass(TrainingDiverged, TrainingFailed) and issubclass(TrainingDiverged, FloatingPointError)


def test_12_a_rank_beyond_a_layers_dimensions_warns():
    import lowrank_lab as lrl

    model = torch.nn.Sequential(torch.nn.Linear(6, 4))
    with pytest.warns(UserWarning, match=r"r=5 exceeds min\(in, out\)=4 of module '0'"):
        lrl.inject(model, lrl.LoRAConfig(r=5, target_modules=("0",)))


# ==================================================================================================================
# Issue 22 (round 2): run files and reports, concurrent studies, file modes, statistics helpers and claims. Test names
# carry the item number of that issue.
# ==================================================================================================================

COMPARE_LORA = ["compare", "--task", "sentiment", "--scale", "smoke", "--methods", "lora", "--seeds", "1", "--quiet"]


@pytest.fixture(scope="module")
def fake_study(tmp_path_factory):
    """A one-run smoke study (lora, seed 1) whose run was made by test_compare's fake ``train``: files that agree."""
    from test_compare import fake_child

    out = tmp_path_factory.mktemp("fake-study") / "cmp"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compare_module.runs, "_train_in_subprocess", fake_child(val_best=1e-3, test_best=1e-3))
        assert cli.main([*COMPARE_LORA, "--out", str(out)]) == 0
    return out


def _edit(metrics: dict, change: str) -> None:
    key, _, value = change.partition("=")
    if value == "<missing>":
        del metrics[key]
    else:
        metrics[key] = json.loads(value)


@pytest.mark.parametrize("changes, reason", [
    # 1: a hand-edited accuracy that its own history.json contradicts
    (["metric_value=0.99", "test_metric_value=0.99"],
     "metrics.json and history.json disagree on the validation accuracy"),
    # 2: metric missing or null with status ok (was a KeyError / TypeError traceback)
    (["metric_value=<missing>"], "metric_value must be a finite number for a finished run, got None"),
    (["metric_value=null"], "metric_value must be a finite number for a finished run, got None"),
    # 3: strings where numbers belong (was exit 2 naming no file)
    (['metric_value="NaN"'], "metric_value must be a finite number for a finished run, got 'NaN'"),
    (['trainable_params="many"'], "trainable_params must be a positive int, got 'many'"),
    # 4: out of range, or a bool counted as 1.0
    (["test_metric_value=7.5"], "test_metric_value is an accuracy, so it lies in [0, 1]; got 7.5"),
    (["metric_value=true"], "metric_value must be a finite number for a finished run, got True"),
    # 5: an unknown status (was dropped silently)
    (['status="banana"'], "unknown status 'banana' in metrics.json"),
])
def test_22_01_05_a_run_file_that_does_not_check_out_is_named_and_re_run(fake_study, tmp_path, monkeypatch, capsys,
                                                                          changes, reason):
    from test_compare import fake_child

    out = tmp_path / "cmp"
    shutil.copytree(fake_study, out)
    path = out / "runs" / "lora-s1" / "metrics.json"
    metrics = files.read_json(path)
    for change in changes:
        _edit(metrics, change)
    files.write_json(path, metrics)
    assert reason in compare_module.check_run_files(path.parent, metrics, need_predictions=True)
    trained = []
    child = fake_child(val_best=1e-3, test_best=1e-3)
    monkeypatch.setattr(compare_module.runs, "_train_in_subprocess",
                        lambda *a, **k: trained.append(a[0]) or child(*a, **k))
    assert cli.main([*COMPARE_LORA, "--out", str(out)]) == 0  # used as is (1), a traceback (2), exit 2 (3) before
    printed = capsys.readouterr().out
    assert trained == ["lora"] and "lora-s1: re-running: " in printed and reason in printed
    saved = files.read_json(out / "results.json")
    assert len(saved["retrained"]) == 1 and reason in saved["retrained"][0]  # recorded, not only printed
    assert saved["table"]["lora"]["n"] == 1 and saved["runs"][0]["status"] == "ok"  # n=1 of 1, not dropped
    fresh = files.read_json(path)
    assert compare_module.check_run_files(path.parent, fresh, need_predictions=True) == ""


def test_22_01_a_consistent_run_is_reused_untouched(fake_study, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    shutil.copytree(fake_study, out)
    no_runs(monkeypatch)
    assert cli.main([*COMPARE_LORA, "--out", str(out)]) == 0
    assert files.read_json(out / "results.json")["retrained"] == []


# ------------------------------------------------------------------ 7: seeds that do not overlap


def test_22_07_arms_whose_seeds_do_not_overlap_say_so(tmp_path, monkeypatch):
    from test_compare import _study

    from lowrank_lab.compare import reproduction_rows

    monkeypatch.setattr(compare_module.report, "RESULTS_DIR", tmp_path)  # no step-time benchmark there
    results = _study(tmp_path / "s", {"lora": [0.80, 0.81], "bone": [0.85, 0.86, 0.84, 0.85]})
    results["runs"] = [r for r in results["runs"] if r["method"] == "lora" or r["seed"] > 2]  # bone: seeds 3, 4 only
    row = next(r for r in reproduction_rows(results, tmp_path / "s") if r["kind"] == "better")
    assert row["verdict"] == "no verdict"
    assert "both ran, but on seeds that do not overlap (bone: [3, 4], lora: [1, 2]; in common: [])" in row["reason"]


# ------------------------------------------------------------------ 8, 9: one compare per folder, no orphans


def test_22_08_a_second_compare_on_a_busy_folder_is_refused_naming_the_holder(tmp_path, capsys, monkeypatch):
    no_runs(monkeypatch)
    out = tmp_path / "cmp"
    with compare_module.FolderLock(out):  # what a first compare holds for its whole life
        assert cli.main([*COMPARE_LORA, "--out", str(out)]) == cli.USAGE_ERROR
    err = capsys.readouterr().err
    assert f"{out} is in use by another compare (pid {os.getpid()}); wait for it to finish or use another --out" in err
    assert not (out / "runs").exists()
    with compare_module.FolderLock(out):  # released when its holder ends: the folder is usable again
        pass


def _python(code: str, *args: str, **kwargs):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


HOLD_THE_FOLDER = """
import sys, time
from lowrank_lab import cli
from lowrank_lab.compare import runs
runs._train_in_subprocess = lambda *a, **k: time.sleep(300) or ""  # a first compare, busy training
sys.exit(cli.main(sys.argv[1:]))
"""


def _wait_for(condition, seconds: float, what: str):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"gave up after {seconds} s waiting for {what}")


def test_22_08_two_compare_processes_on_one_folder_the_second_is_refused(tmp_path):
    import subprocess
    import sys
    import time

    out = tmp_path / "cmp"
    first = _python(HOLD_THE_FOLDER, *COMPARE_LORA, "--out", str(out))
    try:
        lock = out / ".compare.lock"
        _wait_for(lambda: lock.exists() and lock.read_text() == f"pid {first.pid}", 240, "the first compare's lock")
        time.sleep(1)
        second = subprocess.run([sys.executable, "-m", "lowrank_lab", *COMPARE_LORA, "--out", str(out)],
                                capture_output=True, text=True, timeout=240)
        assert second.returncode == cli.USAGE_ERROR  # both trained every run at once before
        assert f"is in use by another compare (pid {first.pid})" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # the first goes on
    finally:
        first.kill()
        first.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="PR_SET_PDEATHSIG is Linux")
def test_22_09_killing_compare_kills_its_train_child(tmp_path):
    import signal

    import psutil

    out = tmp_path / "cmp"
    parent = _python("import sys; from lowrank_lab import cli; sys.exit(cli.main(sys.argv[1:]))",
                     *COMPARE_LORA, "--out", str(out))
    children = []
    try:
        def train_child():
            try:
                found = [p for p in psutil.Process(parent.pid).children(recursive=True)
                         if "train" in p.cmdline() and "lowrank_lab" in p.cmdline()]
            except psutil.NoSuchProcess:
                pytest.fail(f"compare ended before starting its run: {parent.communicate()}")
            return found
        children = _wait_for(train_child, 240, "compare's train child")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()

        def gone(process):
            try:
                return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True
        _wait_for(lambda: all(gone(c) for c in children), 5, "the orphaned train child to die")
        assert not (out / "runs" / "lora-s1" / "metrics.json").exists()  # killed, not finished: nothing recorded
    finally:
        for child in children:  # never leave a run writing into tmp_path
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# ------------------------------------------------------------------ 10: files honour the umask


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_22_10_written_files_get_the_mode_the_umask_says(tmp_path, umask):
    import lowrank_lab as lrl

    old = os.umask(umask)
    try:
        files.write_json(tmp_path / "metrics.json", {"accuracy": 0.8})
        files.write_text(tmp_path / "table.md", "| a |")
        files.write_json(tmp_path / "metrics.json", {"accuracy": 0.9})  # replacing a file too
        model = lrl.inject(torch.nn.Sequential(torch.nn.Linear(4, 3)), lrl.LoRAConfig(r=2, target_modules=("0",)))
        lrl.save_adapter(model, tmp_path / "adapter")
    finally:
        os.umask(old)
    written = [tmp_path / "metrics.json", tmp_path / "table.md", tmp_path / "adapter" / "adapter_config.json",
               tmp_path / "adapter" / "adapter_model.safetensors"]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: oct(0o666 & ~umask) for p in written}
    assert files.current_umask() == old  # read without changing it


# ------------------------------------------------------------------ 17: statistics helpers name what is wrong


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_22_17_paired_difference_refuses_non_finite_values_naming_the_seed(bad):
    from lowrank_lab import stats

    with pytest.raises(ValueError, match=r"method\[2\] is not finite"):  # was AttributeError from statistics.stdev
        stats.paired_difference({1: 0.8, 2: bad, 3: 0.7}, {1: 0.7, 2: 0.7, 3: 0.7})


def test_22_17_string_seed_keys_against_int_keys_are_refused_not_n_0():
    from lowrank_lab import stats

    with pytest.raises(ValueError, match="seed keys of method are str .* but of baseline int"):
        stats.paired_difference({"1": 0.8, "2": 0.9}, {1: 0.7, 2: 0.7})  # JSON gives keys back as strings


# ------------------------------------------------------------------ 18: a claim passes only on a true bool


@pytest.mark.parametrize("value", [float("nan"), torch.tensor(float("nan")), "False", [False], 1, 0.5,
                                   torch.tensor([True, True]), {"ok": True}])
def test_22_18_an_invariant_never_passes_on_a_value_that_is_not_a_bool(value, capsys):
    from lowrank_lab import claims

    with pytest.raises(TypeError, match="claim 'merge is exact': the condition must be a single bool"):
        claims.check("merge is exact", value, must_hold=True)  # NaN, "False" and [False] all printed PASS
    with pytest.raises(TypeError, match="must be a single bool"):
        claims.check("merge is exact", lambda: (value, "detail"), must_hold=True)
    assert "PASS" not in capsys.readouterr().out


def test_22_18_bool_like_conditions_still_pass_and_fail():
    import numpy as np

    from lowrank_lab import claims

    for value in (True, np.bool_(True), np.float64(1e-13) < 1e-12, torch.tensor(1e-13) < 1e-12, torch.tensor([True])):
        assert claims.check("exact", value, must_hold=True)["status"] == "PASS"
    for value in (False, torch.tensor(float("nan")) < 1e-12, np.array(False)):
        with pytest.raises(claims.ClaimFailed):
            claims.check("exact", value, must_hold=True)
    claims.reset()
