"""Slider responsiveness in a real browser: frames per second and input-to-frame time.

    .venv/bin/python tools/bench_browser.py       # about 3-5 minutes; run it on a quiet machine

Runs tests/test_browser.py on the notebooks with slider panels, with BN_SLIDER_FPS=1: after its
checks, each panel's first slider is dragged back and forth in Chromium with a mouse event every
16 ms for 3 s, while the page records each new frame painted on the panel's figure canvas and
each pointer event. Reported per panel: events sent, frames painted during the drag, frames per
second, and the median and 90th percentile of the time from an input event to the next frame.
Writes the table into docs/benchmarks.md as the section "## Sliders in a real browser" (before
"## History"; tools/bench.py keeps it). Nothing is asserted: a benchmark, not a test.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Sliders in a real browser"
HISTORY = "## History"
PANEL_NOTEBOOKS = ("01", "02", "04", "05")


def main():
    env = dict(os.environ, BN_SLIDER_FPS="1")
    selection = " or ".join(f"{n}_" for n in PANEL_NOTEBOOKS)
    load = os.getloadavg()[0]
    subprocess.run([sys.executable, "-m", "pytest", "tests/test_browser.py", "-q", "-k",
                    f"test_notebook_runs and ({selection})"], cwd=ROOT, env=env, check=True)
    timings = json.loads((ROOT / "artifacts" / "browser" / "timings.json").read_text())
    rows = []
    for name in sorted(timings):
        for k, panel in enumerate(timings[name].get("dragged", [])):
            f = panel.get("fps")
            if f:
                rows.append(f"| {name[:2]} | {k} | {panel['slider']} | {f['events']} | {f['frames']} | "
                            f"{f['fps']} | {f['lag_median_ms']} | {f['lag_p90_ms']} |")
    table = (f"{HEADING}\n\nMade by `.venv/bin/python tools/bench_browser.py` on "
             f"{time.strftime('%Y-%m-%d')} (load average {load:.2f} when it started), Chromium "
             "headless, 1366 x 768. One mouse event every 16 ms for 3 s on each panel's first "
             "slider; a frame is a new picture painted on the panel's figure canvas. Goal: at least "
             "30 frames per second and a median input-to-frame time of at most 33 ms.\n\n"
             "| notebook | panel | slider | events | frames | frames/s | input to frame, median (ms) | 90th pct (ms) |\n"
             "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n")
    print(table)
    doc = ROOT / "docs" / "benchmarks.md"
    old = doc.read_text()
    start = old.index(HEADING) if HEADING in old else (old.index(HISTORY) if HISTORY in old else len(old))
    end = old.index(HISTORY) if HISTORY in old and old.index(HISTORY) >= start else len(old)
    doc.write_text(old[:start] + table + old[end:])
    print(f"written to {doc.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
