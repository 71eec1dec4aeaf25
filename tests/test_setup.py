"""Setup and CI: tools/setup.sh, tools/start.sh and .ci/run.

Most tests run tools/setup.sh in a small temporary course (its own .venv, a stand-in bnlib.py and
an empty requirements.txt) against a package index on 127.0.0.1 that answers 404 to everything
and records what pip asked it. One test starts the real course's JupyterLab with no index
reachable. Every process a test starts runs in its own process group, killed at the end.
"""
import http.server
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The interpreter behind the course's .venv: temporary venvs are made from it.
BASE_PYTHON = getattr(sys, "_base_executable", None) or sys.executable
REQUIRES_PYTHON = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
MIN_PYTHON = REQUIRES_PYTHON.removeprefix(">=").strip()
# bash, and dash where it exists: a shell with no bash extensions stands in for macOS's bash 3.2.
SHELLS = ["bash"] + (["dash"] if shutil.which("dash") else [])
NO_NETWORK = "http://127.0.0.1:9"          # the discard port: nothing listens, connections fail
LAB_START_TIMEOUT = 90                     # s: JupyterLab's start on a busy 2-core machine


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def _stop_group(proc, timeout=15):
    """SIGTERM to the process's whole group, then SIGKILL to whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    proc.wait(timeout=timeout)


def _run(cmd, cwd, env, timeout=60):
    """Run cmd in its own process group; returns (returncode, stdout + stderr)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        _stop_group(proc)
    return proc.returncode, out


def _offline_env(index_url, **extra):
    """The environment with no pip configuration but index_url, and no way out of 127.0.0.1."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("PIP_") and k.lower() not in
           ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "virtual_env")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=index_url, PIP_RETRIES="0",
               PIP_TIMEOUT="5", PIP_DISABLE_PIP_VERSION_CHECK="1",
               http_proxy=NO_NETWORK, https_proxy=NO_NETWORK, all_proxy=NO_NETWORK,
               HTTP_PROXY=NO_NETWORK, HTTPS_PROXY=NO_NETWORK, ALL_PROXY=NO_NETWORK,
               no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    env.update(extra)
    return env


class _RecordingIndex:
    """A package index on 127.0.0.1 that has nothing (404) and records each request."""

    def __init__(self):
        requests = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                self.send_error(404)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def index():
    idx = _RecordingIndex()
    try:
        yield idx
    finally:
        idx.close()


def _make_course(path):
    """A course with the real setup script, an empty requirements.txt and a stand-in bnlib."""
    (path / "tools").mkdir(parents=True)
    shutil.copy2(ROOT / "tools" / "setup.sh", path / "tools" / "setup.sh")
    shutil.copy2(ROOT / "pyproject.toml", path / "pyproject.toml")
    (path / "requirements.txt").write_text("# the test course needs no packages\n")
    (path / "bnlib.py").write_text('"""Stand-in for the course\'s bnlib."""\n')
    (path / "notebooks").mkdir()
    return path


def _fake_python(path, script):
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def course_without_pip(tmp_path_factory, index):
    """A course whose .venv has no pip (what a Python without ensurepip leaves), set up once."""
    course = _make_course(tmp_path_factory.mktemp("setup") / "course")
    subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", str(course / ".venv")],
                   check=True, timeout=60)
    rc, out = _run(["bash", "tools/setup.sh"], course, _offline_env(index.url, PYTHON=BASE_PYTHON),
                   timeout=120)
    return course, rc, out


# ---------------------------------------------------------------------------
# A second start installs nothing; bnlib needs no build; an installed course starts offline
# ---------------------------------------------------------------------------

def test_requirements_need_no_build():
    """`-e .` built bnlib in build isolation, which fetches setuptools from an index on every
    install: requirements.txt names only published packages."""
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    local = [ln for ln in lines if ln and (ln.startswith(("-e", "--editable", ".", "/", "file:"))
                                           or "git+" in ln)]
    assert not local, f"requirements.txt has entries that need a build: {local}"


def test_start_and_ci_share_setup():
    """start.sh and .ci/run install the same way: through tools/setup.sh, never pip directly."""
    for script in ("tools/start.sh", ".ci/run"):
        text = (ROOT / script).read_text()
        assert "tools/setup.sh" in text, f"{script} does not run tools/setup.sh"
        assert "pip install" not in text, f"{script} runs pip itself; tools/setup.sh does that"


@pytest.mark.parametrize("shell", SHELLS)
def test_second_setup_downloads_nothing(course_without_pip, index, shell):
    """Once requirements.txt is installed, setup does not run pip at all."""
    course, rc, out = course_without_pip
    assert rc == 0, out
    index.requests.clear()
    rc, out = _run([shell, "tools/setup.sh"], course, _offline_env(index.url, PYTHON=BASE_PYTHON))
    assert rc == 0, out
    assert "nothing to install" in out, out
    assert index.requests == [], f"a setup with unchanged requirements asked the index: {index.requests}"


