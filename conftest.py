"""Loaded by pytest before anything else.

1. Pin numpy's, OpenBLAS's and torch's CPU code paths (tools/pinned_numerics.py) so the kernels
   nbval starts print the numbers stored in the notebooks on any x86_64 machine, AVX-512 or not.
2. Mark the slow families, so contributors have a fast loop:
       .venv/bin/python -m pytest -m "not notebooks and not browser"
   `notebooks`: every notebook executed (strict nbval, and the student edition's run);
   `browser`: JupyterLab in Chromium (tests/test_browser.py, and tests/test_hub.py, which is also
   `hub`: a JupyterHub with several students at once; `pytest -m hub` runs it alone).
"""
import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "pinned_numerics", Path(__file__).parent / "tools" / "pinned_numerics.py")
_pinned = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pinned)
_pinned.apply()


def pytest_collection_modifyitems(items):
    for item in items:
        path = Path(str(item.path))
        if path.suffix == ".ipynb" or path.name == "test_student_edition.py":
            item.add_marker(pytest.mark.notebooks)
        elif path.name == "test_browser.py":
            item.add_marker(pytest.mark.browser)
        elif path.name == "test_hub.py":
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.hub)
