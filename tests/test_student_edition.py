"""The student edition (tools/student_edition.py): solutions gone, notebooks still run,
and every self-check says the exercise is not done yet instead of a traceback."""
import importlib.util
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


def load_tool():
    spec = importlib.util.spec_from_file_location("student_edition", ROOT / "tools" / "student_edition.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    load_tool().build(out)
    return out


def is_check(cell):
    return cell.cell_type == "code" and "bnlib.check_" in cell.source


def test_every_notebook_is_in_the_student_edition(edition):
    assert sorted(p.name for p in (edition / "notebooks").glob("*.ipynb")) == NOTEBOOKS
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_student_notebook_has_no_solution_and_keeps_the_exercises(edition, name):
    nb = nbformat.read(edition / "notebooks" / name, as_version=4)
    assert not [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
    assert [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])], "no exercise stub left"
    assert all(not c.outputs for c in nb.cells if is_check(c)), "a check's stored PASS was kept"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_student_notebook_runs_and_its_checks_say_not_done_yet(edition, name):
    path = edition / "notebooks" / name
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()  # raises on an error
    checks = [c for c in nb.cells if is_check(c)]
    assert checks, "the notebook has no self-check"
    for cell in checks:
        text = "".join(o.get("text", "") for o in cell.outputs)
        assert "not done yet" in text, f"check cell printed {text!r}"
        assert "Traceback" not in text