def test_setup_installs_again_when_requirements_change(course_without_pip, index):
    """A changed requirements.txt is installed; a failed install is not recorded as done, so the
    next run tries again."""
    course, rc, out = course_without_pip
    assert rc == 0, out
    env = _offline_env(index.url, PYTHON=BASE_PYTHON)
    requirements = course / "requirements.txt"
    stamp = course / ".venv" / ".course-requirements.sha256"
    before = requirements.read_text(), stamp.read_text()
    try:
        requirements.write_text(before[0] + "course-test-not-on-any-index==1.0\n")
        rc, out = _run(["bash", "tools/setup.sh"], course, env)
        assert rc != 0, out
        assert "pip install -r requirements.txt failed" in out, out
        assert any("course-test-not-on-any-index" in r for r in index.requests), index.requests
        assert stamp.read_text() == before[1], "a failed install was recorded as done"
    finally:
        requirements.write_text(before[0])
    rc, out = _run(["bash", "tools/setup.sh"], course, env)
    assert rc == 0 and "nothing to install" in out, out


def test_bnlib_imports_from_notebooks_without_install(course_without_pip):
    """The .pth file setup.sh writes puts the repository on sys.path: `import bnlib` from
    notebooks/ (where the kernels run) finds the repository's bnlib.py."""
    course, rc, out = course_without_pip
    assert rc == 0, out
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # the .pth alone
    found = subprocess.run([str(course / ".venv" / "bin" / "python"), "-c",
                            "import bnlib; print(bnlib.__file__)"], cwd=course / "notebooks",
                           capture_output=True, text=True, timeout=30, env=env)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == course / "bnlib.py"


def _wait_for_lab(proc, url, token, log):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + LAB_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"start.sh exited ({proc.returncode}) before JupyterLab answered:\n"
                        + log.read_text(errors="replace")[-4000:])
        request = urllib.request.Request(url + "/api/status",
                                         headers={"Authorization": f"token {token}"})
        try:
            with opener.open(request, timeout=5) as r:
                return r.status
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.25)
    pytest.fail(f"JupyterLab did not answer within {LAB_START_TIMEOUT} s:\n"
                + log.read_text(errors="replace")[-4000:])


