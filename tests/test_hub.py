"""A classroom on one JupyterHub: K students at once, each in a Chromium page of their own.

The hub is the real thing: jupyterhub with configurable-http-proxy (npm), both on 127.0.0.1 on
free ports, configured by the committed tools/hub/jupyterhub_config.py (and so
tools/hub/course_config.py) plus a temporary file that adds only the ports, an API token for the
test, and window.jupyterapp for the page helpers (tools/hub/local_hub.py starts and stops it). K students (BN_HUB_STUDENTS, default 3) then
  1. log in at once (K browser contexts, the hub spawns their servers side by side),
  2. each open notebook 02 in their own ~/bn-course/ (the student edition, copied at first login),
  3. press Run All at the same moment; every cell runs with no error,
  4. each drag 02's first slider and see the readout and the figure change,
  5. keep their work apart: one student's saved edit is in their file only, their own server
     serves the others their own unedited copies, and one student's browser cannot open another's
     server; a second start of a server does not copy the course over the student's work.
Every server has the course's JupyterLab settings and its kernels the pinned numerics.

The browser helpers (notebook state, slider drag, figure change) are tests/test_browser.py's.
The hub, the proxy, every student's server and every kernel carry a marker in their environment;
at the end the hub is stopped (SIGTERM: it stops the servers and the proxy), anything still
marked is killed by process group, and the test fails if the hub left any marked process. Timings (log in, Run All, redraw; per student) are printed and
written to artifacts/hub/timings.json; nothing asserts on them.

Marked `browser` (so the contributors' fast loop skips it) and `hub` (`pytest -m hub` runs it alone).
"""
import importlib.util
import json
import os
import re
import secrets
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from test_browser import (RENDER_TIMEOUT, RUN_ALL_TIMEOUT, RUN_DONE_JS, STATE_JS,
                          VIEWPORT, _cell_errors, _drag_first_slider, _poll,
                          _wait_kernel_settled)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "hub"
STUDENTS = [f"student{i + 1}" for i in range(int(os.environ.get("BN_HUB_STUDENTS", "3")))]
NOTEBOOK = "02_sigmoid_linear_region"
COURSE = "bn-course"                         # course_config.py's folder in each home
NB_PATH = f"{COURSE}/notebooks/{NOTEBOOK}.ipynb"
OVERRIDES = json.loads((ROOT / "tools" / "jupyterlab-overrides.json").read_text())
SPAWN_TIMEOUT = 300         # s: K servers starting at once, then JupyterLab loading in each page


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pinned_numerics = _load("pinned_numerics", ROOT / "tools" / "pinned_numerics.py")
local_hub = _load("local_hub", ROOT / "tools" / "hub" / "local_hub.py")


# ---------------------------------------------------------------------------
# The hub (tools/hub/local_hub.py starts it and stops everything it started)
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    why = local_hub.missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    running = local_hub.LocalHub(tmp_path_factory.mktemp("hub"),
                                 scopes=["admin:users", "admin:servers", "servers"])
    with running:
        yield running
    assert not running.leftovers, ("stopping the hub left these running (now killed):\n"
                                   + "\n".join(running.leftovers) + f"\nHub log:\n{running.log_tail()}")


# ---------------------------------------------------------------------------
# Students
# ---------------------------------------------------------------------------

def _home(hub, student):
    return hub.homes / student


def _panel_js(body):
    """JavaScript (path, ...) that runs `body` with `panel`, the notebook panel of `path`."""
    return ("async ([path, arg]) => { const panel = Array.from(window.jupyterapp.shell.widgets('main'))"
            ".find(w => w.context && w.context.path === path); " + body + " }")


def _wait_run_all(pages, allowed, timing):
    """Poll every page until its Run All is over; record each one's time. Returns the states."""
    states, t0 = {}, time.monotonic()
    deadline = t0 + RUN_ALL_TIMEOUT
    while len(states) < len(pages) and time.monotonic() < deadline:
        for student, page in pages.items():
            if student not in states:
                state = page.evaluate(RUN_DONE_JS, [NB_PATH, allowed])
                if state:
                    states[student] = state
                    timing[student]["run_all_s"] = round(time.monotonic() - t0, 1)
        time.sleep(0.5)
    return states


