"""``python -m lowrank_lab site``: the course as a static web site, built offline from the committed files.

The site is the Jupyter Book 1.x stack driven directly: Sphinx, myst-nb (notebooks and MyST markdown) and
sphinx-book-theme, with a ``conf.py`` this module writes, so that every setting that could reach the network is
pinned here: MathJax is served from the site itself (the ``sphinx-mathjax-offline`` package vendors MathJax 3),
myst-nb's ipywidgets loader (require.js and the widget manager from public CDNs) is switched off, no launch, Thebe
or comment buttons, no web fonts. Nothing is executed: the lesson pages are the executed copies
(``lessons/executed/*.ipynb``) with their saved outputs; so are the worked solutions, from their executed copies
(``lessons/executed/solutions/*.ipynb``) where one matches its solutions notebook, as committed otherwise.

Pages (each at the path of what it shows, so the repository's relative links keep working):

- ``index``: the repository README (landing page, with the reproduction tables and the studies' figures);
- ``lessons/README``: the course overview (lessons table, prerequisites, notation, glossary);
- ``lessons/NN_name``: one page per lesson, from its executed copy (from the lesson itself, without outputs,
  while it has no executed copy);
- ``lessons/solutions/NN_name_solutions``: the worked solutions, from the executed copy when there is one that holds
  exactly the solutions notebook's cells (``notebooks.check_copy``; a stale copy is not shown), else from the
  solutions notebook as committed;
- every other ``lessons/*.md`` (the notation page ``NOTATION.md`` and the math appendix ``APPENDIX.md`` first, then
  any other) and ``results/*.md`` (the preregistration of the studies).

Links between these files are rewritten to the pages that show them; a linked image (the studies' figures under
``results/``) is copied next to the page; a link to any other file of the repository (source code, a folder)
points at the repository's web address when ``pyproject.toml`` names one (``[project.urls] Repository``), and
becomes plain text otherwise, so that no link on the site leads nowhere. A saved widget view (which needs a
live kernel) is replaced by a note; the static figure drawn before it stays.

The generated sources go to ``build/site-src/`` and the HTML to ``build/site/`` (both under the gitignored
``build/``); ``--out DIR`` puts the HTML elsewhere. View it with ``python -m http.server -d build/site``.
Needs ``pip install -e ".[site]"``.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("build") / "site"
DEFAULT_SRC = Path("build") / "site-src"
MARKER = ".lowrank_lab_site"  # in every output folder this module made, so that it may be replaced
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("*Interactive explorer (ipywidgets): it runs in a live Jupyter kernel. Open this lesson in "
               "JupyterLab to move its controls; the figure above shows its default view.*")
REQUIRED_MODULES = ("sphinx", "myst_nb", "sphinx_book_theme")
LESSON_RE = re.compile(r"^(\d\d)_.+\.ipynb$")
REFERENCE_FIRST = ("NOTATION.md", "APPENDIX.md", "CRIB.md")  # the reference pages listed first, in this order


class SiteError(Exception):
    """The site cannot be built (a missing package, a lesson that is not there, an output folder not ours)."""


@dataclass
class Page:
    source: str  # path in the repository (posix), what the page shows
    dest: str  # path under the site's source folder (posix), with its suffix (.md or .ipynb)
    section: str  # "home", "course", "solutions", "reference"
    note: str = ""  # a line shown first on the page (e.g. "no executed copy yet")

    @property
    def docname(self) -> str:
        return posixpath.splitext(self.dest)[0]


@dataclass
class Plan:
    root: Path
    pages: list[Page]
    routes: dict[str, str]  # repository path -> site source path, for every file a page shows
    repository: str | None  # https://github.com/OWNER/NAME, when pyproject.toml names it
    assets: set[str] = field(default_factory=set)  # repository paths of files copied as they are (figures)
    missing: list[str] = field(default_factory=list)  # images linked but not found


# ----------------------------------------------------------------------------------------------- the plan


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def lesson_number(name: str) -> str | None:
    match = LESSON_RE.match(name)
    return match.group(1) if match else None


def plan_site(root: Path = ROOT, lessons: list[str] | None = None) -> Plan:
    """Which pages the site has. ``lessons``: lesson numbers ("01", "6") to include (default: all)."""
    root = Path(root)
    lessons_dir = root / "lessons"
    if not (root / "README.md").is_file() or not lessons_dir.is_dir():
        raise SiteError(f"{root} is not a lowrank-lab clone (no README.md or lessons/): build the site from a "
                        "clone, installed with pip install -e \".[site]\"")
    sources = {p.name: p for p in lessons_dir.glob("*.ipynb") if lesson_number(p.name)}
    executed = {p.name: p for p in (lessons_dir / "executed").glob("*.ipynb") if lesson_number(p.name)}
    names = sorted(set(sources) | set(executed))
    if lessons is not None:
        wanted = {f"{int(n):02d}" if str(n).isdigit() else str(n) for n in lessons}
        unknown = wanted - {lesson_number(n) for n in names}
        if unknown:
            raise SiteError(f"no lesson numbered {', '.join(sorted(unknown))}; the lessons are "
                            f"{', '.join(lesson_number(n) for n in names)}")
        names = [n for n in names if lesson_number(n) in wanted]

    pages = [Page("README.md", "index.md", "home")]
    if (lessons_dir / "README.md").is_file():
        pages.append(Page("lessons/README.md", "lessons/README.md", "course"))
    routes = {"README.md": "index.md", "lessons/README.md": "lessons/README.md"}
    for name in names:
        dest = f"lessons/{name}"
        if name in executed:
            pages.append(Page(_rel(executed[name], root), dest, "course"))
        else:
            pages.append(Page(_rel(sources[name], root), dest, "course",
                              note="*This lesson has no executed copy yet: its code is shown without outputs. "
                                   "`python -m lowrank_lab lessons --execute` makes one.*"))
        routes[f"lessons/{name}"] = dest
        routes[f"lessons/executed/{name}"] = dest
    chosen = {lesson_number(n) for n in names}
    for path in sorted((lessons_dir / "solutions").glob("*.ipynb")):
        if lesson_number(path.name) in chosen or (lessons is None and not lesson_number(path.name)):
            rel = _rel(path, root)
            copy = lessons_dir / "executed" / "solutions" / path.name
            shown = copy if copy.is_file() and _copy_matches(path, copy) else path
            pages.append(Page(_rel(shown, root), rel, "solutions"))
            routes[rel] = rel
            routes[_rel(copy, root)] = rel
    # The notation page, then the math appendix, then any other page of the course (markdown or notebook beside
    # the lessons), and the studies' own documents (the preregistration).
    extras = sorted((p for p in lessons_dir.glob("*.md") if p.name != "README.md"),
                    key=lambda p: (REFERENCE_FIRST.index(p.name) if p.name in REFERENCE_FIRST else len(REFERENCE_FIRST),
                                   p.name))
    extras += [p for p in sorted(lessons_dir.glob("*.ipynb")) if not lesson_number(p.name)]
    extras += sorted((root / "results").glob("*.md"))
    for path in extras:
        rel = _rel(path, root)
        shown = lessons_dir / "executed" / path.name if path.suffix == ".ipynb" else path
        if shown.is_file() and shown != path:  # a notebook's executed copy, outputs included, when it has one
            routes[_rel(shown, root)] = rel
        pages.append(Page(_rel(shown if shown.is_file() else path, root), rel, "reference"))
        routes[rel] = rel
    return Plan(root, pages, routes, _repository_url(root))


def _copy_matches(source: Path, copy: Path) -> bool:
    """Whether ``copy`` is an executed copy of ``source`` as committed (the drift check of the executed copies)."""
    from lowrank_lab import notebooks

    try:
        return not notebooks.check_copy(source, copy)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):  # not a notebook: show the source
        return False


def _repository_url(root: Path) -> str | None:
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    match = re.search(r'^Repository\s*=\s*"(https://github\.com/[\w.-]+/[\w.-]+?)(?:\.git)?/?"',
                      pyproject.read_text(encoding="utf-8"), re.MULTILINE)
    return match.group(1) if match else None


# ------------------------------------------------------------------------------------------- link rewriting

# [text](target "title") and ![alt](target): text may hold one level of brackets (`[x]` inside a link text).
MD_LINK = re.compile(r"(?P<bang>!?)\[(?P<text>(?:[^\[\]\n]|\[[^\[\]\n]*\])*)\]"
                     r"\((?P<target><[^>\n]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?P<title>\s+\"[^\"\n]*\")?\)")
HTML_ATTR = re.compile(r"(?P<pre><(?:img|a|source)\b[^>]*?\s(?:src|href)=)(?P<q>[\"'])(?P<target>[^\"'>]*)(?P=q)",
                       re.IGNORECASE)
FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:.|\n)*?\1")


def _is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("//")


class LinkRewriter:
    """Rewrites one page's relative links: to the page that shows the target, to a copied figure, to the
    repository's web address, or to plain text."""

    def __init__(self, plan: Plan, page: Page):
        self.plan = plan
        self.page = page

    def resolve(self, target: str, image: bool) -> str | None:
        """The new target, or None when the link must become plain text."""
        if not target or target.startswith("#") or _is_external(target):
            return target
        path, _, fragment = target.partition("#")
        path = path.split("?", 1)[0]
        source_dir = posixpath.dirname(self.page.source)
        repo_path = posixpath.normpath(posixpath.join(source_dir, path))
        if source_dir.startswith("lessons/executed") and repo_path not in self.plan.routes \
                and not (self.plan.root / repo_path).exists():
            # An executed copy keeps its source's text, whose relative links start from the source's folder
            # (lessons/, or lessons/solutions/ for a worked solution), one level above the copy.
            repo_path = posixpath.normpath(posixpath.join(source_dir.replace("lessons/executed", "lessons", 1), path))
        if repo_path.startswith("../") or repo_path == "..":
            return None
        here = posixpath.dirname(self.page.dest) or "."
        suffix = f"#{fragment}" if fragment else ""
        dest = self.plan.routes.get(repo_path)
        if dest is not None and not image:
            if dest == self.page.dest:
                return suffix or None  # a link to the page itself (an executed copy naming its lesson)
            return posixpath.relpath(dest, here) + suffix
        file = self.plan.root / repo_path
        if posixpath.splitext(repo_path)[1].lower() in IMAGE_SUFFIXES:
            if file.is_file():
                self.plan.assets.add(repo_path)
                return posixpath.relpath(repo_path, here)
            self.plan.missing.append(f"{self.page.source}: {target}")
            return None
        if self.plan.repository and file.exists():
            kind = "tree" if file.is_dir() else "blob"
            return f"{self.plan.repository}/{kind}/main/{repo_path.rstrip('/')}{suffix}"
        return None

    def _markdown(self, match: re.Match) -> str:
        bang, text, target, title = match["bang"], match["text"], match["target"], match["title"] or ""
        bare = target[1:-1] if target.startswith("<") else target
        new = self.resolve(bare, image=bool(bang))
        if new is None:
            if bang:
                return f"*(figure not in this build: {text or bare})*"
            return text
        if new == bare:
            return match.group(0)
        return f"{bang}[{text}]({new}{title})"

    def _html(self, match: re.Match) -> str:
        new = self.resolve(match["target"], image=match["pre"].lower().startswith(("<img", "<source")))
        if new is None:
            new = "#"
        return f"{match['pre']}{match['q']}{new}{match['q']}"

    def rewrite(self, text: str) -> str:
        """Rewrite the links of markdown ``text``, leaving fenced code blocks and inline code untouched."""
        out, block, fence = [], [], None
        for line in text.splitlines(keepends=True):
            opening = FENCE.match(line)
            if fence is None and opening:
                out.append(self._rewrite_prose("".join(block)))
                block, fence = [], opening.group(2)
                out.append(line)
            elif fence is not None:
                out.append(line)
                if line.strip().startswith(fence[0] * len(fence)) and line.strip().strip(fence[0]) == "":
                    fence = None
            else:
                block.append(line)
        out.append(self._rewrite_prose("".join(block)))
        return "".join(out)

    def _rewrite_prose(self, text: str) -> str:
        # Links are found in a copy whose inline code spans are blanked out, so that a link inside code stays as
        # it is while a link whose text is code (`[`lessons/01.ipynb`](../01.ipynb)`) is still found.
        for pattern, replace in ((MD_LINK, self._markdown), (HTML_ATTR, self._html)):
            masked = INLINE_CODE.sub(lambda code: "\0" * len(code.group(0)), text)
            pieces, last = [], 0
            for found in pattern.finditer(masked):
                original = pattern.match(text, found.start(), found.end())
                pieces.append(text[last:found.start()])
                whole = original is not None and original.end() == found.end()
                pieces.append(replace(original) if whole else text[found.start():found.end()])
                last = found.end()
            pieces.append(text[last:])
            text = "".join(pieces)
        return text


