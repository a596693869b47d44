"""lessons/CRIB.md: every lesson has a crib, every row names a section heading its lesson has and says where the item
comes from (an evidence tag), so a renamed section or a new lesson cannot leave the crib pointing at nothing."""

import json
import re
from pathlib import Path

import pytest

from lowrank_lab import notebooks

CRIB = notebooks.LESSONS / "CRIB.md"
TAGS = ("paper", "review", "code", "third party", "ours", "not found", "issue")


def crib_sections(text: str) -> dict[str, list[list[str]]]:
    """lesson stem -> the rows (cells) of its table."""
    sections, current = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = []
        elif current and line.startswith("|"):
            if set(line.strip()) <= set("|-: "):  # the separator: the row before it was the header
                sections[current].pop()
            else:
                sections[current].append([c.strip() for c in line.strip().strip("|").split("|")])
    return sections


def headings(lesson: Path) -> set[str]:
    found = set()
    for cell in json.loads(lesson.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    found.add(line.lstrip("#").strip())
    return found


SECTIONS = crib_sections(CRIB.read_text())


def test_every_lesson_has_a_crib_and_nothing_else_does():
    assert sorted(SECTIONS) == [p.stem for p in notebooks.lesson_sources()]


@pytest.mark.parametrize("lesson", notebooks.lesson_sources(), ids=lambda p: p.stem)
def test_each_row_names_a_heading_of_its_lesson_and_its_evidence(lesson):
    rows = SECTIONS[lesson.stem]
    assert len(rows) >= 3, f"{lesson.stem}: the crib has {len(rows)} rows"
    have = headings(lesson)
    for where, what, cell in rows:
        assert cell in have, f"{lesson.stem}: no heading {cell!r} (the lesson has {sorted(have)})"
        assert what, f"{lesson.stem}: row for {cell!r} says nothing"
        tags = re.findall(r"\(([^()]*)\)", where)
        assert any(t in tag for tag in tags for t in TAGS), f"{lesson.stem}: {where!r} carries no evidence tag"


def test_the_crib_recognises_a_missing_heading(tmp_path):
    lesson = tmp_path / "09_x.ipynb"
    lesson.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": "## (a) One\ntext"}]}))
    assert headings(lesson) == {"(a) One"}
    assert crib_sections("## 09_x\n| a | b | c |\n|---|---|---|\n| x (ours) | y | (a) Two |\n") == \
        {"09_x": [["x (ours)", "y", "(a) Two"]]}
