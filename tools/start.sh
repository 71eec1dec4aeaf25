#!/usr/bin/env bash
# Set up the course in .venv/ (first time: a few minutes, PyTorch is large) and open it in JupyterLab.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
root_flag=()
[ "$(id -u)" = 0 ] && root_flag=(--allow-root)   # JupyterLab refuses to run as root without it
exec .venv/bin/jupyter lab "${root_flag[@]}" notebooks/ "$@"