# ----------------------------------------------------------------------------------------- page contents


def _toctree(caption: str, entries: list[str]) -> str:
    body = "\n".join(entries)
    return f"\n```{{toctree}}\n:hidden:\n:caption: {caption}\n:maxdepth: 1\n\n{body}\n```\n"


def _navigation(plan: Plan) -> str:
    sections = {"course": "The course", "solutions": "Worked solutions", "reference": "Reference"}
    text = ""
    for section, caption in sections.items():
        entries = []
        for page in plan.pages:
            if page.section != section:
                continue
            entries.append(f"Course overview <{page.docname}>" if page.dest == "lessons/README.md"
                           else page.docname)
        if entries:
            text += _toctree(caption, entries)
    return text


def _markdown_page(plan: Plan, page: Page) -> bytes:
    text = (plan.root / page.source).read_text(encoding="utf-8")
    text = LinkRewriter(plan, page).rewrite(text)
    if page.note:
        text = _after_title(text, page.note)
    if page.section == "home":
        text = text.rstrip("\n") + "\n" + _navigation(plan)
    return text.encode("utf-8")


def _after_title(text: str, note: str) -> str:
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("# "):
            return "".join(lines[:i + 1]) + f"\n{note}\n\n" + "".join(lines[i + 1:])
    return f"{note}\n\n{text}"


