"""The course site (``python -m lowrank_lab site``, lowrank_lab/site.py).

Without a browser: the link rewriting, the page plan, a quick build (landing page, course overview, one lesson
and its solutions) and the whole site built by the CLI command, offline, with nothing executed and nothing fetched
from a CDN. With ``-m browser`` (Debian's chromium + playwright): every page of both builds loads in headless
chromium without a console error or a non-local request, its math is rendered by the locally served MathJax
(no raw ``$...$`` left), every image loads and every internal link (and #anchor) resolves.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lowrank_lab import site
from browser_checks import Browser, StaticServer, check_page, require_browser, site_pages

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted(p.name for p in (ROOT / "lessons").glob("*.ipynb") if site.lesson_number(p.name))
QUICK_LESSON = "01"  # math, figures and links to the other lessons: the quick build's one lesson
SITE_MODULES = ("sphinx", "myst_nb", "sphinx_book_theme", "sphinx_copybutton", "sphinx-mathjax-offline")


def require_site_extra() -> None:
    missing = [m for m in SITE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the site extra is not installed ({', '.join(missing)}): pip install -e \".[site]\"")


# --------------------------------------------------------------------------------------- links, plan, pages


def _page(source: str, dest: str) -> site.Page:
    return site.Page(source, dest, "course")


def _plan(tmp_path: Path, repository: str | None = None) -> site.Plan:
    (tmp_path / "results" / "study").mkdir(parents=True)
    (tmp_path / "results" / "study" / "fig.png").write_bytes(b"\x89PNG")
    (tmp_path / "lowrank_lab").mkdir()
    (tmp_path / "lowrank_lab" / "train.py").write_text("")
    routes = {"README.md": "index.md", "lessons/README.md": "lessons/README.md",
              "lessons/01_x.ipynb": "lessons/01_x.ipynb", "lessons/executed/01_x.ipynb": "lessons/01_x.ipynb"}
    return site.Plan(tmp_path, [], routes, repository)


def test_links_to_lessons_lead_to_their_pages(tmp_path):
    plan = _plan(tmp_path)
    overview = site.LinkRewriter(plan, _page("lessons/README.md", "lessons/README.md"))
    assert overview.rewrite("[01](01_x.ipynb) and [copy](executed/01_x.ipynb#a-b)") == \
        "[01](01_x.ipynb) and [copy](01_x.ipynb#a-b)"
    landing = site.LinkRewriter(plan, _page("README.md", "index.md"))
    assert landing.rewrite("see [the lessons](lessons/README.md)") == "see [the lessons](lessons/README.md)"
    lesson = site.LinkRewriter(plan, _page("lessons/executed/01_x.ipynb", "lessons/01_x.ipynb"))
    # the executed copy's banner names its own lesson: plain text, code span kept
    assert lesson.rewrite("Copy of [`lessons/01_x.ipynb`](../01_x.ipynb).") == "Copy of `lessons/01_x.ipynb`."
    assert lesson.rewrite("[home](../../README.md#quickstart)") == "[home](../index.md#quickstart)"
    # the lesson's own text links from lessons/, one level above its executed copy
    plan.routes["lessons/CRIB.md"] = "lessons/CRIB.md"
    assert lesson.rewrite("the [crib](CRIB.md#01_x)") == "the [crib](CRIB.md#01_x)"
    assert lesson.rewrite("[nothing](NOPE.md)") == "nothing"


def test_figures_are_copied_and_other_files_become_text_or_repository_links(tmp_path):
    plan = _plan(tmp_path)
    landing = site.LinkRewriter(plan, _page("README.md", "index.md"))
    assert landing.rewrite("![CIs](results/study/fig.png)") == "![CIs](results/study/fig.png)"
    assert plan.assets == {"results/study/fig.png"}
    assert landing.rewrite("![gone](results/study/missing.png)") == \
        "*(figure not in this build: gone)*"
    assert plan.missing == ["README.md: results/study/missing.png"]
    assert landing.rewrite("the [loop](lowrank_lab/train.py) and [nothing](nope.md)") == "the loop and nothing"
    linked = site.LinkRewriter(_plan(tmp_path / "r", "https://github.com/o/lab"), _page("README.md", "index.md"))
    assert linked.rewrite("[loop](lowrank_lab/train.py#L3), [pkg](lowrank_lab/)") == \
        "[loop](https://github.com/o/lab/blob/main/lowrank_lab/train.py#L3), " \
        "[pkg](https://github.com/o/lab/tree/main/lowrank_lab)"
    lesson = site.LinkRewriter(plan, _page("lessons/01_x.ipynb", "lessons/01_x.ipynb"))
    assert lesson.rewrite('<img src="../results/study/fig.png" width="50%">') == \
        '<img src="../results/study/fig.png" width="50%">'


def test_code_external_links_and_anchors_are_untouched(tmp_path):
    rewriter = site.LinkRewriter(_plan(tmp_path), _page("README.md", "index.md"))
    text = ("`[not](a/link.py)` [paper](https://arxiv.org/abs/2106.09685) [up](#quickstart) "
            "[mail](mailto:x@y.z)\n```python\nx = d[k](y.py)\n```\n    ~~~\n[a](nope.py)\n")
    assert rewriter.rewrite(text) == text.replace("[a](nope.py)", "a")


def test_plan_has_every_lesson_once_with_its_executed_copy():
    plan = site.plan_site(ROOT)
    lessons = [p for p in plan.pages if p.section == "course" and p.dest.endswith(".ipynb")]
    assert [posixpath_name(p.dest) for p in lessons] == LESSONS
    for page in lessons:
        executed = ROOT / "lessons" / "executed" / posixpath_name(page.dest)
        assert page.source == (f"lessons/executed/{executed.name}" if executed.exists()
                               else f"lessons/{executed.name}")
    assert plan.pages[0].dest == "index.md"
    from lowrank_lab import notebooks

    solutions = {p.dest: p.source for p in plan.pages if p.section == "solutions"}
    assert set(solutions) == \
        {f"lessons/solutions/{p.name}" for p in (ROOT / "lessons" / "solutions").glob("*.ipynb")}
    for dest, source in solutions.items():  # the executed copy where it matches its solutions notebook
        copy = notebooks.EXECUTED_SOLUTIONS / posixpath_name(dest)
        fresh = copy.exists() and not notebooks.check_copy(ROOT / dest, copy)
        assert source == (f"lessons/executed/solutions/{copy.name}" if fresh else dest)
    for notation in ("lessons/NOTATION.md", "lessons/APPENDIX.md", "results/PREREGISTRATION.md"):
        assert ((ROOT / notation).exists()) == any(p.source == notation for p in plan.pages)
    with pytest.raises(site.SiteError, match="no lesson numbered 42"):
        site.plan_site(ROOT, ["42"])


def test_notation_appendix_and_unexecuted_lessons_are_pages(tmp_path):
    for path in ("README.md", "lessons/README.md", "lessons/NOTATION.md", "lessons/APPENDIX.md", "lessons/ABOUT.md",
                 "lessons/01_a.ipynb", "lessons/02_b.ipynb",
                 "lessons/executed/01_a.ipynb", "lessons/appendix.ipynb", "lessons/executed/appendix.ipynb",
                 "lessons/solutions/01_a_solutions.ipynb", "results/PREREGISTRATION.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}")
    plan = site.plan_site(tmp_path)
    pages = {p.dest: p for p in plan.pages}
    assert pages["lessons/01_a.ipynb"].source == "lessons/executed/01_a.ipynb" and not pages["lessons/01_a.ipynb"].note
    unexecuted = pages["lessons/02_b.ipynb"]
    assert unexecuted.source == "lessons/02_b.ipynb" and "no executed copy" in unexecuted.note
    assert pages["lessons/NOTATION.md"].section == "reference"
    assert pages["lessons/APPENDIX.md"].section == "reference"
    reference = [p.dest for p in plan.pages if p.section == "reference" and p.dest.endswith(".md")]
    assert reference[:3] == ["lessons/NOTATION.md", "lessons/APPENDIX.md", "lessons/ABOUT.md"]  # notation, appendix first
    assert pages["lessons/appendix.ipynb"].source == "lessons/executed/appendix.ipynb"
    assert plan.routes["lessons/executed/appendix.ipynb"] == "lessons/appendix.ipynb"
    assert pages["results/PREREGISTRATION.md"].section == "reference"
    quick = site.plan_site(tmp_path, ["2"])
    assert [p.dest for p in quick.pages if p.section in ("course", "solutions")] == \
        ["lessons/README.md", "lessons/02_b.ipynb"]


def test_solutions_pages_show_their_executed_copy_only_while_it_matches(tmp_path):
    cells = [{"cell_type": "code", "id": "c", "metadata": {}, "source": "1 + 1", "outputs": [],
              "execution_count": None}]
    header = {"cell_type": "markdown", "id": "h", "metadata": {"tags": ["lowrank-lab-executed-copy"]},
              "source": "Executed copy of [`lessons/solutions/01_a_solutions.ipynb`]"
                        "(../../solutions/01_a_solutions.ipynb)"}
    copy = {"cells": [header] + cells, "metadata": {"lowrank_lab": {"scale": "cpu", "commit": "abc", "wall_time_s": 1}},
            "nbformat": 4, "nbformat_minor": 5}
    for path, content in (("README.md", ""), ("lessons/01_a.ipynb", "{}"), ("lessons/02_b.ipynb", "{}"),
                          ("lessons/solutions/01_a_solutions.ipynb", json.dumps({"cells": cells, "metadata": {}})),
                          ("lessons/solutions/02_b_solutions.ipynb", json.dumps({"cells": cells, "metadata": {}})),
                          ("lessons/executed/solutions/01_a_solutions.ipynb", json.dumps(copy)),
                          ("lessons/executed/solutions/02_b_solutions.ipynb", json.dumps(copy).replace("1 + 1", "2"))):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(content)
    plan = site.plan_site(tmp_path)
    pages = {p.dest: p for p in plan.pages if p.section == "solutions"}
    assert pages["lessons/solutions/01_a_solutions.ipynb"].source == "lessons/executed/solutions/01_a_solutions.ipynb"
    assert pages["lessons/solutions/02_b_solutions.ipynb"].source == "lessons/solutions/02_b_solutions.ipynb"  # stale
    assert plan.routes["lessons/executed/solutions/01_a_solutions.ipynb"] == "lessons/solutions/01_a_solutions.ipynb"
    rewriter = site.LinkRewriter(plan, pages["lessons/solutions/01_a_solutions.ipynb"])
    assert rewriter.rewrite(header["source"]) == "Executed copy of `lessons/solutions/01_a_solutions.ipynb`"
    assert rewriter.rewrite("[lesson 01](../01_a.ipynb)") == "[lesson 01](../01_a.ipynb)"  # to the lesson's page


def posixpath_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def test_widget_views_become_a_note_and_widget_state_is_dropped(tmp_path):
    (tmp_path / "lessons" / "executed").mkdir(parents=True)
    view = {"output_type": "display_data", "metadata": {},
            "data": {site.WIDGET_VIEW: {"model_id": "abc"}, "text/plain": "interactive(children=...)"}}
    figure = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBOR", "text/plain": "<Figure>"}}
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"widgets": {"state": {}}},
          "cells": [{"cell_type": "code", "source": "explore()", "metadata": {}, "execution_count": 1,
                     "outputs": [figure, view, view]}]}
    (tmp_path / "lessons" / "executed" / "02_x.ipynb").write_text(json.dumps(nb))
    plan = site.Plan(tmp_path, [], {}, None)
    out = json.loads(site._notebook_page(plan, _page("lessons/executed/02_x.ipynb", "lessons/02_x.ipynb")))
    assert "widgets" not in out["metadata"]
    outputs = out["cells"][0]["outputs"]
    assert outputs[0] == figure and len(outputs) == 2
    assert outputs[1]["data"]["text/markdown"] == site.WIDGET_NOTE


def test_cli_refuses_an_output_folder_it_did_not_make(tmp_path, capsys):
    from lowrank_lab.cli import main

    require_site_extra()
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["site", "--out", str(tmp_path), "--src", str(tmp_path.parent / "src-refused")]) == 2
    assert "not a site this command built" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------------- builds


def _no_cdn(html: str) -> list[str]:
    """<script src> and <link href> that point off the site."""
    return re.findall(r"<(?:script|link)\b[^>]*(?:src|href)=\"((?:https?:)?//[^\"]*)\"", html)


@pytest.fixture(scope="module")
def quick_site(tmp_path_factory):
    require_site_extra()
    tmp = tmp_path_factory.mktemp("quick-site")
    result = site.build_site(out=tmp / "html", src=tmp / "src", lessons=[QUICK_LESSON])
    print(f"quick site: {len(result.pages)} pages in {result.seconds:.1f} s")
    return result


def test_quick_build_has_landing_page_and_one_lesson(quick_site):
    out = quick_site.out
    assert not quick_site.warnings, "\n".join(quick_site.warnings)
    assert not quick_site.missing
    lesson = next(name for name in LESSONS if name.startswith(QUICK_LESSON))
    page = (out / "lessons" / lesson.replace(".ipynb", ".html")).read_text(encoding="utf-8")
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "Reproduction at our scale" in index  # the README's reproduction tables are on the landing page
    assert re.search(r'<img[^>]+src="_images/paired_differences[^"]*\.png"', index), "the studies' figures"
    assert page.count("<img") >= 3, "the lesson's saved figures"
    assert 'src="../_static/mathjax/tex-chtml.js"' in page, "MathJax is served by the site"
    assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert not _no_cdn(index) and not _no_cdn(page)
    # the lessons left out of a partial build are named, not linked
    overview = (out / "lessons" / "README.html").read_text(encoding="utf-8")
    others = [name for name in LESSONS if not name.startswith(QUICK_LESSON)]
    assert not any(f'href="{name.replace(".ipynb", ".html")}' in overview for name in others)
    assert (out / site.MARKER).exists() and (out / ".nojekyll").exists()


@pytest.fixture(scope="module")
def full_site(tmp_path_factory):
    """The whole site, built by the command the README gives, into a fresh folder."""
    require_site_extra()
    tmp = tmp_path_factory.mktemp("full-site")
    run = subprocess.run([sys.executable, "-m", "lowrank_lab", "site", "--out", str(tmp / "html"),
                          "--src", str(tmp / "src")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    return tmp / "html", run.stdout


def test_site_command_builds_every_lesson_offline_without_executing(full_site):
    out, stdout = full_site
    assert "Sphinx warning" not in stdout and "figure not found" not in stdout, stdout
    for name in LESSONS:
        html = (out / "lessons" / name.replace(".ipynb", ".html")).read_text(encoding="utf-8")
        assert not _no_cdn(html), name
        executed = ROOT / "lessons" / "executed" / name
        if executed.exists():  # the saved outputs, never re-executed: every saved figure is on the page
            nb = json.loads(executed.read_text(encoding="utf-8"))
            figures = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
            assert len(re.findall(r"<img[^>]+_images/", html)) >= figures, name
    for solution in (ROOT / "lessons" / "solutions").glob("*.ipynb"):
        assert (out / "lessons" / "solutions" / solution.name.replace(".ipynb", ".html")).is_file()
    assert not (out.parent / "jupyter_execute").exists(), "myst-nb's files stay in the source folder"


# ------------------------------------------------------------------------------------------------ browser


def _check_site(out: Path, tmp_path: Path) -> dict:
    pages = site_pages(out)
    problems, reports = {}, {}
    with StaticServer(out) as server, Browser(tmp_path / "profile") as browser:
        page = browser.new_page()
        for path in pages:
            reports[path], found = check_page(page, server.base, out, path)
            if found:
                problems[path] = found
    assert not problems, "\n".join(f"{path}:\n  " + "\n  ".join(found) for path, found in problems.items())
    return reports


@pytest.mark.browser
def test_quick_site_in_chromium(quick_site, tmp_path):
    require_browser()
    reports = _check_site(quick_site.out, tmp_path)
    lesson = next(r for path, r in reports.items() if path.startswith(f"lessons/{QUICK_LESSON}"))
    assert lesson["rendered"] > 20 and lesson["images"] >= 3
    assert reports["index.html"]["images"] >= 3


@pytest.mark.browser
def test_full_site_in_chromium(full_site, tmp_path):
    require_browser()
    out, _ = full_site
    reports = _check_site(out, tmp_path)
    for name in LESSONS:
        report = reports[f"lessons/{name.replace('.ipynb', '.html')}"]
        assert report["rendered"] > 0, f"{name}: no math rendered"
    assert reports["lessons/README.html"]["rendered"] > 10  # the glossary's symbols


@pytest.mark.browser
def test_the_page_check_catches_each_defect(tmp_path):
    """The checker itself: a page with one of each defect is reported for each."""
    require_browser()
    head = '<head><link rel="icon" href="data:,"></head>'  # no favicon.ico request, whose 404 would be logged
    (tmp_path / "ok.html").write_text(f'<html>{head}<body><p id="here">fine</p></body></html>')
    (tmp_path / "bad.html").write_text(
        f'<html>{head}<body><p>raw $x^2$ math</p><span class="math">\\(y\\)</span>'
        '<img src="missing.png"><a href="nowhere.html">x</a><a href="ok.html#gone">y</a><a href="ok.html#here">z</a>'
        '<script>console.error("boom")</script><script src="https://cdn.example.invalid/x.js"></script>'
        '</body></html>')
    with StaticServer(tmp_path) as server, Browser(tmp_path / "profile") as browser:
        page = browser.new_page()
        _, problems = check_page(page, server.base, tmp_path, "bad.html")
        _, clean = check_page(page, server.base, tmp_path, "ok.html")
    text = "\n".join(problems)
    for expected in ("raw $...$ left in the text: ['$x^2$']", "1 math element(s) not rendered",
                     "image did not load", "link to a missing file: " + server.base + "nowhere.html",
                     "link to a missing anchor: " + server.base + "ok.html#gone", "console error: boom",
                     "non-local request: https://cdn.example.invalid/x.js"):
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert "ok.html#here" not in text
    assert clean == []
