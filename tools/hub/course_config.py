"""The course's part of a JupyterHub configuration: what every student's server gets.

tools/hub/jupyterhub_config.py (the one-machine hub that tests/test_hub.py starts) loads this file;
on The Littlest JupyterHub it goes into /opt/tljh/config/jupyterhub_config.d/ as a symlink
(docs/teaching.md says how). It needs this repository on the machine that runs the students'
servers and the course's packages in their Python (requirements.txt).

Each student's server gets:
1. The pinned numerics (tools/pinned_numerics.py) in its environment, which its kernels inherit:
   the numbers a student's notebook prints are the ones its text quotes. A variable already set
   in the hub's own environment wins, as everywhere else in the course.
2. bnlib from this repository: the repository first on PYTHONPATH (bnlib finds data/ beside itself).
3. The course's JupyterLab defaults (tools/jupyterlab-overrides.json) as the server's
   overrides.json: a copy in COURSE_HUB_DIR/lab-settings/, passed as --LabApp.app_settings_dir.
   (tools/start.sh copies the same file into the environment instead; a hub's servers may share an
   environment the hub should not write to.)
4. The course: the student edition (tools/student_edition.py: no solutions, exercise outputs
   cleared), built when the hub starts into COURSE_HUB_DIR/student/, copied into ~/bn-course/ on
   the student's first login (Spawner.pre_spawn_hook) and never over it again, so a student's
   work survives every later login; deleting ~/bn-course gives a fresh copy at the next start.
   Copied, not pulled with nbgitpuller: nbgitpuller clones the repository over the network at
   every login, which needs the hub to reach a git host, gives students the instructor's edition
   (with solutions), and merges upstream changes into files the students edited. A copy works
   offline, in seconds, and is the edition the instructor built.
5. JupyterLab opening in ~/bn-course/notebooks/.

COURSE_HUB_DIR (environment): where the hub keeps what it builds (default: .hub/ in this
repository, git-ignored). COURSE_PYTHON: the Python that builds the student edition (default: the
repository's .venv, else The Littlest JupyterHub's user environment, else the hub's Python).
"""
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path
import runpy

c = get_config()  # noqa: F821 -- defined by the config loader

REPO = Path(__file__).resolve().parents[2]
HUB_DIR = Path(os.environ.get("COURSE_HUB_DIR") or REPO / ".hub")
COURSE_FOLDER = "bn-course"                       # in each student's home


def _course_python():
    for candidate in (os.environ.get("COURSE_PYTHON"), REPO / ".venv" / "bin" / "python",
                      "/opt/tljh/user/bin/python", sys.executable):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return sys.executable


# 1. Pinned numerics, 2. bnlib from this repository.
pinned = runpy.run_path(str(REPO / "tools" / "pinned_numerics.py"))["pinned_env"]()
environment = {key: os.environ.get(key, value) for key, value in pinned.items()}
environment["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
c.Spawner.environment.update(environment)

# 3. JupyterLab's defaults for the course.
lab_settings = HUB_DIR / "lab-settings"
lab_settings.mkdir(parents=True, exist_ok=True)
shutil.copyfile(REPO / "tools" / "jupyterlab-overrides.json", lab_settings / "overrides.json")
c.Spawner.args.append(f"--LabApp.app_settings_dir={lab_settings}")

# 4. The student edition, built once now; copied into each home on first login.
STUDENT_EDITION = HUB_DIR / "student"
subprocess.run([_course_python(), str(REPO / "tools" / "student_edition.py"),
                "--out", str(STUDENT_EDITION)], check=True, stdout=subprocess.DEVNULL)


def _home(spawner):
    """The student's home and, for a system user, its (uid, gid); (None, None) if not known yet."""
    home = getattr(spawner, "home_dir", None)    # SimpleLocalProcessSpawner: no system users
    if home:
        return Path(home), None
    # LocalProcessSpawner: the user's own name; The Littlest JupyterHub: jupyter-<name>, made at
    # the first start, after this hook (there /etc/skel gives the first copy: docs/teaching.md).
    for name in (spawner.user.name, f"jupyter-{spawner.user.name}"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return Path(entry.pw_dir), (entry.pw_uid, entry.pw_gid)
    return None, None


def copy_course_on_first_login(spawner):
    home, owner = _home(spawner)
    if home is None:
        spawner.log.info("bn-course: no home for %s yet; not copying the course", spawner.user.name)
        return
    target = home / COURSE_FOLDER
    if target.exists():                          # a later login: the student's work stays
        return
    home.mkdir(parents=True, exist_ok=True)
    partial = home / f".{COURSE_FOLDER}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(STUDENT_EDITION, partial)
    if owner is not None and os.geteuid() == 0:
        for folder, _, files in os.walk(partial):
            os.chown(folder, *owner)
            for name in files:
                os.chown(os.path.join(folder, name), *owner)
    partial.rename(target)                       # whole or not at all
    spawner.log.info("bn-course: copied the student edition into %s", target)


c.Spawner.pre_spawn_hook = copy_course_on_first_login

# 5. Where JupyterLab opens.
c.Spawner.default_url = f"/lab/tree/{COURSE_FOLDER}/notebooks"