def _source_text(source) -> str:
    return "".join(source) if isinstance(source, list) else source


def _notebook_page(plan: Plan, page: Page) -> bytes:
    nb = json.loads((plan.root / page.source).read_text(encoding="utf-8"))
    rewriter = LinkRewriter(plan, page)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            cell["source"] = rewriter.rewrite(_source_text(cell.get("source", "")))
        outputs, replaced = [], False
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                if not replaced:  # one note per cell, however many widget views it saved
                    outputs.append({"output_type": "display_data", "metadata": {},
                                    "data": {"text/markdown": WIDGET_NOTE, "text/plain": WIDGET_NOTE}})
                    replaced = True
                continue
            if "text/markdown" in data:
                data["text/markdown"] = rewriter.rewrite(_source_text(data["text/markdown"]))
            outputs.append(output)
        if "outputs" in cell:
            cell["outputs"] = outputs
    # Saved widget state would make myst-nb load require.js and the widget manager from public CDNs.
    nb.get("metadata", {}).pop("widgets", None)
    if page.note:
        nb["cells"].insert(0, {"cell_type": "markdown", "metadata": {}, "source": page.note})
    return (json.dumps(nb, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


CONF = '''\
# Generated by `python -m lowrank_lab site` (lowrank_lab/site.py): edit that module, not this file.
# The Jupyter Book 1.x stack (Sphinx + myst-nb + sphinx-book-theme), configured to build and show offline.
project = "lowrank-lab"
author = "lowrank-lab authors"
copyright = "lowrank-lab authors (MIT)"
html_title = "lowrank-lab: a course in low-rank fine-tuning"
extensions = ["myst_nb", "sphinx_copybutton", "sphinx-mathjax-offline"]  # the last serves MathJax 3 locally
root_doc = "index"
exclude_patterns = ["_build", ".doctrees", "**.ipynb_checkpoints"]
# Notebooks are shown with the outputs they were saved with: never executed here.
nb_execution_mode = "off"
nb_merge_streams = True
nb_render_markdown_format = "myst"  # math in markdown outputs (lesson 06's tables) is rendered too
nb_ipywidgets_js = {{}}  # no require.js / widget manager from a CDN: saved widget views are replaced by a note
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_dmath_double_inline = True
myst_heading_anchors = 4
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]
html_theme = "sphinx_book_theme"
html_theme_options = {{
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
    "repository_url": {repository!r},
    "use_repository_button": {use_repository!r},
}}
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"  # browsers ask for a favicon; without one every page logs a 404
html_css_files = ["lowrank_lab.css"]
html_context = {{"default_mode": "light"}}  # the theme's light/dark switch starts from a valid mode
html_copy_source = True
html_show_sourcelink = False
html_last_updated_fmt = None
'''


# The site's icon: a tall thin B times a short wide A, the low-rank product LoRA adds to a weight.
FAVICON = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">
<rect x="2" y="4" width="8" height="24" rx="2" fill="#1f77b4"/>
<rect x="13" y="4" width="17" height="8" rx="2" fill="#ff7f0e"/>
</svg>
"""

# A display equation wider than the text column scrolls instead of being cut off.
CSS = """mjx-container[jax="CHTML"][display="true"] { overflow-x: auto; overflow-y: hidden; max-width: 100%; }
"""


def _conf(plan: Plan) -> bytes:
    return CONF.format(repository=plan.repository or "", use_repository=bool(plan.repository)).encode("utf-8")


def site_sources(plan: Plan) -> dict[str, bytes]:
    """Every file of the site's source folder (posix path -> content)."""
    files: dict[str, bytes] = {}
    for page in plan.pages:
        if page.dest.endswith(".ipynb"):
            files[page.dest] = _notebook_page(plan, page)
        else:
            files[page.dest] = _markdown_page(plan, page)
    for asset in sorted(plan.assets):
        files[asset] = (plan.root / asset).read_bytes()
    files["conf.py"] = _conf(plan)
    files["_static/favicon.svg"] = FAVICON.encode("utf-8")
    files["_static/lowrank_lab.css"] = CSS.encode("utf-8")
    return files


def write_sources(plan: Plan, src: Path) -> dict[str, bytes]:
    """Write the site's sources under ``src``, replacing what an earlier build left there."""
    files = site_sources(plan)
    if src.exists():
        shutil.rmtree(src)
    for rel, content in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


# ----------------------------------------------------------------------------------------------- building


def check_requirements() -> None:
    import importlib.util

    missing = [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]
    if importlib.util.find_spec("sphinx-mathjax-offline") is None:
        missing.append("sphinx-mathjax-offline")
    if missing:
        raise SiteError(f"the site needs {', '.join(missing)}: pip install -e \".[site]\"")


def _prepare_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists()):
            raise SiteError(f"{out} exists and is not a site this command built: give --out a new or empty folder")
        shutil.rmtree(out)


@dataclass
class BuildResult:
    out: Path
    pages: list[Page]
    seconds: float
    warnings: list[str]
    missing: list[str]


def build_site(out: Path | str | None = None, src: Path | str | None = None, root: Path | str = ROOT,
               lessons: list[str] | None = None, quiet: bool = True) -> BuildResult:
    """Build the site: sources under ``src`` (default build/site-src), HTML under ``out`` (default build/site).
    Offline; nothing is executed. Raises SiteError when it cannot (the message says why)."""
    check_requirements()
    start = time.perf_counter()
    root = Path(root)
    out = Path(out) if out is not None else root / DEFAULT_OUT
    src = Path(src) if src is not None else root / DEFAULT_SRC
    out, src = out.resolve(), src.resolve()
    if out == src or src in out.parents or out in src.parents:
        raise SiteError(f"--out {out} and the source folder {src} must not contain each other")
    _prepare_out(out)
    plan = plan_site(root, lessons)
    write_sources(plan, src)
    # myst-nb writes notebook output files beside the HTML folder (<html>/../jupyter_execute), so the HTML is
    # built inside the source folder's _build/ and moved to `out` once complete.
    staging = src / "_build" / "html"
    warnings_file = src / "_build" / "warnings.txt"
    staging.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-E", "-d", str(src / "_build" / "doctrees"),
               "-w", str(warnings_file), "-q" if quiet else "-v", str(src), str(staging)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, cwd=src, env=env, capture_output=quiet, text=True)
    warnings = [line for line in warnings_file.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if warnings_file.exists() else []
    if result.returncode != 0:
        detail = (result.stderr or "")[-4000:] if quiet else ""
        raise SiteError(f"sphinx failed (exit {result.returncode}): {' '.join(command)}\n{detail}")
    (staging / MARKER).write_text("built by python -m lowrank_lab site\n", encoding="utf-8")
    (staging / ".nojekyll").write_text("", encoding="utf-8")  # GitHub Pages: serve _static/ and _images/ as is
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(out))
    return BuildResult(out, plan.pages, time.perf_counter() - start, warnings, plan.missing)


