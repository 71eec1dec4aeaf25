"""A JupyterHub for the course on one machine: the hub tests/test_hub.py starts, and a way to try
a classroom's logins before a session.

    bash tools/setup.sh --hub          # once: jupyterhub into .venv, the proxy into tools/hub/
    COURSE_HUB_PASSWORD=a-long-password .venv/bin/python -m jupyterhub -f tools/hub/jupyterhub_config.py

then open http://127.0.0.1:8000 and log in with any name and that password: each name is a
student with a home of its own (COURSE_HUB_DIR/homes/<name>/) holding a copy of the course.

What every student's server gets (pinned numerics, the course's JupyterLab settings, the student
edition copied on first login) is in course_config.py, loaded first; this file adds what makes it
a hub on this machine. Not for a real class: the shared password lets anyone who knows it log in
as any student, and SimpleLocalProcessSpawner runs every student's server as the hub's own user,
so nothing but politeness keeps one student out of another's files. For a class use The Littlest
JupyterHub or Zero to JupyterHub with course_config.py's settings (docs/teaching.md).

Environment: COURSE_HUB_PASSWORD (required, 8 characters or more), COURSE_HUB_DIR (the hub's
state, builds and homes; default .hub/ in the repository), COURSE_HUB_PORT (default 8000).
"""
import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 -- defined by the config loader
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
load_subconfig(str(HERE / "course_config.py"))  # noqa: F821

HUB_DIR = Path(os.environ.get("COURSE_HUB_DIR") or REPO / ".hub")
password = os.environ.get("COURSE_HUB_PASSWORD", "")
if len(password) < 8:
    sys.exit("tools/hub/jupyterhub_config.py: set COURSE_HUB_PASSWORD (8 characters or more); "
             "students log in with it")

# Only this machine can reach it (put a TLS proxy in front, or use TLJH, to serve a room).
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ.get("COURSE_HUB_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"

# Log in: any name, one shared password (JupyterHub's workshop authenticator).
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = password
c.Authenticator.allow_all = True

# Each student's JupyterLab: a process of the hub's user, in a home under COURSE_HUB_DIR/homes/.
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = str(HUB_DIR / "homes" / "{username}")
c.Spawner.cmd = [str(Path(sys.executable).with_name("jupyterhub-singleuser"))]
c.Spawner.notebook_dir = "~"
if os.geteuid() == 0:
    c.Spawner.args.append("--allow-root")       # jupyter-server refuses root without it
c.Spawner.start_timeout = 180                   # a busy 2-core machine starts 10 servers slowly
c.Spawner.http_timeout = 180
c.Spawner.term_timeout = 10

# The proxy in front (configurable-http-proxy from npm, installed by tools/setup.sh --hub).
c.ConfigurableHTTPProxy.command = [str(HERE / "node_modules" / ".bin" / "configurable-http-proxy")]
c.ConfigurableHTTPProxy.pid_file = str(HUB_DIR / "proxy.pid")

# The hub's own state, with the rest of COURSE_HUB_DIR.
c.JupyterHub.db_url = f"sqlite:///{HUB_DIR / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(HUB_DIR / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(HUB_DIR / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True             # stopping the hub stops every student's server
c.JupyterHub.cleanup_proxy = True
