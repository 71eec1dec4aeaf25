#!/usr/bin/env bash
# Set up the course in .venv/ (tools/setup.sh; first time: a few minutes, PyTorch is large) and
# open it in JupyterLab. Later starts install nothing unless requirements.txt changed, so they
# work offline; if a setup step fails but JupyterLab is installed, it starts anyway.
# Extra arguments go to `jupyter lab` (e.g. --no-browser, --port=8899).
# Plain POSIX sh (no arrays, no [[ ]], no pipes): macOS's bash 3.2 runs it as written.
set -eu
cd "$(dirname "$0")/.."

warn() { printf 'start.sh: %s\n' "$*" >&2; }

if ! bash tools/setup.sh; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import jupyterlab' 2>/dev/null; then
    warn "setup did not finish (see above); starting JupyterLab with the packages .venv already has."
  else
    warn "cannot start: .venv has no JupyterLab yet (see above for why setup failed)."
    exit 1
  fi
fi

# JupyterLab defaults for the course (tools/jupyterlab-overrides.json): widget messages are handled
# in order on the kernel's main thread, not in a subshell thread running beside a cell (matplotlib
# is not thread-safe, and a slider callback redraws a figure); no news or update checks (offline).
settings=.venv/share/jupyter/lab/settings
if ! { mkdir -p "$settings" && cp tools/jupyterlab-overrides.json "$settings/overrides.json.$$" &&
       mv -f "$settings/overrides.json.$$" "$settings/overrides.json"; }; then
  warn "could not install the course's JupyterLab settings; starting with JupyterLab's defaults."
fi

# The same printed numbers on every x86_64 CPU (tools/pinned_numerics.py): the ones in the text.
if pinned=$(.venv/bin/python tools/pinned_numerics.py); then
  eval "$pinned"
else
  warn "could not pin numpy's CPU code paths; printed numbers may differ in the last digits."
fi

if [ "$(id -u)" = 0 ]; then
  set -- --allow-root "$@"        # JupyterLab refuses to run as root without it
fi
exec .venv/bin/python -m jupyterlab notebooks/ "$@"
