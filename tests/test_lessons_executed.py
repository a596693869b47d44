"""Executed lesson copies (and executed copies of the worked solutions, where made): each matches its source's cells
and names its commit and scale; the drift check and the runtime table work on a tiny notebook executed here."""

import json
import os
import re

import pytest

from lowrank_lab import notebooks


def _notebook(*sources):
    return {"cells": [{"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "source": s, "outputs": [],
                       "execution_count": None} for i, s in enumerate(sources)],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


# Every lesson has a committed copy; a solutions notebook is checked once its copy is committed (a missing one is
# listed by `lessons --check`, not failed here).
@pytest.mark.parametrize("source", [s for s in notebooks.all_sources() if notebooks.executed_copy(s).exists()],
                         ids=lambda p: p.stem)
def test_every_committed_copy_matches_its_lesson(source):
    assert notebooks.check_copy(source, notebooks.executed_copy(source)) == []


def test_an_executed_copy_names_its_run_and_catches_drift(tmp_path, monkeypatch):
    source = tmp_path / "09_tiny.ipynb"
    source.write_text(json.dumps(_notebook("import os\nprint(os.environ['LOWRANK_LAB_SCALE'])", "1 + 1")))
    monkeypatch.setattr(notebooks, "commit_of", lambda path: "0123456789abcdef")
    record = notebooks.execute(source, "smoke", timeout_s=120, out_dir=tmp_path / "executed")
    copy = tmp_path / "executed" / source.name
    executed = json.loads(copy.read_text())
    assert record["scale"] == "smoke" and record["commit"] == "0123456789abcdef" and record["wall_time_s"] > 0
    assert record["load_before"] >= 0 and (record["other_load"] is None or record["other_load"] >= 0)
    header = "".join(executed["cells"][0]["source"])
    assert "commit `0123456789ab`" in header and "scale `smoke`" in header
    assert "".join(executed["cells"][1]["outputs"][0]["text"]).strip() == "smoke"  # ran at the scale it names
    assert notebooks.check_copy(source, copy) == []

    source.write_text(json.dumps(_notebook("import os\nprint(os.environ['LOWRANK_LAB_SCALE'])", "2 + 2")))
    assert "cells differ from 09_tiny.ipynb from cell 1 on" in notebooks.check_copy(source, copy)[0]
    timings = json.loads((tmp_path / "executed" / "timings.json").read_text())
    assert timings["09_tiny"]["wall_time_s"] == record["wall_time_s"]


def test_an_executed_copy_starts_from_an_empty_runs_folder(tmp_path, monkeypatch):
    # A run left in runs/ by an earlier execution would be reused and make the measured time a rerun's.
    (tmp_path / "runs" / "09_tiny").mkdir(parents=True)
    (tmp_path / "runs" / "09_tiny" / "earlier.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOWRANK_LAB_RUNS", raising=False)
    source = tmp_path / "09_tiny.ipynb"
    source.write_text(json.dumps(_notebook("import lowrank_lab as lrl\nfolder = lrl.runs_dir('09_tiny')\n"
                                           "print(sorted(p.name for p in folder.iterdir()), folder.is_absolute())")))
    monkeypatch.setattr(notebooks, "commit_of", lambda path: "0123456789abcdef")
    notebooks.execute(source, "smoke", timeout_s=120, out_dir=tmp_path / "executed")
    executed = json.loads((tmp_path / "executed" / source.name).read_text())
    assert "".join(executed["cells"][1]["outputs"][0]["text"]).strip() == "[] True"
    assert "LOWRANK_LAB_RUNS" not in os.environ  # restored afterwards
    assert (tmp_path / "runs" / "09_tiny" / "earlier.json").exists()  # the student's own runs are untouched


def test_a_solutions_copy_goes_beside_the_lesson_copies_and_runs_where_its_relative_runs_are_empty(tmp_path,
                                                                                                   monkeypatch):
    # A solutions notebook reads the long runs it only describes by relative paths (Path("runs/...")): in the
    # executed copy they are a first run's (absent), and a path printed relative to the working directory names
    # runs/, not the machine's temporary folder.
    (tmp_path / "solutions" / "runs" / "left-over").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "solutions")
    source = tmp_path / "solutions" / "09_tiny_solutions.ipynb"
    source.write_text(json.dumps(_notebook(
        "import os\nfrom pathlib import Path\nimport lowrank_lab as lrl\n"
        "print(sorted(os.listdir('runs')), os.path.relpath(lrl.runs_dir('09_tiny_solutions')), "
        "os.environ['LOWRANK_LAB_NO_PROGRESS'])")))
    monkeypatch.setattr(notebooks, "commit_of", lambda path: "0123456789abcdef")
    record = notebooks.execute(source, "smoke", timeout_s=120, out_dir=tmp_path / "executed")
    copy = tmp_path / "executed" / "solutions" / source.name
    assert copy == notebooks.executed_copy(source, tmp_path / "executed")
    executed = json.loads(copy.read_text())
    assert "".join(executed["cells"][1]["outputs"][0]["text"]).strip() == "[] runs/09_tiny_solutions 1"
    header = "".join(executed["cells"][0]["source"])
    assert "[`lessons/solutions/09_tiny_solutions.ipynb`](../../solutions/09_tiny_solutions.ipynb)" in header
    assert "`python -m lowrank_lab lessons --execute 09 --solutions`" in header
    timings = json.loads((tmp_path / "executed" / "timings.json").read_text())
    assert timings["09_tiny_solutions"] == record and record["lesson"] == "09_tiny_solutions"
    assert notebooks.check_copy(source, copy) == []
    source.write_text(json.dumps(_notebook("2 + 2")))
    assert "--execute 09 --solutions`" in notebooks.check_copy(source, copy)[0]
    assert (tmp_path / "solutions" / "runs" / "left-over").is_dir() and not (tmp_path / "executed" / "runs").exists()


