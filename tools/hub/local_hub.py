"""Start the course's one-machine hub (tools/hub/jupyterhub_config.py) for a test or a benchmark,
and stop everything it started, whatever happens.

    from local_hub import LocalHub              # tests/test_hub.py, tools/bench_hub.py
    with LocalHub(workdir, scopes=["admin:servers"]) as hub:
        hub.api("POST", "/users/alice/server")  # hub.url, hub.token, hub.password, hub.homes
    assert not hub.leftovers

The hub runs on 127.0.0.1 on free ports, with the committed config loaded from a temporary one
that adds only the ports, an API token (a service holding `scopes`), window.jupyterapp for
page scripts, and a marker: BN_HUB_TEST=<random> in the environment of the hub, its proxy, every
student's server and so every kernel. Its state, builds and homes go into workdir.

On exit the hub gets SIGTERM, as an admin stops it: it stops every server and the proxy. Any
process still carrying the marker 15 s later is listed in hub.leftovers and its process group
killed (SIGTERM, then SIGKILL); if anything survives even that, exiting raises. If the process
that started the hub dies without exiting cleanly (even SIGKILL), the hub gets SIGTERM (Linux's
parent-death signal) and stops the rest itself.
"""
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "jupyterhub_config.py"
PROXY = HERE / "node_modules" / ".bin" / "configurable-http-proxy"
INSTALL_HINT = "bash tools/setup.sh --hub (.ci/run does)"
START_TIMEOUT = 180     # s: the hub builds the student edition first; a busy 2-core machine is slow
STOP_TIMEOUT = 90       # s: the hub stops every server (SIGINT, SIGTERM after 10 s) and the proxy


def _die_with_parent():
    """In the hub's process (Linux): SIGTERM when the process that started it dies, even by
    SIGKILL, so a killed test run still stops the hub, which stops its servers and proxy."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def missing():
    """Why the hub cannot start here (not installed), or None."""
    import importlib.util
    if importlib.util.find_spec("jupyterhub") is None:
        return f"jupyterhub is not installed: {INSTALL_HINT}"
    if not os.access(PROXY, os.X_OK):
        return f"no configurable-http-proxy at {PROXY}: {INSTALL_HINT}"
    return None


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (each bound, then released together)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def marked_processes(marker):
    """Every live process whose environment holds BN_HUB_TEST=marker."""
    found = []
    for proc in psutil.process_iter():
        try:
            if (proc.environ().get("BN_HUB_TEST") == marker
                    and proc.status() != psutil.STATUS_ZOMBIE):
                found.append(proc)
        except (psutil.Error, OSError):
            pass
    return found


def describe(procs):
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
        except psutil.Error:
            out.append(f"{p.pid} (gone)")
    return out


def kill_groups(procs, timeout=15):
    """SIGTERM to each process's group, then SIGKILL to whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                os.killpg(os.getpgid(p.pid), sig)
            except (ProcessLookupError, PermissionError):
                pass
        _, procs = psutil.wait_procs(procs, timeout=timeout)
        if not procs:
            return


class LocalHub:
    def __init__(self, workdir, scopes=(), expose_app=True, log=print):
        self.workdir = Path(workdir)
        self.scopes = list(scopes)
        self.expose_app = expose_app
        self.say = log
        self.marker = secrets.token_hex(8)
        self.token = secrets.token_hex(24)
        self.password = secrets.token_hex(12)
        self.dir = self.workdir / "hub"
        self.homes = self.dir / "homes"
        self.log = self.workdir / "hub.log"
        self.proc = None
        self.leftovers = []
        self.version = None

    # -- the hub's REST API, with the test's token --
    def api(self, method, path, body=None, timeout=60):
        req = urllib.request.Request(f"{self.url}/hub/api{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read()
        return json.loads(text) if text else None

    def log_tail(self, n=3000):
        return self.log.read_text(errors="replace")[-n:]

    def _config(self, ports):
        path = self.workdir / "local_hub_config.py"
        lines = [
            "c = get_config()",
            f"load_subconfig({str(CONFIG)!r})",
            f"c.JupyterHub.port = {ports[0]}",
            f"c.JupyterHub.hub_port = {ports[1]}",
            f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{ports[2]}'",
            f"c.Spawner.environment.update({{'BN_HUB_TEST': {self.marker!r}}})",
        ]
        if self.expose_app:    # window.jupyterapp, as JupyterLab's own UI tests (Galata) read it
            lines.append("c.Spawner.args.append('--LabApp.expose_app_in_browser=True')")
        if self.scopes:
            lines += [
                f"c.JupyterHub.services = [{{'name': 'course-test', 'api_token': {self.token!r}}}]",
                "c.JupyterHub.load_roles = [{'name': 'course-test', 'services': ['course-test'], "
                f"'scopes': {self.scopes!r}}}]",
            ]
        path.write_text("\n".join(lines) + "\n")
        return path

    def __enter__(self):
        why = missing()
        if why:
            raise RuntimeError(why)
        self.workdir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(3)
        self.url = f"http://127.0.0.1:{ports[0]}"
        env = dict(os.environ, COURSE_HUB_DIR=str(self.dir), COURSE_HUB_PASSWORD=self.password,
                   BN_HUB_TEST=self.marker, TRAITLETS_APPLICATION_RAISE_CONFIG_FILE_ERROR="1")
        env.pop("JUPYTERHUB_API_TOKEN", None)
        t0 = time.monotonic()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(self._config(ports))],
                cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                try:
                    with urllib.request.urlopen(self.url + "/hub/api", timeout=5) as r:
                        self.version = json.loads(r.read())["version"]
                    break
                except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the hub exited with {self.proc.returncode} at start. "
                                       f"Log:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the hub did not answer within {START_TIMEOUT} s. "
                                       f"Log:\n{self.log_tail()}")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        self.say(f"[hub] JupyterHub {self.version} up in {time.monotonic() - t0:.1f} s at {self.url}")
        return self

    def stop(self):
        """Stop the hub (SIGTERM); kill whatever it left. Raises if a process survives SIGKILL."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.leftovers.append(f"{self.proc.pid} the hub itself, {STOP_TIMEOUT} s after SIGTERM")
        deadline = time.monotonic() + 15            # kernels may need a moment after their server
        while marked_processes(self.marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = marked_processes(self.marker)
        self.leftovers += describe(left)
        if self.proc.poll() is None:
            left.append(psutil.Process(self.proc.pid))
        kill_groups(left)
        self.proc.wait(timeout=30)
        self.say(f"[hub] stopped in {time.monotonic() - t0:.1f} s")
        still = marked_processes(self.marker)
        if still:
            raise RuntimeError(f"processes survived SIGKILL: {describe(still)}")

    def __exit__(self, *exc):
        self.stop()
        return False