def test_students_at_once_run_the_notebook_drag_a_slider_and_keep_their_work_apart(hub, chromium):
    from playwright.sync_api import expect

    nb = nbformat.read(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb", as_version=4)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ROOT / "artifacts" / "browser").mkdir(parents=True, exist_ok=True)   # _drag_first_slider's
    timing = {s: {} for s in STUDENTS}
    contexts, pages, errors = {}, {}, {s: [] for s in STUDENTS}
    url = hub.url
    try:
        # 1. Everyone logs in at once: the hub spawns K servers side by side.
        t0 = time.monotonic()
        for student in STUDENTS:
            contexts[student] = chromium.new_context(viewport=VIEWPORT)
            page = pages[student] = contexts[student].new_page()
            page.set_default_timeout(60_000)
            page.on("pageerror", lambda e, s=student: errors[s].append(str(e)))
            page.goto(f"{url}/hub/login")
            page.fill("#username_input", student)
            page.fill("#password_input", hub.password)
            page.click("#login_submit")
        for student, page in pages.items():
            page.wait_for_url(re.compile(f"/user/{student}/lab"), timeout=SPAWN_TIMEOUT * 1000)
            page.wait_for_function("() => !!window.jupyterapp", timeout=SPAWN_TIMEOUT * 1000)
            timing[student]["login_to_lab_s"] = round(time.monotonic() - t0, 1)
        assert "copied the student edition" in hub.log_tail(10**7)

        # Each home has the student edition (no solutions), each server the course's settings.
        for student, page in pages.items():
            copy = _home(hub, student) / NB_PATH
            assert copy.exists(), f"{student}: no {NB_PATH} in the home"
            cells = nbformat.read(copy, as_version=4).cells
            assert not [c for c in cells if "solution" in c.metadata.get("tags", [])], (
                f"{student} got the instructor's edition (solution cells)")
            for plugin, values in OVERRIDES.items():   # overrides.json: the schema's defaults
                r = page.request.get(f"{url}/user/{student}/lab/api/settings/{plugin}")
                assert r.ok, f"{student}: settings API answered {r.status} for {plugin}"
                props = r.json()["schema"]["properties"]
                got = {key: props[key].get("default") for key in values}
                assert got == values, (f"{student}'s JupyterLab did not take "
                                       f"tools/jupyterlab-overrides.json: {plugin} defaults {got}")

        # 2. Each opens notebook 02 from their own copy.
        for student, page in pages.items():
            page.goto(f"{url}/user/{student}/lab/workspaces/hub-test/tree/{NB_PATH}?reset")
        for student, page in pages.items():
            page.wait_for_function(
                "(p) => Array.from(window.jupyterapp.shell.widgets('main'))"
                ".some(w => w.context && w.context.path === p && w.context.isReady)",
                arg=NB_PATH, timeout=120_000)
            _wait_kernel_settled(page, NB_PATH)

        # Their kernels: in their own home, with the pinned numerics and this repository's bnlib.
        want = {k: os.environ.get(k, v) for k, v in pinned_numerics.pinned_env().items()}
        kernels = {}
        for p in local_hub.marked_processes(hub.marker):
            try:
                if "ipykernel_launcher" in " ".join(p.cmdline()):
                    kernels[p.environ().get("HOME")] = p.environ()
            except psutil.Error:
                pass
        for student in STUDENTS:
            env = kernels.get(str(_home(hub, student)))
            assert env is not None, f"{student}: no kernel with HOME={_home(hub, student)} ({list(kernels)})"
            assert {k: env.get(k) for k in want} == want, f"{student}'s kernel lacks the pinned numerics"
            assert env.get("PYTHONPATH", "").split(os.pathsep)[0] == str(ROOT)

        # 3. Run All in every page at the same moment (not awaited here), then wait for all.
        for page in pages.values():
            page.evaluate(_panel_js("window.jupyterapp.commands.execute('notebook:run-all-cells');"),
                          [NB_PATH, None])
        copy_nb = nbformat.read(_home(hub, STUDENTS[0]) / NB_PATH, as_version=4)
        allowed = [i for i, c in enumerate(copy_nb.cells) if "raises-exception" in c.metadata.get("tags", [])]
        sources = [c.source for c in copy_nb.cells]
        states = _wait_run_all(pages, allowed, timing)
        for student, page in pages.items():
            assert student in states, (
                f"{student}: Run All did not finish within {RUN_ALL_TIMEOUT} s; "
                f"page errors {errors[student][:3]}")
            problems = _cell_errors(states[student], allowed, sources)
            assert not problems, f"{student}: cells show errors:\n" + "\n\n".join(problems)
            counts = [c["count"] for c in states[student]["cells"] if c["type"] == "code"]
            assert all(a < b for a, b in zip(counts, counts[1:])), (
                f"{student}: execution counts {counts} are not one run top to bottom")

        # 4. Each drags the first slider of the notebook's first slider panel: the figure changes.
        for student, page in pages.items():
            panels = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .bn-slider-panel")
            assert _poll(lambda: panels.count() and panels.locator(
                ".jupyter-matplotlib-canvas-div canvas").count(), RENDER_TIMEOUT), (
                f"{student}: no slider panel with a figure rendered within {RENDER_TIMEOUT} s")
            t0 = time.monotonic()
            result = _drag_first_slider(page, f"hub-{student}-{NOTEBOOK}", 0, panels.first,
                                        timing[student])
            timing[student]["drag_to_new_figure_s"] = round(time.monotonic() - t0, 1)
            timing[student]["readout"] = result["readout"]
            problems = _cell_errors(page.evaluate(STATE_JS, NB_PATH), allowed, sources)
            assert not problems, f"{student}: errors after the drag:\n" + "\n\n".join(problems)
            page.screenshot(path=str(ARTIFACTS / f"{student}.png"))

        # 5. Work stays apart. The first student edits the notebook's first cell and saves.
        editor, others = STUDENTS[0], STUDENTS[1:]
        mark = f"edited by {editor} {secrets.token_hex(4)}"
        pages[editor].evaluate(_panel_js(
            "const m = panel.content.widgets[0].model.sharedModel;"
            "m.setSource(arg + '\\n\\n' + m.getSource()); await panel.context.save();"),
            [NB_PATH, mark])
        assert mark in (_home(hub, editor) / NB_PATH).read_text(), f"{editor}'s save is not on disk"
        for student in others:
            assert mark not in (_home(hub, student) / NB_PATH).read_text(), (
                f"{editor}'s edit is in {student}'s file")
            r = pages[student].request.get(f"{url}/user/{student}/api/contents/{NB_PATH}")
            assert r.ok and mark not in r.text(), f"{student}'s server shows {editor}'s edit"
            # ...and the editor's browser cannot reach this student's server at all.
            r = pages[editor].request.get(f"{url}/user/{student}/api/contents/{NB_PATH}")
            assert r.status == 403 and mark not in r.text(), (
                f"{editor}'s browser read {student}'s server: HTTP {r.status}")
        for student in STUDENTS:
            expect(pages[student].locator(".jp-NotebookPanel:not(.lm-mod-hidden)")).to_be_visible()

        # A second start of the editor's server: the course is not copied over their work.
        hub.api("DELETE", f"/users/{editor}/server")
        assert _poll(lambda: not hub.api("GET", f"/users/{editor}")["servers"], 60), (
            f"{editor}'s server did not stop")
        hub.api("POST", f"/users/{editor}/server")
        ready = _poll(lambda: (hub.api("GET", f"/users/{editor}")["servers"].get("") or {}).get("ready"),
                      SPAWN_TIMEOUT, interval=1)
        assert ready, f"{editor}'s server did not start again. Hub log:\n{hub.log_tail()}"
        assert mark in (_home(hub, editor) / NB_PATH).read_text(), (
            f"restarting {editor}'s server copied the course over their edit")
        assert hub.log_tail(10**7).count("copied the student edition") == len(STUDENTS)
    except BaseException:
        for student, page in pages.items():
            try:
                page.screenshot(path=str(ARTIFACTS / f"{student}.failure.png"))
            except Exception:
                pass
        raise
    finally:
        for student in STUDENTS:
            if errors[student]:
                timing[student]["page_errors"] = errors[student][:5]
        print(f"\n[hub] {len(STUDENTS)} students: {json.dumps(timing)}")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "timings.json").write_text(json.dumps(timing, indent=1) + "\n")
        for context in contexts.values():
            context.close()