def test_the_check_lists_stale_and_missing_copies_of_lessons_and_solutions(tmp_path):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "executed" / "solutions").mkdir(parents=True)
    for path in ("01_a.ipynb", "02_b.ipynb", "solutions/01_a_solutions.ipynb", "solutions/02_b_solutions.ipynb"):
        (tmp_path / path).write_text(json.dumps(_notebook("1")))
    header = {"cell_type": "markdown", "id": "h", "metadata": {"tags": [notebooks.HEADER_TAG]}, "source": "copy"}
    copy = _notebook("1")
    copy["cells"].insert(0, header)
    copy["metadata"]["lowrank_lab"] = {"scale": "cpu", "commit": "abc", "wall_time_s": 1.0}
    (tmp_path / "executed" / "01_a.ipynb").write_text(json.dumps(copy))
    (tmp_path / "executed" / "02_b.ipynb").write_text(json.dumps(copy))
    (tmp_path / "executed" / "solutions" / "01_a_solutions.ipynb").write_text(json.dumps(copy))
    assert notebooks.check_all(tmp_path, tmp_path / "executed") == \
        ["02_b_solutions.ipynb: not executed yet (`python -m lowrank_lab lessons --execute 02 --solutions`)"]
    (tmp_path / "solutions" / "01_a_solutions.ipynb").write_text(json.dumps(_notebook("2")))
    problems = notebooks.check_all(tmp_path, tmp_path / "executed")
    assert len(problems) == 2 and "01_a_solutions.ipynb: cells differ" in problems[0]


def test_lessons_solutions_goes_with_execute():
    from lowrank_lab import cli

    assert cli.main(["lessons", "--solutions"]) == 2
    assert cli.main(["lessons", "--solutions", "--check"]) == 2
    assert cli.main(["lessons", "--execute", "42", "--solutions"]) == 2


