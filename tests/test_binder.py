"""Binder's files (binder/): what repo2docker would do with them, done here without Docker.

repo2docker reads binder/ only, once it exists: binder/requirements.txt (pip), binder/runtime.txt
(the Python), binder/postBuild (run once, at build) and binder/start (run at every container
start, before the server). The test runs postBuild in a fresh venv standing in for the image's
environment (its packages borrowed from .venv), then start with an empty home, and checks what a
hub's students would get: bnlib and data importable even with the repository out of reach, the
course's JupyterLab overrides, the pinned numerics in the server's environment, and the student
edition copied into ~/bn-course once and never over a student's work.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import pinned_numerics  # noqa: E402


def test_binder_installs_the_one_requirements_file():
    lines = [ln.strip() for ln in (ROOT / "binder" / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines == ["-r ../requirements.txt"]
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    assert runtime == "python-%d.%d" % sys.version_info[:2], (
        f"binder/runtime.txt says {runtime}; the course is tested on this Python")
    assert not (ROOT / "postBuild").exists(), "repo2docker ignores the root's postBuild once binder/ exists"


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A copy of the repository and an environment after binder/postBuild."""
    tmp = tmp_path_factory.mktemp("binder")
    repo = tmp / "repo"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".hub", "node_modules", "artifacts", "student", "__pycache__"))
    env_dir = tmp / "env"
    venv.create(env_dir, with_pip=False)
    site = subprocess.run([str(env_dir / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in pinned_numerics.pinned_env()
           and k != "PYTHONPATH"}
    env.update(PATH=f"{env_dir / 'bin'}:{os.environ['PATH']}", NB_PYTHON_PREFIX=str(env_dir),
               HOME=str(tmp / "home"))
    (tmp / "home").mkdir()
    out = subprocess.run(["bash", "binder/postBuild"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return {"repo": repo, "env_dir": env_dir, "env": env, "home": tmp / "home"}


def _start(image, code):
    """binder/start, then a Python standing in for the notebook server."""
    out = subprocess.run(["bash", str(image["repo"] / "binder" / "start"), "python", "-c", code],
                         cwd=image["home"], env=image["env"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_postbuild_installs_bnlib_overrides_and_the_student_edition(image):
    overrides = image["env_dir"] / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    assert json.loads(overrides.read_text()) == json.loads(
        (ROOT / "tools" / "jupyterlab-overrides.json").read_text())
    student = image["env_dir"] / "share" / "bn-course" / "student" / "notebooks"
    assert sorted(p.name for p in student.glob("*.ipynb")) == sorted(
        p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    # bnlib and its data imported from the environment's copy when the repository is gone
    # (a hub's home volume hides an image's repository in $HOME).
    hidden = image["repo"].with_name("repo-hidden")
    image["repo"].rename(hidden)
    try:
        out = subprocess.run([str(image["env_dir"] / "bin" / "python"), "-c",
                              "import bnlib; print(bnlib.__file__); print(bnlib.DATA_DIR.is_dir())"],
                             cwd=image["home"], env=image["env"], capture_output=True, text=True,
                             timeout=60)
    finally:
        hidden.rename(image["repo"])
    assert out.returncode == 0, out.stderr
    path, data = out.stdout.split()
    assert path.startswith(str(image["env_dir"])) and data == "True", out.stdout


def test_start_pins_numerics_and_copies_the_course_once(image):
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    env = json.loads(_start(image, code))
    want = pinned_numerics.pinned_env()
    assert {k: env.get(k) for k in want} == want
    copy = image["home"] / "bn-course" / "notebooks" / "02_sigmoid_linear_region.ipynb"
    assert copy.exists()
    mine = copy.read_text() + "\n"            # a student's save
    copy.write_text(mine)
    _start(image, "pass")
    assert copy.read_text() == mine, "a second start copied the course over the student's file"
    assert not list(image["home"].glob(".bn-course.partial*"))
