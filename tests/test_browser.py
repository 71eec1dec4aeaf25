"""Real-browser test: each notebook runs top to bottom in JupyterLab; its sliders move its plots.

For each notebook in notebooks/ this test
  1. opens it in a real JupyterLab (Debian's Chromium, driven by Playwright),
  2. clicks "Restart the kernel and run all cells" and accepts the dialog,
  3. waits until every code cell has an execution count and the kernel is idle,
  4. fails if a cell shows an error (cells tagged raises-exception may),
  5. saves a screenshot of the whole notebook to artifacts/browser/<notebook>.png,
  6. in every slider panel (bnlib.slider_panel), drags the first slider with the mouse and
     checks that the slider's readout, the figure and the panel's "bn-readout" all change.

JupyterLab serves a temporary copy of notebooks/ (outputs stripped, so nothing stale can pass;
autosave never touches the repository) with a random token, and is always stopped at the end.
Timings are printed and written to artifacts/browser/timings.json; nothing asserts on them.
"""
import json
import os
import runpy
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = Path(runpy.run_path(str(ROOT / "tools" / "chromium.py"))["path"]())  # $CHROMIUM or Debian's
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL_HINT = "apt-get update && apt-get install -y chromium"
# Notebooks that must exist and must show at least one slider panel (by their number).
PANEL_NOTEBOOKS = ["01", "02", "04", "05"]

SERVER_START_TIMEOUT = 120      # s: first start compiles nothing, but a busy 2-core machine is slow
RUN_ALL_TIMEOUT = 240           # s: a notebook runs in <= 20 s headless; the browser adds to it
RENDER_TIMEOUT = 60             # s: widget views and the first ipympl frame after the run
CHANGE_TIMEOUT = 20             # s: readouts and the redrawn figure after a drag
VIEWPORT = {"width": 1366, "height": 768}    # a laptop; the file browser stays open
MAX_SCREENSHOT_HEIGHT = 30000   # px: Chromium cannot render taller pages in one screenshot


def _notebook_params():
    """Every notebook in notebooks/, plus a "missing" entry for each required one not there."""
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    params = [pytest.param(n, id=n) for n in names]
    for number in PANEL_NOTEBOOKS:
        if not any(n.startswith(number + "_") for n in names):
            params.append(pytest.param(f"{number}_missing", id=f"{number}_missing"))
    return params


def _panel_required(name):
    return name[:2] in PANEL_NOTEBOOKS


