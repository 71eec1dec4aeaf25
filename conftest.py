"""Loaded by pytest before anything else: pin numpy's, OpenBLAS's and torch's CPU code paths
(tools/pinned_numerics.py) so the kernels nbval starts print the numbers stored in the notebooks
on any x86_64 machine, AVX-512 or not."""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "pinned_numerics", Path(__file__).parent / "tools" / "pinned_numerics.py")
_pinned = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pinned)
_pinned.apply()
