"""The lessons' ipywidgets explorers, drawn by a real JupyterLab in headless chromium (``-m browser``).

nbmake runs the kernel only, and under it ``widgets_enabled()`` is off, so no explorer is ever built there. Here a
``jupyter lab`` server runs on 127.0.0.1 with a token and fresh config, data, runtime, settings and workspace
folders, and without CI's variables, so the kernel is a student's. Each lesson whose code builds an explorer
(``lowrank_lab.plotting.explorer``) is copied into a temporary folder, opened in JupyterLab at smoke scale and run
(every cell, as "Run All Cells" does); then every explorer must be on the page with its controls, no "Error
displaying widget", no cell ending in an error, exactly one figure in its cell (the default view, never a static
copy above an interactive one), and moving each of its controls in turn (a slider one step, another dropdown
option, one method less in a multi-select) must redraw that figure in place without rewriting any saved figure.
Figures go to a temporary ``$LOWRANK_LAB_RUNS``, never to lessons/runs/. With ``-s`` each lesson prints what it saw.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser_checks import Browser, require_browser

from lowrank_lab.plotting import EXPLORER_CLASS

ROOT = Path(__file__).resolve().parents[1]
# Lessons that build an explorer (lowrank_lab.plotting.explorer, or ipywidgets directly): found in their code, so a
# lesson that gains or loses one is followed.
EXPLORER_LESSONS = sorted(
    p.name for p in (ROOT / "lessons").glob("[0-9][0-9]_*.ipynb")
    if any(("import ipywidgets" in "".join(c.get("source", "")) or "plotting.explorer(" in "".join(c.get("source", "")))
           for c in json.loads(p.read_text())["cells"]
           if c.get("cell_type") == "code"))
RUN_TIMEOUT_S = 300  # one lesson at smoke scale, kernel start included
REDRAW_TIMEOUT_S = 90  # one redraw after a control moved
HEADLESS_VARIABLES = ("CI", "PYTEST_CURRENT_TEST", "LOWRANK_LAB_NO_WIDGETS")  # they turn widgets_enabled() off
CONTROLS = (".widget-slider, .widget-dropdown, .widget-select, .widget-select-multiple, .widget-toggle-buttons, "
            ".widget-checkbox, .widget-radio, .widget-text")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, method: str = "GET") -> bytes:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory):
    """A headless JupyterLab on 127.0.0.1 serving copies of the explorer lessons: (base URL, token, folder)."""
    require_browser()
    pytest.importorskip("jupyterlab", reason="JupyterLab is not installed: pip install -e \".[lessons]\"")
    pytest.importorskip("ipywidgets", reason="ipywidgets is not installed: pip install -e \".[lessons]\"")
    tmp = tmp_path_factory.mktemp("jupyterlab")
    notebooks = tmp / "notebooks"
    notebooks.mkdir()
    for name in EXPLORER_LESSONS:
        shutil.copy2(ROOT / "lessons" / name, notebooks / name)
    settings = tmp / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                          "checkForUpdates": False}))
    token = os.urandom(16).hex()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in HEADLESS_VARIABLES}
    env.update({"LOWRANK_LAB_SCALE": "smoke", "LOWRANK_LAB_RUNS": str(tmp / "runs"),
                "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
                "JUPYTER_DATA_DIR": str(tmp / "data"), "IPYTHONDIR": str(tmp / "ipython"),
                "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces")})
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={notebooks}", "--ServerApp.allow_root=True",
               "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"]
    log = (tmp / "jupyterlab.log").open("w")
    server = subprocess.Popen(command, cwd=notebooks, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        try:
            _get(f"{base}api/status?token={token}")
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"jupyter lab did not start:\n{(tmp / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(0.5)
    try:
        yield base, token, tmp
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(jupyter_lab):
    _, _, tmp = jupyter_lab
    with Browser(tmp / "profile", viewport=(1400, 1000)) as chromium:
        yield chromium


RUN_ALL = """async (timeoutMs) => {
  const panel = window.jupyterapp.shell.currentWidget;
  await panel.sessionContext.ready;
  const done = window.jupyterapp.commands.execute("notebook:run-all-cells");
  const timer = new Promise(finish => setTimeout(() => finish("timeout"), timeoutMs));
  if (await Promise.race([done, timer]) === "timeout") {
    const running = panel.content.widgets.findIndex(cell => cell.model.type === "code" &&
        (cell.promptNode ? cell.promptNode.textContent : "").includes("*"));
    const source = running >= 0 ? panel.content.widgets[running].model.sharedModel.getSource().slice(0, 300) : "";
    return {timeout: true, cell: running, source: source};
  }
  const errors = [];
  for (const cell of panel.content.model.cells) {
    if (cell.type !== "code") continue;
    for (let i = 0; i < cell.outputs.length; i++) {
      const output = cell.outputs.get(i);
      if (output.type === "error") {
        const json = output.toJSON();
        errors.push(`${json.ename}: ${json.evalue}`);
      }
    }
  }
  return {timeout: false, errors: errors, id: panel.id};
}"""

NOTEBOOK_READY = """() => {
  const app = window.jupyterapp;
  const panel = app && app.shell.currentWidget;
  return !!(panel && panel.sessionContext && panel.content && panel.content.model && panel.context.isReady);
}"""


def _figure(cell) -> str | None:
    """The explorer's current figure: the src of the image in its cell's outputs (plotting.explorer draws one)."""
    images = cell.locator(".jp-OutputArea-output img")
    return images.last.get_attribute("src") if images.count() else None


def _move(control) -> str:
    """Move one control and say how."""
    classes = control.get_attribute("class") or ""
    if "widget-slider" in classes:
        readout = control.locator(".widget-readout")
        before = readout.inner_text() if readout.count() else None
        handle = control.locator(".noUi-handle").first
        handle.focus()
        handle.press("ArrowRight")
        if readout.count() and readout.inner_text() == before:  # at its maximum: one step down instead
            handle.press("ArrowLeft")
        return f"slider {before} -> {readout.inner_text() if readout.count() else '?'}"
    select = control.locator("select").first
    options = select.evaluate("s => [...s.options].map(o => o.text)")
    if "widget-select-multiple" in classes:
        chosen = options[:-1] if len(options) > 1 else options
        select.select_option(label=chosen)
        return f"multi-select: {len(chosen)} of {len(options)}"
    current = select.evaluate("s => s.selectedIndex")
    target = (current + 1) % len(options)
    select.select_option(index=target)
    return f"dropdown {options[current]!r} -> {options[target]!r}"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.browser
@pytest.mark.parametrize("lesson", EXPLORER_LESSONS)
def test_explorer_renders_and_redraws_in_jupyterlab(jupyter_lab, browser, lesson):
    base, token, tmp = jupyter_lab
    page = browser.new_page()
    console_errors = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("response", lambda res: console_errors.append(f"HTTP {res.status} {res.url.split('?')[0]}")
            if res.status >= 400 else None)
    start = time.monotonic()
    try:
        page.goto(f"{base}lab/tree/{lesson}?reset&token={token}")  # reset: only this notebook open
        page.wait_for_function(NOTEBOOK_READY, timeout=120_000)
        run = page.evaluate(RUN_ALL, RUN_TIMEOUT_S * 1000)
        ran = time.monotonic() - start
        assert not run["timeout"], (f"{lesson}: not done after {RUN_TIMEOUT_S} s; cell {run['cell']} still "
                                    f"running:\n{run['source']}")
        assert not run["errors"], f"{lesson}: cells ended in errors in JupyterLab: {run['errors']}"
        notebook = page.locator(f"[id='{run['id']}'] .jp-Notebook")
        boxes = notebook.locator(f".{EXPLORER_CLASS}")
        assert boxes.count() >= 1, (f"{lesson}: no explorer on the page after running every cell "
                                    "(is widgets_enabled() off in a live kernel?)")
        shown = notebook.inner_text()
        error = shown.find("Error displaying widget")
        assert error < 0, f"{lesson}: {shown[error:error + 200]}"
        report = []
        saved = _snapshot(tmp / "runs")
        for i in range(boxes.count()):
            box = boxes.nth(i)
            box.scroll_into_view_if_needed()
            controls = box.locator(CONTROLS)
            assert controls.count() >= 1 and controls.first.is_visible(), f"{lesson}: explorer {i} has no control"
            cell = box.locator("xpath=ancestor::div[contains(concat(' ', @class, ' '), ' jp-CodeCell ')][1]")
            figures = cell.locator(".jp-OutputArea-output img").count()
            assert figures == 1, f"{lesson}: explorer {i} draws {figures} figures in its cell (one: the default view)"
            kinds = [(controls.nth(j).get_attribute("class") or "").split()[-1] for j in range(controls.count())]
            moves = []
            for j in range(controls.count()):  # every control, one at a time, must redraw the figure
                before = _figure(cell)
                assert before, f"{lesson}: explorer {i} shows no figure"
                how = _move(controls.nth(j))
                deadline = time.monotonic() + REDRAW_TIMEOUT_S
                after = _figure(cell)
                while (after is None or after == before) and time.monotonic() < deadline:
                    page.wait_for_timeout(250)
                    after = _figure(cell)
                assert after and after != before, f"{lesson}: explorer {i}: the figure did not change after {how}"
                moves.append(how)
            report.append(f"explorer {i} ({', '.join(kinds)}): redrawn after each of {'; '.join(moves)}; "
                          f"{figures} figure(s) in its cell before moving")
        now = _snapshot(tmp / "runs")  # a callback never overwrites a saved figure: it shows the default view
        rewritten = sorted(k for k in saved if now.get(k) != saved[k])
        assert not rewritten, f"{lesson}: moving a control rewrote {rewritten}"
        print(f"\n{lesson}: ran every cell in {ran:.0f} s; " + "; ".join(report)
              + (f"; {len(console_errors)} console error(s): {console_errors[:3]}" if console_errors else ""))
    finally:
        page.close()
        for kernel in json.loads(_get(f"{base}api/kernels?token={token}")):  # the next lesson starts alone
            _get(f"{base}api/kernels/{kernel['id']}?token={token}", method="DELETE")
