#!/usr/bin/env python3
"""Give every notebook cell slideshow metadata, so each notebook presents as slides
in JupyterLab (jupyterlab-rise: the "Render as slides" button, or Alt+R).

    .venv/bin/python tools/slides.py            # set it in notebooks/*.ipynb (or name some)
    .venv/bin/python tools/slides.py --check    # exit 1 if a cell lacks it

A `# ` or `## ` heading starts a new slide, a `### ` heading a sub-slide; a
solution cell is skipped in the slideshow; every other cell continues the
slide it is on. Outputs are left as they are, so nbval's comparison is unchanged.
"""
import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def slide_type(cell):
    """The RISE slide type a cell should have."""
    if "solution" in cell.metadata.get("tags", []):
        return "skip"
    if cell.cell_type == "markdown":
        first = cell.source.lstrip()
        if first.startswith("# ") or first.startswith("## "):
            return "slide"
        if first.startswith("### "):
            return "subslide"
    return "-"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report cells without slide metadata")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    args = parser.parse_args()
    missing = 0
    for path in args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if args.check:
            lacking = [i for i, c in enumerate(nb.cells) if "slide_type" not in c.metadata.get("slideshow", {})]
            missing += len(lacking)
            if lacking:
                print(f"{path.name}: cells {lacking} have no slideshow metadata")
            continue
        changed = False
        for cell in nb.cells:
            wanted = {"slide_type": slide_type(cell)}
            if cell.metadata.get("slideshow") != wanted:
                cell.metadata["slideshow"] = wanted
                changed = True
        if changed:                             # leave untouched files alone
            nbformat.write(nb, path)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
