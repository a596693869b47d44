"""Shared helpers of the browser tests (``-m browser``): Debian's chromium driven by Playwright's Python API.

No browser is downloaded: Playwright is pointed at the system chromium (``executable_path``), started headless
with a fresh profile and with every background service off, so that the only requests it makes are the pages'
own. Without chromium or playwright the tests are skipped with the reason and the command that installs them.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# --headless and no sandbox (root in CI), no GPU, no QUIC; no first-run, background networking, component updates
# or sync: without these chromium tries to reach Google's hosts, which this network refuses.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """The chromium to drive: $LOWRANK_LAB_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    explicit = os.environ.get("LOWRANK_LAB_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e \".[site]\")"
    if chromium_path() is None:
        if os.environ.get("LOWRANK_LAB_CHROMIUM"):
            return f"LOWRANK_LAB_CHROMIUM={os.environ['LOWRANK_LAB_CHROMIUM']} is not a file"
        return ("no chromium on PATH (Debian: apt-get install chromium; or set LOWRANK_LAB_CHROMIUM to a "
                "chromium binary)")
    return None


def require_browser() -> None:
    reason = browser_missing()
    if reason:
        pytest.skip(f"browser test skipped: {reason}")


class Browser:
    """One headless chromium with a fresh profile (a context manager): ``new_page()`` opens a tab."""

    def __init__(self, profile: Path, viewport=(1280, 900)):
        self.profile = profile
        self.viewport = {"width": viewport[0], "height": viewport[1]}

    def __enter__(self):
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.context = self._playwright.chromium.launch_persistent_context(
            str(self.profile), executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
            viewport=self.viewport)
        return self

    def new_page(self):
        return self.context.new_page()

    def __exit__(self, *exc):
        try:
            self.context.close()
        finally:
            self._playwright.stop()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class StaticServer:
    """``python -m http.server -d DIR`` on a free port of 127.0.0.1, in a thread (a context manager)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def __enter__(self):
        handler = functools.partial(_QuietHandler, directory=str(self.directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_port}/"
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def anchors_of(path: Path) -> frozenset:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def local_target(site: Path, base: str, href: str) -> tuple[Path, str] | None:
    """The file under ``site`` that an absolute ``href`` on the local server points at, and its fragment; None
    for a link that leaves the site."""
    if not href.startswith(base):
        return None
    parts = urlsplit(href)
    path = unquote(parts.path.lstrip("/"))
    target = site / path
    if path == "" or path.endswith("/"):
        target = target / "index.html"
    return target, unquote(parts.fragment)


RAW_MATH = re.compile(r"\$\$?[^$\n]+\$\$?")

PAGE_REPORT = r"""async () => {
  // MathJax typesets after the page loads: wait for it, when the page loads MathJax at all.
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  await document.fonts.ready;  // MathJax's own web fonts, served by the site
  for (const img of document.images) { img.loading = "eager"; }
  await Promise.all([...document.images].map(img => img.complete ? null :
      new Promise(done => { img.addEventListener("load", done); img.addEventListener("error", done); })));
  const skip = "pre, code, script, style, textarea, mjx-container, .math";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const texts = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement && !node.parentElement.closest(skip) && node.textContent.includes("$")) {
      texts.push(node.textContent);
    }
  }
  const maths = [...document.querySelectorAll(".math")];
  return {
    title: document.title,
    maths: maths.length,
    rendered: document.querySelectorAll("mjx-container").length,
    unrendered: maths.filter(m => !m.querySelector("mjx-container")).map(m => m.textContent.slice(0, 80)),
    dollar_texts: texts,
    images: document.images.length,
    broken_images: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    links: [...document.querySelectorAll("a[href]")].map(a => a.href),
  };
}"""


def check_page(page, base: str, site: Path, path: str) -> tuple[dict, list[str]]:
    """Load one page of a static site and return what it showed and every problem: console errors, uncaught
    exceptions, failed or non-local requests, math left unrendered or raw ``$...$`` in the text, images that did
    not load, internal links (and their #anchors) that lead nowhere."""
    problems: list[str] = []
    local = (base, "data:", "blob:", "about:")
    handlers = {
        "console": lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None,
        "pageerror": lambda err: problems.append(f"uncaught exception: {err}"),
        # ERR_ABORTED is a request the page itself dropped (the favicon when the next page is opened), not a failure
        "requestfailed": lambda req: None if "ERR_ABORTED" in (req.failure or "") else problems.append(
            f"request failed: {req.url} ({req.failure})"),
        "response": lambda res: problems.append(f"HTTP {res.status}: {res.url}") if res.status >= 400 else None,
        "request": lambda req: None if req.url.startswith(local) else problems.append(f"non-local request: {req.url}"),
    }
    for event, handler in handlers.items():
        page.on(event, handler)
    try:
        page.goto(base + path, wait_until="load")
        report = page.evaluate(PAGE_REPORT)
    finally:
        for event, handler in handlers.items():
            page.remove_listener(event, handler)
    if report["unrendered"]:
        problems.append(f"{len(report['unrendered'])} math element(s) not rendered: {report['unrendered'][:3]}")
    if report["maths"] and not report["rendered"]:
        problems.append("math present but MathJax rendered nothing")
    raw = [m.group(0) for text in report["dollar_texts"] for m in RAW_MATH.finditer(text)]
    if raw:
        problems.append(f"raw $...$ left in the text: {raw[:5]}")
    for src in report["broken_images"]:
        problems.append(f"image did not load: {src}")
    for href in sorted(set(report["links"])):
        target = local_target(site, base, href)
        if target is None:
            continue
        file, fragment = target
        if not file.is_file():
            problems.append(f"link to a missing file: {href}")
        elif fragment and file.suffix == ".html" and fragment not in anchors_of(file):
            problems.append(f"link to a missing anchor: {href}")
    return report, problems


def site_pages(site: Path) -> list[str]:
    """Every HTML page of a built site (theme and source folders aside), as paths relative to its root."""
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                  if not p.relative_to(site).parts[0].startswith("_"))