def test_installed_course_starts_offline(tmp_path):
    """README: nothing downloads while a second start.sh runs. With no package index reachable,
    `bash tools/start.sh` on the installed course opens JupyterLab."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("the course is not installed (.venv/): run bash tools/start.sh once")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = _offline_env(NO_NETWORK + "/simple/", JUPYTER_TOKEN=token,
                       JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
                       JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
                       IPYTHONDIR=str(tmp_path / "ipython"))
    log = tmp_path / "start.log"
    cmd = ["bash", "tools/start.sh", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert _wait_for_lab(proc, f"http://127.0.0.1:{port}", token, log) == 200
    finally:
        _stop_group(proc)
    text = log.read_text(errors="replace")
    if "nothing to install" not in text:     # the venv predates the stamp or requirements changed
        assert "starting JupyterLab with the packages .venv already has" in text, text


# ---------------------------------------------------------------------------
# A .venv without pip, a Python that cannot make one, a Python too old
# ---------------------------------------------------------------------------

def test_setup_repairs_venv_without_pip(course_without_pip):
    """A .venv with no pip used to be trusted, and every run failed at `pip install`."""
    course, rc, out = course_without_pip
    assert rc == 0, out
    assert ".venv has no pip" in out, out
    pip = subprocess.run([str(course / ".venv" / "bin" / "python"), "-m", "pip", "--version"],
                         capture_output=True, text=True, timeout=30)
    assert pip.returncode == 0, pip.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_setup_names_the_package_when_venv_cannot_work(tmp_path, index, shell):
    """Debian's python3 without python3-venv: `-m venv` leaves a .venv without pip and fails;
    later the .venv's Python has no ensurepip. Both times setup says which package to install."""
    course = _make_course(tmp_path / "course")
    version = "%d.%d" % sys.version_info[:2]
    python = _fake_python(tmp_path / "python3", f"""\
# Like Debian's python3 without python3-venv: venv makes a .venv with no pip, then fails.
if [ "$1" = -m ] && [ "$2" = venv ]; then
  shift 2
  "{BASE_PYTHON}" -m venv --without-pip "$@"
  echo "The virtual environment was not created successfully because ensurepip is not available." >&2
  exit 1
fi
exec "{BASE_PYTHON}" "$@"
""")
    env = _offline_env(index.url, PYTHON=python)
    rc, out = _run([shell, "tools/setup.sh"], course, env)
    assert rc != 0, out
    assert "apt-get install python3-venv" in out and f"python{version}-venv" in out, out

    # The next run finds that .venv without pip; its Python has no ensurepip either.
    site = subprocess.run([str(course / ".venv" / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    Path(site, "no_ensurepip.pth").write_text("import sys; sys.modules['ensurepip'] = None\n")
    rc, out = _run([shell, "tools/setup.sh"], course, env)
    assert rc != 0, out
    assert ".venv has no pip" in out and "apt-get install python3-venv" in out, out
    assert (course / ".venv" / "bin" / "python").exists(), "setup removed the .venv it could not repair"


@pytest.mark.parametrize("shell", SHELLS)
def test_setup_refuses_python_older_than_requires_python(tmp_path, index, shell):
    """A Python older than pyproject.toml's requires-python gets a message, not a broken .venv."""
    course = _make_course(tmp_path / "course")
    major, minor = map(int, MIN_PYTHON.split("."))
    old = f"{major}.{minor - 1}"
    python = _fake_python(tmp_path / "python3", f'echo {old}\n')
    rc, out = _run([shell, "tools/setup.sh"], course, _offline_env(index.url, PYTHON=python))
    assert rc != 0, out
    assert f"Python {old}" in out and f"needs {MIN_PYTHON} or newer" in out, out
    assert "PYTHON=" in out, out
    assert not (course / ".venv").exists()


# ---------------------------------------------------------------------------
# macOS's bash 3.2; where Chromium is; what the install weighs
# ---------------------------------------------------------------------------

# bash >= 4 features, and arrays: under set -u bash < 4.4 calls an empty "${a[@]}" unbound.
BASH4_OR_ARRAYS = re.compile(r"\w+=\(|\$\{!?\w+\[|\[\[|\bdeclare\b|\blocal\b|\bmapfile\b|"
                             r"\breadarray\b|\$\{\w+(,,|\^\^)|&>>|\|&|\bcoproc\b")


@pytest.mark.parametrize("script", ["tools/start.sh", "tools/setup.sh"])
def test_scripts_avoid_bash4_and_arrays(script):
    """macOS's /bin/bash is 3.2: start.sh died there on an empty "${root_flag[@]}" under set -u."""
    for number, line in enumerate((ROOT / script).read_text().splitlines(), 1):
        code = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
        match = BASH4_OR_ARRAYS.search(code)
        assert not match, f"{script}:{number}: {match.group(0)!r} is not plain POSIX sh: {line}"


def test_shellcheck():
    """shellcheck finds nothing, and start.sh and setup.sh pass as POSIX sh (what bash 3.2 runs)."""
    if not shutil.which("shellcheck"):
        if os.environ.get("CI"):
            pytest.fail("shellcheck is missing; .ci/run installs it (apt-get install shellcheck)")
        pytest.skip("shellcheck is not installed: apt-get install shellcheck (.ci/run does)")
    for cmd in (["shellcheck", "tools/start.sh", "tools/setup.sh", ".ci/run", "binder/postBuild",
                 "binder/start"],
                ["shellcheck", "--shell=sh", "tools/start.sh", "tools/setup.sh"]):
        rc, out = _run(cmd, ROOT, dict(os.environ), timeout=60)
        assert rc == 0, f"{' '.join(cmd)}:\n{out}"


def test_chromium_has_one_location(monkeypatch):
    """.ci/run looked for `chromium` on PATH while the browser test used /usr/bin/chromium: both
    now take tools/chromium.py's path ($CHROMIUM, else /usr/bin/chromium)."""
    helper = [sys.executable, str(ROOT / "tools" / "chromium.py")]
    env = {k: v for k, v in os.environ.items() if k != "CHROMIUM"}
    assert subprocess.run(helper, env=env, capture_output=True, text=True, timeout=30,
                          check=True).stdout.strip() == "/usr/bin/chromium"
    monkeypatch.setenv("CHROMIUM", "/opt/elsewhere/chromium")
    assert subprocess.run(helper, capture_output=True, text=True, timeout=30,
                          check=True).stdout.strip() == "/opt/elsewhere/chromium"
    spec = importlib.util.spec_from_file_location("_browser_test_probe", ROOT / "tests" / "test_browser.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.CHROMIUM == Path("/opt/elsewhere/chromium")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "tools/chromium.py" in ci and "command -v chromium" not in ci


def test_readme_says_what_the_install_weighs():
    """The README gives the install's size and what takes the space (PyTorch's CUDA build)."""
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"\d+(\.\d+)? GB", readme), "README does not say how large the install is"
    for part in ("nvidia", "torch", "triton"):
        assert part in readme, f"README does not say that {part}/ takes space"
