"""The same printed numbers on every x86_64 machine: pin the CPU code paths of numpy, OpenBLAS and torch.

Why: numpy and OpenBLAS pick their kernels by CPU at import. An AVX-512 machine sums and
multiplies in a different order than an AVX2 one, so results differ in the last bits; a
training run (e.g. batch size 2 in notebook 07) amplifies that into a different third
digit, and nbval, which compares printed numbers, fails. These variables make every
x86-64-v3 machine (AVX2 + FMA: every x86_64 CPU since 2013-2015) take the AVX2 paths. The
stored outputs in notebooks/ were made with them.

They must be set before numpy is imported, so they go into the environment of the process
that starts the kernels:
- pytest: conftest.py at the repo root calls apply();
- tools/start.sh (JupyterLab for learners) and tools/run_notebooks.py (refresh the outputs)
  also use them, so a learner sees the numbers the text quotes.

    python tools/pinned_numerics.py      # prints the settings as shell `export` lines
"""
import os
import platform
from pathlib import Path


def _has_avx2():
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def pinned_env():
    """The variables to set: {} where they do not apply (not x86_64 Linux with AVX2)."""
    if platform.machine() not in ("x86_64", "AMD64") or not _has_avx2():
        return {}
    return {
        "OPENBLAS_CORETYPE": "Haswell",                           # OpenBLAS's AVX2 kernels
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # numpy: no AVX-512 loops
        "ATEN_CPU_CAPABILITY": "avx2",                            # torch's CPU kernels
    }


def apply(environ=os.environ):
    """Set each pinned variable that is not already set (a value the user chose wins)."""
    for key, value in pinned_env().items():
        environ.setdefault(key, value)
    return environ


if __name__ == "__main__":
    for key, value in pinned_env().items():
        print(f'export {key}="${{{key}:-{value}}}"')
