#!/usr/bin/env python3
"""Build the student edition of the course: the notebooks without their solutions.

    .venv/bin/python tools/student_edition.py [--out student]

Writes OUT/notebooks/*.ipynb and OUT/images/ (OUT is git-ignored; default student/).
In each notebook, every cell tagged `solution` is removed and the outputs of the
exercise section (from the "## Exercises" heading on) are cleared, so a learner
meets each exercise as a stub and each self-check says "not done yet" until the
stub is filled in. Everything before the exercises keeps its stored outputs.
"""
import argparse
import shutil
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def is_exercises_heading(cell):
    return cell.cell_type == "markdown" and cell.source.lstrip().lower().startswith("## exercise")


def student_notebook(nb):
    """A copy of nb without `solution` cells and with the exercise section's outputs cleared."""
    nb = nbformat.from_dict(nb)
    cells, in_exercises = [], False
    for cell in nb.cells:
        in_exercises = in_exercises or is_exercises_heading(cell)
        if "solution" in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "code" and in_exercises:
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    nb.cells = cells
    return nb


def build(out):
    """Write the student edition into `out`; returns the notebook paths written."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "notebooks").mkdir(parents=True)
    if (ROOT / "images").is_dir():
        shutil.copytree(ROOT / "images", out / "images")
    written = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = student_notebook(nbformat.read(path, as_version=4))
        target = out / "notebooks" / path.name
        nbformat.write(nb, target)
        written.append(target)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "student"), help="output folder (default: student/)")
    args = parser.parse_args()
    for path in build(args.out):
        print(path)


if __name__ == "__main__":
    main()