def test_the_runtime_table_comes_from_the_timings(tmp_path):
    (tmp_path / "00_a.ipynb").write_text(json.dumps(_notebook("1")))
    (tmp_path / "01_b.ipynb").write_text(json.dumps(_notebook("2")))
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "00_a_solutions.ipynb").write_text(json.dumps(_notebook("3")))
    (tmp_path / "solutions" / "01_b_solutions.ipynb").write_text(json.dumps(_notebook("4")))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{notebooks.TABLE_START}\nold\n{notebooks.TABLE_END}\nafter\n")
    timings = tmp_path / "timings.json"
    timings.write_text(json.dumps({"00_a": {"wall_time_s": 90.0, "scale": "cpu", "cpu_count": 2,
                                            "commit": "abcdef1234567890"},
                                   "01_b_solutions": {"wall_time_s": 30.0, "scale": "cpu", "cpu_count": 2,
                                                      "commit": "1234567890abcdef", "other_load": 0.1},
                                   "00_a_solutions": {"wall_time_s": 600.0, "scale": "cpu", "cpu_count": 2,
                                                      "commit": "1234567890abcdef", "other_load": 2.04,
                                                      "load_before": 3.0}}))
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\n')
    text = notebooks.write_runtime_table(readme, timings, pyproject)
    assert "| 00_a | 1.5 min | cpu | 2 | `abcdef123456` |" in text and "| 01_b | not measured yet |" in text
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| 0")]
    assert rows == ["| 00_a", "| 01_b", "| 00_a_solutions", "| 01_b_solutions"]  # the lessons, then the solutions
    # a time measured while other work shared the CPU says so (load 0.1: an idle machine's noise, not said)
    assert "| 00_a_solutions | 10.0 min (machine busy: other work used 2.0 cores on average) | cpu |" in text
    assert "| 01_b_solutions | 0.5 min | cpu | 2 | `1234567890ab` | [executed/solutions/01_b_solutions.ipynb]" \
           "(executed/solutions/01_b_solutions.ipynb) |" in text
    assert text.startswith("intro\n") and text.endswith("after\n") and "old" not in text
    assert "colab" not in text  # no repository address: no link that could not open
    pyproject.write_text('[project.urls]\nRepository = "https://github.com/someone/lowrank-lab"\n')
    text = notebooks.write_runtime_table(readme, timings, pyproject)
    colab = "https://colab.research.google.com/github/someone/lowrank-lab/blob/main/lessons/"
    assert f"[open in Colab]({colab}executed/00_a.ipynb)" in text  # the executed copy, outputs included
    assert f"[open in Colab]({colab}01_b.ipynb)" in text  # no copy yet: the lesson itself
    assert f"[open in Colab]({colab}executed/solutions/01_b_solutions.ipynb)" in text
    assert f"[open in Colab]({colab}executed/solutions/00_a_solutions.ipynb)" in text


def test_select_names_lessons_by_number_and_refuses_unknown_ones():
    assert [p.stem[:2] for p in notebooks.select(["01", "03"])] == ["01", "03"]
    with pytest.raises(ValueError, match="lesson must be one of .* got '42'"):
        notebooks.select(["42"])
    chosen = notebooks.select(["01", "03_xgblora", "04_bone_and_bat_solutions"], solutions=True)
    assert [p.relative_to(notebooks.LESSONS).as_posix() for p in chosen] == \
        ["solutions/01_lora_from_scratch_solutions.ipynb", "solutions/03_xgblora_solutions.ipynb",
         "solutions/04_bone_and_bat_solutions.ipynb"]
    assert notebooks.select([], solutions=True) == notebooks.solution_sources()
    with pytest.raises(ValueError, match="lesson must be one of .* got '42'"):
        notebooks.select(["42"], solutions=True)


def test_the_lessons_readme_shows_the_table_the_timings_give():
    timings = json.loads(notebooks.TIMINGS.read_text()) if notebooks.TIMINGS.exists() else {}
    table = notebooks.runtime_table(timings, notebooks.all_sources(), notebooks.github_repository())
    readme = (notebooks.LESSONS / "README.md").read_text()
    assert f"{notebooks.TABLE_START}\n{table}\n{notebooks.TABLE_END}" in readme, \
        "regenerate it: python -m lowrank_lab lessons --table"


# What a reader of an executed copy must never see (issue: lessons that agree with their numbers). Checked on every
# committed copy's outputs, mechanically: a PASS or FAIL on a claim about a trained model (those print the studies'
# outcomes, or an illustration), anything on stderr, a path of the machine that executed it, an accuracy that does
# not say which split it is on.
MACHINE_PATH = re.compile(r"(?<![\w.])(/tmp/|/work/|/root/|/home/|/Users/|[A-Z]:\\)")
JUDGED_EMPIRICAL = re.compile(r"^(PASS|FAIL)\s+empirical\s+cpu\b", re.MULTILINE)  # claims that needed training
ACCURACY_VALUE = re.compile(r"accuracy\s*[=:]?\s*[01]?\.\d", re.IGNORECASE)
SPLITS = re.compile(r"\b(validation|val|test|train|training|probe|majority|retained|chance|toy|held-out|heldout)\b",
                    re.IGNORECASE)


def _outputs(copy):
    for index, cell in enumerate(json.loads(copy.read_text())["cells"]):
        for output in cell.get("outputs", []):
            text = output.get("text") or "".join((output.get("data") or {}).get("text/plain", ""))
            yield index, output, "".join(text) if isinstance(text, list) else text


