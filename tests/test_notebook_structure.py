"""Every notebook has the shape the syllabus asks for (../shared/COURSE.md, 'Every notebook'):
title and goals, a figure, a summary, 2-4 exercises with a self-check whose reference
solution passes, slide metadata, and few cells excluded from nbval's comparison."""
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = ["01_input_normalization", "02_sigmoid_linear_region", "03_forward_backward",
            "04_train_vs_inference", "05_conv_batchnorm", "06_why_batchnorm_works",
            "07_batchnorm_in_practice", "08_batchnorm_in_modern_networks", "09_batchnorm_across_devices"]


def notebook(name):
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def markdown(nb):
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def stored_text(cell):
    return "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
                   for o in cell.get("outputs", []))


def test_the_course_notebooks_exist():
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_title_goals_and_prerequisites_come_first(name):
    nb = notebook(name)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {name[:2]}")
    text = markdown(nb)
    goals = re.search(r"what you will learn(.*?)(\n#|\Z)", text, re.I | re.S)
    assert goals, "no 'What you will learn' section"
    assert 3 <= len(re.findall(r"^\s*(?:[-*]|\d+\.)\s", goals.group(1), re.M)) <= 5
    assert re.search(r"what you need", text, re.I), "no 'What you need from before'"


@pytest.mark.parametrize("name", EXPECTED)
def test_summary_and_two_to_four_exercises_end_the_notebook(name):
    nb = notebook(name)
    headings = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown" and c.source]
    assert any(re.match(r"##\s+Summary", h, re.I) for h in headings)
    assert any(re.match(r"##\s+Exercises", h, re.I) for h in headings)
    n_exercises = len(re.findall(r"^###\s+Exercise", markdown(nb), re.I | re.M))
    assert 2 <= n_exercises <= 4, f"{n_exercises} exercises"


@pytest.mark.parametrize("name", EXPECTED)
def test_a_self_check_passes_on_the_reference_solution(name):
    nb = notebook(name)
    assert [c for c in nb.cells if "solution" in c.metadata.get("tags", [])], "no solution cell"
    assert [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])], "no exercise stub"
    checks = [c for c in nb.cells if c.cell_type == "code" and "bnlib.check_" in c.source]
    assert checks and all("PASS" in stored_text(c) for c in checks)


@pytest.mark.parametrize("name", EXPECTED)
def test_there_is_at_least_one_figure(name):
    outputs = [o for c in notebook(name).cells for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.parametrize("name", EXPECTED)
def test_every_cell_has_slide_metadata(name):
    assert all("slide_type" in c.metadata.get("slideshow", {}) for c in notebook(name).cells), \
        "run .venv/bin/python tools/slides.py"


@pytest.mark.parametrize("name", EXPECTED)
def test_few_cells_are_excluded_from_output_comparison(name):
    code = [c for c in notebook(name).cells if c.cell_type == "code"]
    ignored = [c for c in code if "nbval-ignore-output" in c.metadata.get("tags", [])]
    assert len(ignored) <= len(code) // 3


@pytest.mark.parametrize("name", EXPECTED)
def test_notebooks_call_bnlib_instead_of_redefining_it(name):
    import bnlib
    public = {n for n in dir(bnlib) if not n.startswith("_")}
    for cell in notebook(name).cells:
        if cell.cell_type == "code" and "solution" not in cell.metadata.get("tags", []) \
                and "exercise" not in cell.metadata.get("tags", []):
            for defined in re.findall(r"^(?:def|class)\s+(\w+)", cell.source, re.M):
                assert defined not in public, f"{defined} is re-defined; call bnlib.{defined}"


@pytest.mark.parametrize("name", EXPECTED)
def test_figures_take_their_colours_from_bnlib(name):
    """One palette (bnlib.METHOD_COLORS, DATA_COLORS): notebooks name no colour but greys."""
    code = "\n".join(c.source for c in notebook(name).cells if c.cell_type == "code")
    own = re.findall(r"""["'](C\d|tab:\w+|#[0-9a-fA-F]{3,8}|red|blue|green|orange|purple|magenta|cyan|"""
                     r"""yellow|brown|pink)["']""", code)
    assert not own, f"{name} draws in its own colours {own}: use bnlib.method_color or bnlib.DATA_COLORS"


@pytest.mark.parametrize("name", EXPECTED)
def test_static_figures_are_plain_images(name):
    """%matplotlib inline: only bnlib.interactive_figure makes a widget canvas (issue 15)."""
    code = "\n".join(c.source for c in notebook(name).cells if c.cell_type == "code")
    assert "%matplotlib inline" in code and "%matplotlib widget" not in code
