#!/usr/bin/env bash
# Set up the course in .venv/ (first time: a few minutes, PyTorch is large) and open it in JupyterLab.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
# JupyterLab defaults for the course (tools/jupyterlab-overrides.json): widget messages are handled
# in order on the kernel's main thread, not in a subshell thread running beside a cell (matplotlib
# is not thread-safe, and a slider callback redraws a figure); no news or update checks (offline).
mkdir -p .venv/share/jupyter/lab/settings
cp tools/jupyterlab-overrides.json .venv/share/jupyter/lab/settings/overrides.json
# The same printed numbers on every x86_64 CPU (tools/pinned_numerics.py): the ones in the text.
eval "$(.venv/bin/python tools/pinned_numerics.py)"
root_flag=()
[ "$(id -u)" = 0 ] && root_flag=(--allow-root)   # JupyterLab refuses to run as root without it
exec .venv/bin/jupyter lab "${root_flag[@]}" notebooks/ "$@"
