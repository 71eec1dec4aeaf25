#!/usr/bin/env bash
# Make .venv/ ready for the course; tools/start.sh and .ci/run both run it.
#  1. Create .venv with a Python the course supports (pyproject.toml's requires-python), or
#     repair one that has no pip (what `python3 -m venv` leaves when ensurepip is missing).
#  2. `import bnlib` finds the repository's bnlib.py: a .pth file in .venv names the repo root.
#     Nothing is built, so this needs no package index.
#  3. pip install -r requirements.txt, only when that file changed since the last install that
#     succeeded (its hash is kept in .venv/). So a second run downloads nothing and works offline.
#  4. With --hub (.ci/run, and a one-machine JupyterHub: tools/hub/jupyterhub_config.py): the same
#     for tools/hub/requirements.txt (JupyterHub, kept out of requirements.txt because a hub's
#     users' environment must keep the jupyterhub its hub runs), and configurable-http-proxy from
#     npm into tools/hub/node_modules/ (npm ci from tools/hub/package-lock.json), each only when
#     its file changed since its last install that succeeded.
# Plain POSIX sh (no arrays, no [[ ]], no pipes): macOS's bash 3.2 and dash run it as written.
# Choose the Python with PYTHON=/path/to/python3.12 bash tools/setup.sh (default: python3).
set -eu
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

hub=no
case "${1:-}" in
  --hub) hub=yes ;;
  "") ;;
  *) die "unknown argument '$1' (the only option is --hub)" ;;
esac

py=${PYTHON:-python3}
stamp=.venv/.course-requirements.sha256
min=$(sed -n 's/^requires-python *= *">= *\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)
[ -n "$min" ] || die "pyproject.toml has no requires-python = \">=X.Y\" line"

# Prints PY's major.minor version; fails if PY does not run.
version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

# Succeeds if version $1 (X.Y) is at least $min.
new_enough() {
  [ "${1%%.*}" -gt "${min%%.*}" ] ||
    { [ "${1%%.*}" -eq "${min%%.*}" ] && [ "${1#*.}" -ge "${min#*.}" ]; }
}

venv_hint() {
  say "On Debian or Ubuntu, install the venv module and run again: apt-get install python3-venv"
  say "(for a python$1 that is not the default python3: apt-get install python$1-venv)."
}

make_venv() {
  command -v "$py" >/dev/null 2>&1 || die "no $py found: install Python $min or newer."
  v=$(version "$py") || die "$py does not run."
  new_enough "$v" || die "$py is Python $v; the course needs $min or newer (pyproject.toml).
  Install a newer Python and run: PYTHON=/path/to/python3.X bash tools/start.sh"
  say "creating .venv with $py (Python $v)"
  if ! "$py" -m venv --clear .venv; then
    say "'$py -m venv .venv' failed: this Python cannot make virtual environments with pip."
    venv_hint "$v"
    exit 1
  fi
}

# 1. A .venv whose Python runs and is new enough, with pip.
if [ ! -e .venv ]; then
  make_venv
elif ! v=$(version .venv/bin/python) || ! new_enough "$v"; then
  say ".venv's Python does not run or is older than $min: making .venv again"
  make_venv
fi
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  say ".venv has no pip (it was made by a Python without ensurepip?): repairing it"
  if ! .venv/bin/python -m ensurepip >/dev/null 2>&1 ||
     ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    say "could not put pip into .venv: its Python has no working ensurepip."
    venv_hint "$(version .venv/bin/python)"
    exit 1
  fi
fi

# 2. bnlib from the repository (a path line in a .pth file goes onto sys.path at startup).
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n' "$PWD" > "$site/course-repo.pth.$$"
mv -f "$site/course-repo.pth.$$" "$site/course-repo.pth"

# Prints the sha256 of file $1 (the .venv's Python computes it: no sha256sum on macOS).
hash_of() {
  .venv/bin/python -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

# 3. The packages, if requirements.txt changed since the last install that succeeded.
pip_upgraded=no
# pip_install FILE STAMP [NOTE]: pip install -r FILE into .venv unless FILE's hash is in STAMP.
pip_install() {
  want=$(hash_of "$1")
  have=$(cat "$2" 2>/dev/null || true)
  if [ "$want" = "$have" ]; then
    say "$1 unchanged since the last install: nothing to install"
    return 0
  fi
  say "installing $1 into .venv${3:-}"
  if [ "$pip_upgraded" = no ]; then
    .venv/bin/python -m pip install -q --upgrade pip || say "could not upgrade pip: going on with the one in .venv"
    pip_upgraded=yes
  fi
  if ! .venv/bin/python -m pip install -q -r "$1"; then
    die "pip install -r $1 failed (see above; no network?). The next run tries again."
  fi
  printf '%s\n' "$want" > "$2"
  say "installed $1"
}
pip_install requirements.txt "$stamp" " (the first time takes a few minutes: PyTorch is large)"
[ "$hub" = yes ] || exit 0

# 4. The hub: JupyterHub into .venv, its proxy from npm into tools/hub/node_modules/.
pip_install tools/hub/requirements.txt .venv/.course-hub-requirements.sha256
command -v npm >/dev/null 2>&1 ||
  die "npm is missing: the hub's proxy (configurable-http-proxy) needs Node.js 20 or newer and npm (Debian: apt-get install nodejs npm)"
proxy=tools/hub/node_modules/.bin/configurable-http-proxy
proxy_stamp=tools/hub/node_modules/.course-package-lock.sha256
want=$(hash_of tools/hub/package-lock.json)
have=$(cat "$proxy_stamp" 2>/dev/null || true)
if [ -x "$proxy" ] && [ "$want" = "$have" ]; then
  say "tools/hub/package-lock.json unchanged since the last install: nothing to install"
  exit 0
fi
say "installing configurable-http-proxy (npm ci in tools/hub/)"
if ! npm ci --prefix tools/hub --no-audit --no-fund --loglevel=error; then
  die "npm ci in tools/hub/ failed (see above; no network?). The next run tries again."
fi
[ -x "$proxy" ] || die "npm ci did not install $proxy"
printf '%s\n' "$want" > "$proxy_stamp"
say "installed configurable-http-proxy"
