#!/usr/bin/env python3
"""Re-execute notebooks top to bottom and store their outputs (what nbval compares against).

    .venv/bin/python tools/run_notebooks.py                         # every notebook
    .venv/bin/python tools/run_notebooks.py notebooks/04_*.ipynb    # some

Runs each in a fresh kernel, in notebooks/, with the pinned CPU code paths of
tools/pinned_numerics.py (so the stored numbers are the ones every machine prints), then
gives new cells their slide metadata (tools/slides.py). Stops at the first cell that fails,
unless the cell is tagged raises-exception.
"""
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import pinned_numerics  # noqa: E402

pinned_numerics.apply()                     # before nbclient starts a kernel: it inherits these

import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402


def run(path):
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    return time.perf_counter() - t0


def main(args):
    paths = [Path(a).resolve() for a in args] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        sys.exit(f"run_notebooks: no such notebook: {', '.join(missing)}")
    for path in paths:
        print(f"{path.name}: {run(path):.1f} s (with kernel start)", flush=True)
    subprocess.run([sys.executable, str(ROOT / "tools" / "slides.py"), *map(str, paths)], check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