@pytest.mark.parametrize("copy", sorted(notebooks.EXECUTED.glob("[0-9][0-9]_*.ipynb"))
                         + sorted(notebooks.EXECUTED_SOLUTIONS.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_executed_copies_show_no_clutter_and_no_judged_short_run(copy):
    problems = []
    for index, output, text in _outputs(copy):
        if output.get("name") == "stderr":
            problems.append(f"cell {index}: stderr: {text.strip()[:120]}")
        if MACHINE_PATH.search(text or ""):
            problems.append(f"cell {index}: a machine path: {MACHINE_PATH.search(text).group(0)}...")
        if JUDGED_EMPIRICAL.search(text or ""):
            problems.append(f"cell {index}: a claim about a trained model judged PASS/FAIL: "
                            f"{JUDGED_EMPIRICAL.search(text).group(0)}")
        for line in (text or "").splitlines():
            if ACCURACY_VALUE.search(line) and not SPLITS.search(line):
                problems.append(f"cell {index}: an accuracy without its split: {line.strip()[:120]}")
    assert not problems, f"{copy.name}:\n" + "\n".join(problems)


def _with_markdown(text, code):
    notebook = _notebook(code)
    notebook["cells"].insert(0, {"cell_type": "markdown", "id": "text", "metadata": {}, "source": text})
    return notebook


def test_sync_prose_updates_text_cells_only_and_refuses_changed_code(tmp_path, monkeypatch):
    source = tmp_path / "09_tiny.ipynb"
    source.write_text(json.dumps(_with_markdown("The answer is four.", "print(2 + 2)")))
    monkeypatch.setattr(notebooks, "commit_of", lambda path: "0123456789abcdef")
    notebooks.execute(source, "smoke", timeout_s=120, out_dir=tmp_path / "executed")
    copy = tmp_path / "executed" / source.name

    source.write_text(json.dumps(_with_markdown("The answer is 4 (printed below).", "print(2 + 2)")))
    assert "cells differ" in notebooks.check_copy(source, copy)[0]
    monkeypatch.setattr(notebooks, "commit_of", lambda path: "fedcba9876543210")
    assert notebooks.sync_prose(source, tmp_path / "executed", dry_run=True) == [0]
    assert "cells differ" in notebooks.check_copy(source, copy)[0]  # a dry run writes nothing
    assert notebooks.sync_prose(source, tmp_path / "executed") == [0]
    assert notebooks.check_copy(source, copy) == []
    executed = json.loads(copy.read_text())
    assert "".join(executed["cells"][2]["outputs"][0]["text"]).strip() == "4"  # the output is kept
    header = "".join(executed["cells"][0]["source"])
    assert "commit `0123456789ab`" in header and "updated from commit `fedcba987654`" in header
    record = executed["metadata"]["lowrank_lab"]
    assert record["commit"].startswith("0123") and record["prose_commit"].startswith("fedc")
    assert notebooks.sync_prose(source, tmp_path / "executed") == []  # nothing left to copy

    before = copy.read_text()
    source.write_text(json.dumps(_with_markdown("The answer is 4 (printed below).", "print(3 + 3)")))
    with pytest.raises(ValueError, match="code changed since its executed copy .cell 1.*--execute 09"):
        notebooks.sync_prose(source, tmp_path / "executed")
    source.write_text(json.dumps(_with_markdown("The answer is 4.", "print(2 + 2)\nprint(1)")))
    with pytest.raises(ValueError, match="code changed"):
        notebooks.sync_prose(source, tmp_path / "executed")
    assert copy.read_text() == before  # refused before anything was written


def test_other_load_is_the_machines_cpu_time_minus_ours(monkeypatch):
    # other processes' cores on average = (machine CPU seconds - this process tree's) / wall; never negative; None
    # where the machine's CPU time cannot be read. The 1-min load average it replaces counted the previous notebook.
    monkeypatch.setattr(notebooks, "_cpu_seconds_all", lambda: 130.0)
    monkeypatch.setattr(notebooks, "_cpu_seconds_own", lambda: 58.0)
    assert notebooks.other_load(100.0, 40.0, 10.0) == 1.2  # 30 s in all, 18 of them ours, over 10 s
    assert notebooks.other_load(125.0, 40.0, 10.0) == 0.0  # our share can exceed the tick-rounded total: clamp
    assert notebooks.other_load(None, 40.0, 10.0) is None
    assert notebooks._cpu_seconds_own() == 58.0
    monkeypatch.undo()
    all_now, own_now = notebooks._cpu_seconds_all(), notebooks._cpu_seconds_own()
    assert own_now > 0 and (all_now is None or all_now > 0)  # readable here, or None off Linux