# ---------------------------------------------------------------------------------------------------- CLI


def add_site_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "site", help="build the course as a static web site (offline; needs pip install -e \".[site]\")",
        description="Builds a static site from README.md, lessons/README.md, the executed lessons and their "
                    "solutions (saved outputs, never re-executed), the notation page and appendix when present, "
                    "and the studies' tables and figures: Sphinx + myst-nb + sphinx-book-theme (Jupyter Book "
                    "1.x), MathJax served locally. View it with `python -m http.server -d OUT`.")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help=f"folder for the HTML (default {DEFAULT_OUT.as_posix()}/ in the repository); replaced when "
                        "it holds an earlier build, refused when it holds anything else")
    p.add_argument("--src", type=Path, default=None, metavar="DIR",
                   help=f"folder for the generated sources (default {DEFAULT_SRC.as_posix()}/, gitignored)")
    p.add_argument("--lessons", nargs="+", metavar="NN", default=None,
                   help="build only these lessons (numbers, e.g. 01 06) for a quick preview; default all")
    p.add_argument("--verbose", action="store_true", help="show Sphinx's progress")
    p.set_defaults(func=run_site)
    return p


def run_site(args) -> int:
    try:
        result = build_site(out=args.out, src=args.src, lessons=args.lessons, quiet=not args.verbose)
    except SiteError as err:
        print(f"python -m lowrank_lab site: error: {err}", file=sys.stderr)
        return 2
    lessons = sum(page.section == "course" and page.dest.endswith(".ipynb") for page in result.pages)
    print(f"site: {len(result.pages)} pages ({lessons} lessons) in {result.seconds:.0f} s -> {result.out}")
    for line in result.missing:
        print(f"  figure not found, shown as text: {line}")
    if result.warnings:
        print(f"  {len(result.warnings)} Sphinx warning(s), first ones:")
        for line in result.warnings[:10]:
            print(f"    {line}")
    print(f"view it: python -m http.server -d {result.out} 8000  (then open http://127.0.0.1:8000/)")
    return 0