# ---------------------------------------------------------------------------
# JupyterLab server
# ---------------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(server, method, path):
    req = urllib.request.Request(server["url"] + path, method=method,
                                 headers={"Authorization": f"token {server['token']}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


def _copy_course(tmp):
    """notebooks/ (outputs stripped) and images/ side by side, so ../images/... still works."""
    course = tmp / "course"
    shutil.copytree(NOTEBOOKS, course / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    for path in (course / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)
    if (ROOT / "images").is_dir():
        shutil.copytree(ROOT / "images", course / "images")
    return course / "notebooks"


def _write_lab_settings(settings_dir):
    """The course's JupyterLab defaults (tools/jupyterlab-overrides.json, which tools/start.sh
    installs for learners: comm messages on the main shell, no news), plus for the test: every
    cell rendered (no windowing, no blank space after the last)."""
    settings = json.loads((ROOT / "tools" / "jupyterlab-overrides.json").read_text())
    settings.setdefault("@jupyterlab/notebook-extension:tracker", {}).update(
        windowingMode="none", scrollPastEnd=False)
    for plugin, value in settings.items():
        package, name = plugin.split(":")
        path = settings_dir / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def _start_server(tmp, root_dir, attempt):
    token = secrets.token_hex(24)
    port = _free_port()
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--ServerApp.root_dir={root_dir}",
           f"--LabApp.user_settings_dir={tmp / 'user-settings'}",
           f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
           # window.jupyterapp, as JupyterLab's UI tests (Galata) use it: to read outputs' types
           "--LabApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    env = dict(os.environ, JUPYTER_TOKEN=token,
               JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               IPYTHONDIR=str(tmp / "ipython"), PYDEVD_DISABLE_FILE_VALIDATION="1")
    log = tmp / f"server-{attempt}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
    return proc, {"url": f"http://127.0.0.1:{port}", "token": token, "log": log,
                  "root_dir": root_dir}


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser-lab")
    root_dir = _copy_course(tmp)
    _write_lab_settings(tmp / "user-settings")
    t0 = time.monotonic()
    for attempt in range(3):                   # a port taken between _free_port and bind: retry
        proc, server = _start_server(tmp, root_dir, attempt)
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    _api(server, "GET", "/api/status")
                    break
                except (urllib.error.URLError, ConnectionError, OSError):
                    time.sleep(0.25)
            else:
                if proc.poll() is None:
                    tail = server["log"].read_text(errors="replace")[-3000:]
                    pytest.fail(f"JupyterLab did not answer /api/status within "
                                f"{SERVER_START_TIMEOUT} s. Log:\n{tail}")
                continue                        # exited early: try another port
        except BaseException:
            _stop(proc)
            raise
        break
    else:
        tail = server["log"].read_text(errors="replace")[-3000:]
        pytest.fail(f"JupyterLab exited at start three times. Last log:\n{tail}")
    print(f"\n[browser] JupyterLab up in {time.monotonic() - t0:.1f} s at {server['url']}")
    kernels = _api(server, "GET", "/lab/api/settings/@jupyterlab/apputils-extension:kernels-settings")
    if kernels["settings"].get("commsOverSubshells") != "disabled":
        _stop(proc)
        pytest.fail("JupyterLab did not take the course's settings (tools/jupyterlab-overrides.json): "
                    f"kernels-settings are {kernels['settings']}")
    try:
        yield server
    finally:
        try:                                    # shut kernels down cleanly before the server
            for kernel in _api(server, "GET", "/api/kernels"):
                _api(server, "DELETE", f"/api/kernels/{kernel['id']}")
        except Exception:
            pass
        _stop(proc)


# ---------------------------------------------------------------------------
# Browser
# ---------------------------------------------------------------------------

def test_chromium_is_installed():
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing; install it with: {INSTALL_HINT}"


# The session's one Chromium, the `chromium` fixture, is in tests/conftest.py (test_hub.py uses it
# too: two sync Playwright instances cannot run in one process).


@pytest.fixture(scope="session")
def timings():
    record = {}
    yield record
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "timings.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------
# Page helpers (JavaScript run in the page)
# ---------------------------------------------------------------------------

# The state of notebook `path`: kernel status, and per cell its prompt and the errors it shows.
# An error is an output of type "error" in the cell's model that the page renders as
# application/vnd.jupyter.stderr (the traceback), or any rendered stderr text holding a
# Python traceback (e.g. a widget callback that failed after the cell had run).
STATE_JS = """(path) => {
  const panel = Array.from(window.jupyterapp.shell.widgets('main'))
      .find(w => w.context && w.context.path === path);
  if (!panel) return null;
  const nb = panel.content;
  const indicator = panel.node.querySelector('.jp-Notebook-ExecutionIndicator');
  const cells = nb.widgets.map((cell, i) => {
    const node = cell.node;
    const info = {index: i, type: cell.model.type, prompt: '', errors: [], stderr: [],
                  widgetErrors: 0, inDom: node.isConnected, count: null};
    if (cell.model.type !== 'code') return info;
    const prompt = node.querySelector('.jp-InputPrompt');
    info.prompt = prompt ? prompt.textContent.trim() : '';
    info.count = cell.model.executionCount;
    for (const o of cell.model.outputs.toJSON()) {
      if (o.output_type === 'error') info.errors.push(o.ename + ': ' + o.evalue);
    }
    for (const el of node.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')) {
      info.stderr.push(el.innerText);
    }
    for (const el of node.querySelectorAll('.jp-OutputArea-output')) {
      if (el.innerText.startsWith('Error displaying widget')) info.widgetErrors += 1;
    }
    return info;
  });
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return {status: kernel ? kernel.status : null,
          indicator: indicator ? indicator.getAttribute('data-status') : null, cells: cells};
}"""

# Wait helper: null until the run is over (kernel idle, every code cell numbered) or a cell
# not allowed to fail shows an error; then the state.
RUN_DONE_JS = """([path, allowed]) => {
  const state = (%s)(path);
  if (!state) return null;
  const bad = state.cells.some(c => !allowed.includes(c.index) &&
      (c.errors.length || c.stderr.some(t => t.includes('Traceback (most recent call last)'))));
  const numbered = state.cells.every(c => c.type !== 'code' || c.count !== null);
  return (bad || (state.status === 'idle' && numbered)) ? state : null;
}""" % STATE_JS

# True once the figure inside a slider panel has drawn something (a non-blank pixel).
CANVAS_DRAWN_JS = """(div) => {
  const canvas = div.querySelector('canvas');
  if (!canvas || !canvas.width || !canvas.height) return false;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] && (data[i] < 250 || data[i + 1] < 250 || data[i + 2] < 250)) return true;
  }
  return false;
}"""


def _cell_errors(state, allowed, cell_sources):
    """Messages for each cell (not tagged raises-exception) that shows an error."""
    problems = []
    for c in state["cells"]:
        tracebacks = [t for t in c["stderr"] if "Traceback (most recent call last)" in t]
        if c["index"] in allowed or not (c["errors"] or tracebacks or c["widgetErrors"]):
            continue
        shown = "\n".join(t.strip()[-800:] for t in c["stderr"]) or "(no traceback rendered)"
        head = cell_sources[c["index"]].strip().splitlines()[:2]
        problems.append(f"cell {c['index']} {c['prompt']} starting {head!r}: "
                        f"{'; '.join(c['errors']) or 'error in stderr'}"
                        f"{'; widget failed to display' if c['widgetErrors'] else ''}\n{shown}")
    return problems


def _log_console_errors(page):
    """Error entries of JupyterLab's log console, where the tracebacks of widget callbacks go
    (a callback runs for a comm message, not for a cell, so no cell shows its error)."""
    item = page.locator(".jp-LogConsoleStatusItem:not(.lm-mod-hidden)")
    if item.count() == 0:                      # hidden while nothing was logged
        return []
    item.first.click()
    entries = page.locator(".jp-LogConsolePanel .jp-OutputArea-child")
    _poll(lambda: entries.count() > 0, 10)
    return page.evaluate("""() => Array.from(document.querySelectorAll(
        '.jp-LogConsolePanel .jp-OutputArea-child')).filter(
        c => c.querySelector('[data-log-level="error"], [data-log-level="critical"]')).map(
        c => c.innerText)""")


# The kernel of notebook `path`: idle and connected, or null.
KERNEL_SETTLED_JS = """(path) => {
  const panel = Array.from(window.jupyterapp.shell.widgets('main'))
      .find(w => w.context && w.context.path === path);
  const kernel = panel && panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle' && kernel.connectionStatus === 'connected';
}"""

# Restart the kernel of notebook `path` (what the Kernel menu's Restart does once confirmed);
# resolves when the kernel has restarted.
RESTART_JS = """async (path) => {
  const panel = Array.from(window.jupyterapp.shell.widgets('main'))
      .find(w => w.context && w.context.path === path);
  await panel.sessionContext.session.kernel.restart();
}"""


def _wait_kernel_settled(page, notebook, settle_s=1.5):
    """Wait until the notebook's kernel is idle and connected, and stays so for settle_s."""
    deadline = time.monotonic() + 90
    while True:
        page.wait_for_function(KERNEL_SETTLED_JS, arg=notebook, polling=100,
                               timeout=max(1, deadline - time.monotonic()) * 1000)
        page.wait_for_timeout(settle_s * 1000)
        if page.evaluate(KERNEL_SETTLED_JS, notebook):
            return


def _poll(fn, timeout, interval=0.2):
    """fn() until truthy or timeout; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def _full_page_screenshot(page, path):
    """Grow the viewport until the notebook needs no scrolling, then screenshot the page."""
    outer = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer").first
    need = outer.evaluate("""(el) => {
        const r = el.getBoundingClientRect();
        return Math.ceil(el.scrollHeight + r.top + (window.innerHeight - r.bottom)) + 20; }""")
    height = min(max(need, VIEWPORT["height"]), MAX_SCREENSHOT_HEIGHT)
    page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
    try:
        outer.page.wait_for_function(
            "(el) => el.scrollHeight <= el.clientHeight + 2 || window.innerHeight >= %d"
            % MAX_SCREENSHOT_HEIGHT, arg=outer.element_handle(), timeout=10_000)
        outer.evaluate("(el) => { el.scrollTop = 0; }")
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(VIEWPORT)
    return height


# Outputs that do not fit their cell: [(code cell index, px needed, px there)].
TOO_WIDE_JS = """(sel) => {
    const found = [];
    document.querySelectorAll(sel + ' .jp-CodeCell').forEach((cell, i) => {
        cell.querySelectorAll('.jp-OutputArea-output').forEach(o => {
            const needed = Math.max(o.scrollWidth, ...Array.from(o.querySelectorAll('canvas, img'),
                                    e => e.getBoundingClientRect().right - o.getBoundingClientRect().left));
            if (needed > o.clientWidth + 1) found.push([i, Math.round(needed), o.clientWidth]);
        });
    });
    return found;
}"""


def _drag_first_slider(page, name, k, panel, timing):
    """Drag panel k's first slider with the mouse; assert readout, figure and bn-readout change."""
    from playwright.sync_api import expect

    where = f"{name}: slider panel {k}"
    slider = panel.locator(".widget-slider").first
    label = slider.locator(".widget-label").inner_text().strip() or "(no description)"
    where += f" (slider {label!r})"
    readout = slider.locator(".widget-readout")
    bn_readout = panel.locator(".bn-readout")
    has_bn_readout = bn_readout.count() > 0
    canvas = panel.locator(".jupyter-matplotlib-canvas-div").first
    assert canvas.count(), f"{where}: no ipympl figure canvas in the panel"

    canvas.scroll_into_view_if_needed()
    drawn = _poll(lambda: canvas.evaluate(CANVAS_DRAWN_JS), RENDER_TIMEOUT)
    assert drawn, f"{where}: the figure stayed blank for {RENDER_TIMEOUT} s"
    # The first frames may arrive in pieces: take "before" once two screenshots agree.
    before = canvas.screenshot()
    for _ in range(20):
        again = canvas.screenshot()
        if again == before:
            break
        before = again
    (ARTIFACTS / f"{name}.panel{k}.before.png").write_bytes(before)
    readout_before = readout.inner_text().strip()
    bn_before = bn_readout.first.inner_text().strip() if has_bn_readout else None

    handle = slider.locator(".noUi-handle").first
    track = slider.locator(".noUi-target").first
    handle.scroll_into_view_if_needed()
    hb, tb = handle.bounding_box(), track.bounding_box()
    assert hb and tb, f"{where}: the slider handle is not visible"
    x0, y0 = hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2
    vertical = "noUi-vertical" in (track.get_attribute("class") or "")
    if vertical:   # noUiSlider's vertical sliders put the maximum at the top
        frac = (y0 - tb["y"]) / tb["height"]
        x1, y1 = x0, tb["y"] + tb["height"] * (0.95 if frac < 0.5 else 0.05)
    else:          # to the far end away from the handle: at least 45% of the track
        frac = (x0 - tb["x"]) / tb["width"]
        x1, y1 = tb["x"] + tb["width"] * (0.95 if frac < 0.5 else 0.05), y0
    t0 = time.monotonic()
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=15)
    page.mouse.up()

    expect(readout, f"{where}: the slider's readout did not change from {readout_before!r} "
                    f"after dragging the handle from x={x0:.0f} to x={x1:.0f}").not_to_have_text(
        readout_before, timeout=CHANGE_TIMEOUT * 1000)
    readout_after = readout.inner_text().strip()
    after = _poll(lambda: (lambda shot: shot if shot != before else None)(canvas.screenshot()),
                  CHANGE_TIMEOUT)
    timing[f"panel{k}_redraw_s"] = round(time.monotonic() - t0, 2)
    assert after, (f"{where}: the figure did not change within {CHANGE_TIMEOUT} s after the "
                   f"slider went from {readout_before} to {readout_after}")
    for _ in range(20):                 # keep the final frame, not one on the way there
        again = canvas.screenshot()
        if again == after:
            break
        after = again
    (ARTIFACTS / f"{name}.panel{k}.after.png").write_bytes(after)
    result = {"slider": label, "readout": [readout_before, readout_after]}
    if has_bn_readout:
        expect(bn_readout.first, f"{where}: the panel's bn-readout stayed {bn_before!r} while the "
                                 f"slider went from {readout_before} to {readout_after}"
               ).not_to_have_text(bn_before, timeout=CHANGE_TIMEOUT * 1000)
        result["bn_readout"] = [bn_before, bn_readout.first.inner_text().strip()]
    panel.screenshot(path=str(ARTIFACTS / f"{name}.panel{k}.png"))    # the whole panel, after
    if os.environ.get("BN_SLIDER_FPS"):           # tools/bench_browser.py: measured, never asserted
        result["fps"] = _slider_fps(page, panel, slider, canvas)
    return result


# Record when the panel's figure canvas is painted and when the mouse moves (page clock, ms).
FPS_HOOK_JS = """(canvasDiv) => {
    const canvases = new Set(canvasDiv.querySelectorAll('canvas'));
    window.__bnFrames = []; window.__bnMoves = [];
    if (!window.__bnHooked) {
        window.__bnHooked = true;
        const draw = CanvasRenderingContext2D.prototype.drawImage;
        CanvasRenderingContext2D.prototype.drawImage = function (...args) {
            if (window.__bnCanvases && window.__bnCanvases.has(this.canvas)) window.__bnFrames.push(performance.now());
            return draw.apply(this, args);
        };
        document.addEventListener('pointermove', () => window.__bnMoves.push(performance.now()), true);
    }
    window.__bnCanvases = canvases;
}"""


def _slider_fps(page, panel, slider, canvas, seconds=3.0, every_ms=16):
    """Drag the slider back and forth with a mouse event every `every_ms` ms for `seconds`;
    return the canvas's new frames per second and the time from an input event to the next
    new frame (median and 90th percentile, ms)."""
    import statistics
    canvas.evaluate(FPS_HOOK_JS)
    track = slider.locator(".noUi-target").first.bounding_box()
    handle = slider.locator(".noUi-handle").first.bounding_box()
    y = handle["y"] + handle["height"] / 2
    left, right = track["x"] + 0.1 * track["width"], track["x"] + 0.9 * track["width"]
    page.mouse.move(handle["x"] + handle["width"] / 2, y)
    page.mouse.down()
    n = int(seconds * 1000 / every_ms)
    t0 = time.monotonic()
    for i in range(n):
        phase = (i % 60) / 30                       # 60 events left to right and back
        x = left + (right - left) * (phase if phase <= 1 else 2 - phase)
        page.mouse.move(x, y)
        delay = t0 + (i + 1) * every_ms / 1000 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    page.mouse.up()
    time.sleep(0.5)
    frames, moves = page.evaluate("() => [window.__bnFrames, window.__bnMoves]")
    span = (moves[-1] - moves[0]) / 1000 if len(moves) > 1 else seconds
    during = [f for f in frames if moves and moves[0] <= f <= moves[-1] + every_ms]
    lags = []
    for m in moves:
        nxt = next((f for f in frames if f > m), None)
        if nxt is not None:
            lags.append(nxt - m)
    q = statistics.quantiles(lags, n=10) if len(lags) >= 10 else [float("nan")] * 9
    return {"events": len(moves), "frames": len(during), "fps": round(len(during) / span, 1),
            "lag_median_ms": round(statistics.median(lags), 1) if lags else None,
            "lag_p90_ms": round(q[8], 1)}


# ---------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", _notebook_params())
def test_notebook_runs_in_jupyterlab_and_its_sliders_move_the_plots(
        name, lab_server, chromium, timings, record_property):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    path = NOTEBOOKS / f"{name}.ipynb"
    if not path.exists():
        pytest.fail(f"no notebooks/{name[:2]}_*.ipynb: notebooks {', '.join(PANEL_NOTEBOOKS)} "
                    f"must exist and show a slider panel")
    nb = nbformat.read(path, as_version=4)
    allowed = [i for i, c in enumerate(nb.cells)
               if "raises-exception" in c.metadata.get("tags", [])]
    sources = [c.source for c in nb.cells]
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for stale in ARTIFACTS.glob(f"{name}.*png"):
        stale.unlink()
    timing = {}
    timings[name] = timing
    t_start = time.monotonic()

    context = chromium.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page_errors = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        # 1. Open the notebook, in a workspace of its own so no other notebook is restored.
        page.goto(f"{lab_server['url']}/lab/workspaces/{name}/tree/{name}.ipynb"
                  f"?reset&token={lab_server['token']}")
        page.wait_for_function(
            "(p) => window.jupyterapp && Array.from(window.jupyterapp.shell.widgets('main'))"
            ".some(w => w.context && w.context.path === p && w.context.isReady)",
            arg=path.name, timeout=90_000)
        panel_sel = ".jp-NotebookPanel:not(.lm-mod-hidden)"
        page.wait_for_selector(f'{panel_sel} .jp-Notebook-ExecutionIndicator[data-status="idle"]',
                               timeout=90_000)
        timing["open_s"] = round(time.monotonic() - t_start, 2)
        page.evaluate("() => window.jupyterapp.commands.execute('filebrowser:activate')")

        # 2. Restart the kernel, let its new connection settle, then Run All (menu Run > Run All
        #    Cells). Not the one-step "restart and run all": JupyterLab reconnects its websocket
        #    during a restart, and execute requests sent on the old socket in that window are
        #    lost (seen here: the server then logs "Replacing stale connection" and a struct.error,
        #    and the cells wait forever).
        _wait_kernel_settled(page, path.name)
        page.evaluate(RESTART_JS, path.name)
        _wait_kernel_settled(page, path.name)
        t0 = time.monotonic()
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

        # 3. Wait for the end of the run (or the first error that stops it).
        try:
            state = page.wait_for_function(RUN_DONE_JS, arg=[path.name, allowed], polling=250,
                                           timeout=RUN_ALL_TIMEOUT * 1000).json_value()
        except PlaywrightTimeout:
            state = page.evaluate(STATE_JS, path.name)
            waiting = [f"cell {c['index']} {c['prompt']}" for c in (state or {}).get("cells", [])
                       if c["type"] == "code" and c["count"] is None]
            page.screenshot(path=str(ARTIFACTS / f"{name}.timeout.png"))
            pytest.fail(f"{name}: the run did not finish within {RUN_ALL_TIMEOUT} s; kernel "
                        f"{(state or {}).get('status')}, cells without an execution count: "
                        f"{waiting[:10]}; page errors: {page_errors[:3]}; the server's log ends:\n"
                        + lab_server["log"].read_text(errors="replace")[-2000:])
        timing["run_all_s"] = round(time.monotonic() - t0, 2)
        assert len(state["cells"]) == len(nb.cells), (
            f"{name}: JupyterLab shows {len(state['cells'])} cells, the file has {len(nb.cells)}")
        assert all(c["inDom"] for c in state["cells"]), (
            f"{name}: some cells are not rendered (windowing mode is not 'none')")

        # 4. No cell shows an error, except the ones tagged raises-exception.
        problems = _cell_errors(state, allowed, sources)
        assert not problems, f"{name}: cells show errors:\n" + "\n\n".join(problems)
        counts = [c["count"] for c in state["cells"] if c["type"] == "code"]
        assert len(counts) == n_code and all(a < b for a, b in zip(counts, counts[1:])), (
            f"{name}: execution counts {counts} are not one run top to bottom")

        # 5. Every slider panel (and every widget) rendered; then the whole notebook's picture.
        t0 = time.monotonic()
        panels = page.locator(f"{panel_sel} .bn-slider-panel")
        expected = sum("slider_panel(" in c.source for c in nb.cells if c.cell_type == "code")
        if _panel_required(name):
            expected = max(expected, 1)
        ok = _poll(lambda: panels.count() >= expected and
                   panels.locator(".jupyter-matplotlib-canvas-div canvas").count() >= expected,
                   RENDER_TIMEOUT)
        assert ok, (f"{name}: {panels.count()} slider panels (with an ipympl figure) rendered "
                    f"within {RENDER_TIMEOUT} s, expected {expected}"
                    + (" (this notebook must show a bnlib.slider_panel)"
                       if _panel_required(name) else ""))
        for i in range(panels.count()):         # let every figure draw before the picture
            div = panels.nth(i).locator(".jupyter-matplotlib-canvas-div").first
            div.scroll_into_view_if_needed()
            _poll(lambda: div.evaluate(CANVAS_DRAWN_JS), RENDER_TIMEOUT)
        timing["render_s"] = round(time.monotonic() - t0, 2)
        wide = page.evaluate(TOO_WIDE_JS, panel_sel)
        assert not wide, (f"{name}: outputs wider than their cell in a {VIEWPORT['width']} x "
                          f"{VIEWPORT['height']} window with the file browser open (code cell index, "
                          f"width needed, width there): {wide}")
        t0 = time.monotonic()
        height = _full_page_screenshot(page, ARTIFACTS / f"{name}.png")
        timing["screenshot_s"] = round(time.monotonic() - t0, 2)
        timing["screenshot_height_px"] = height

        # 6. Drag each panel's first slider.
        dragged = []
        try:
            for k in range(panels.count()):
                panel = panels.nth(k)
                if panel.locator(".widget-slider").count() == 0:
                    continue
                dragged.append(_drag_first_slider(page, name, k, panel, timing))
        except AssertionError as exc:          # say why, if a callback failed
            logged = _log_console_errors(page)
            if logged:
                raise AssertionError(f"{exc}\nJupyterLab's log console shows:\n"
                                     f"{logged[-1].strip()[-800:]}") from None
            raise
        if _panel_required(name):
            assert dragged, f"{name}: none of its {panels.count()} slider panels has a slider"
        timing["panels"] = panels.count()
        timing["dragged"] = dragged

        # No callback failed during the drags: no new error under a cell, none in the log console.
        state = page.evaluate(STATE_JS, path.name)
        problems = _cell_errors(state, allowed, sources)
        assert not problems, f"{name}: errors after dragging the sliders:\n" + "\n\n".join(problems)
        logged = _log_console_errors(page)
        assert not logged, (f"{name}: a widget callback failed; JupyterLab's log console shows:\n"
                            + "\n".join(t.strip()[-1500:] for t in logged))
    except BaseException:
        try:
            page.set_viewport_size(VIEWPORT)
            page.screenshot(path=str(ARTIFACTS / f"{name}.failure.png"))
        except Exception:
            pass
        raise
    finally:
        timing["total_s"] = round(time.monotonic() - t_start, 2)
        if page_errors:
            timing["page_errors"] = page_errors[:5]
        record_property("browser_timings", json.dumps(timing))
        print(f"\n[browser] {name}: {json.dumps(timing)}")
        context.close()
        try:                                   # free the kernel's memory for the next notebook
            for s in _api(lab_server, "GET", "/api/sessions"):
                if s.get("path", "").endswith(path.name):
                    _api(lab_server, "DELETE", f"/api/sessions/{s['id']}")
        except Exception:
            pass


# ---------------------------------------------------------------------------
# Slides: each notebook presents as a reveal.js slideshow (jupyterlab-rise)
# ---------------------------------------------------------------------------

SLIDES_JS = """() => {
    const frame = document.querySelector('iframe[src*="rise"]');
    const doc = frame && frame.contentDocument;
    if (!doc) return null;
    return {slides: doc.querySelectorAll('.reveal .slides > section').length,
            ready: !!doc.querySelector('.reveal.ready')};
}"""


@pytest.mark.parametrize("name", [p.stem for p in sorted(NOTEBOOKS.glob("*.ipynb"))])
def test_notebook_opens_as_slides_in_jupyterlab(name, lab_server, chromium):
    n_slides = sum(c.metadata.get("slideshow", {}).get("slide_type") == "slide"
                   for c in nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).cells)
    assert n_slides >= 3, f"{name}: only {n_slides} cells start a slide (run tools/slides.py)"
    context = chromium.new_context(viewport=VIEWPORT)
    page = context.new_page()
    try:
        page.goto(f"{lab_server['url']}/lab/workspaces/slides-{name}/tree/{name}.ipynb"
                  f"?reset&token={lab_server['token']}")
        page.wait_for_function(
            "(p) => window.jupyterapp && Array.from(window.jupyterapp.shell.widgets('main'))"
            ".some(w => w.context && w.context.path === p && w.context.isReady)",
            arg=f"{name}.ipynb", timeout=90_000)
        page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.click()
        page.evaluate("() => window.jupyterapp.commands.execute('RISE:preview')")
        state = page.wait_for_function(
            f"() => {{ const s = ({SLIDES_JS})(); return s && s.ready && s.slides > 0 && s; }}",
            polling=250, timeout=90_000).json_value()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(1500)             # let reveal.js finish its slide transition
        page.screenshot(path=str(ARTIFACTS / f"{name}.slides.png"))
        assert state["slides"] >= n_slides, f"{name}: {state['slides']} slides for {n_slides} slide cells"
    finally:
        context.close()
