#!/usr/bin/env python3
"""Sizing a hub for a class: memory per student and Run All time with N students at once.

    .venv/bin/python tools/bench_hub.py             # 1, 5 and 10 students; notebooks 02 and 06;
                                                    # rewrites the sizing section of docs/teaching.md
    .venv/bin/python tools/bench_hub.py --students 1 2 --notebooks 02 --no-write    # a quick look

A benchmark, not a test: nothing is asserted. It loads the machine for several minutes; run it
on a quiet one (it prints the load average before and after).

It starts the course's one-machine hub (tools/hub/jupyterhub_config.py, through
tools/hub/local_hub.py, needs `bash tools/setup.sh --hub`), starts the servers of students
1..N through the hub's API, and for each notebook lets every student press Run All at the same
moment: one kernel per student (a notebook session of their own server, reached through the
proxy), every code cell of their own copy sent in order, each after the previous one's reply,
as JupyterLab's Run All does; no browser runs on the machine (in a class the browsers run on the
students' laptops). Measured per student:
- Run All: from the first cell sent to the last reply (the kernel already started), and the
  kernel's start (session created to first reply);
- CPU seconds (user + system) the student's server and kernel used during the Run All;
- memory after the run: RSS of the student's server and of its kernel (what `top` shows); and
  PSS (each shared page split between the processes that share it: the honest share of
  torch's libraries, which every kernel maps), summed over server + kernel;
- the machine's used memory (psutil's "used") before the hub and at the end of each step.
The hub and its proxy are reported once (they do not grow with the class).
"""
import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
import importlib.util

import nbformat
import psutil
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "teaching.md"
BEGIN = "<!-- tools/bench_hub.py writes from here -->"
END = "<!-- tools/bench_hub.py writes up to here -->"
NOTEBOOKS = {"02": "02_sigmoid_linear_region", "06": "06_why_batchnorm_works"}
MB = 1024 * 1024
RUN_TIMEOUT = 1800          # s: one notebook for every student at once, at worst


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


local_hub = _load("local_hub", ROOT / "tools" / "hub" / "local_hub.py")


# ---------------------------------------------------------------------------
# One student's kernel, driven over the Jupyter server's websocket
# ---------------------------------------------------------------------------

class Student:
    def __init__(self, hub, name):
        self.hub, self.name = hub, name
        self.base = f"{hub.url}/user/{name}"
        self.headers = {"Authorization": f"token {hub.token}"}
        self.session = uuid.uuid4().hex

    async def request(self, method, path, body=None):
        req = HTTPRequest(self.base + path, method=method, headers=self.headers,
                          body=None if body is None else json.dumps(body), request_timeout=300)
        resp = await AsyncHTTPClient().fetch(req)
        return json.loads(resp.body) if resp.body else None

    async def open(self, nb_path):
        """A notebook session (a new kernel) for nb_path; waits for the kernel's first reply."""
        t0 = time.monotonic()
        s = await self.request("POST", "/api/sessions", {
            "path": nb_path, "type": "notebook", "name": Path(nb_path).name,
            "kernel": {"name": "python3"}})
        self.session_id, self.kernel_id = s["id"], s["kernel"]["id"]
        url = (self.base.replace("http://", "ws://") +
               f"/api/kernels/{self.kernel_id}/channels?session_id={self.session}")
        self.ws = await websocket_connect(HTTPRequest(url, headers=self.headers),
                                          max_message_size=256 * MB)
        for _ in range(120):                       # kernel_info until the kernel answers
            try:
                await asyncio.wait_for(self.call("kernel_info_request", {}), 5)
                break
            except asyncio.TimeoutError:
                continue
        self.kernel_start_s = time.monotonic() - t0

    async def call(self, msg_type, content):
        msg_id = uuid.uuid4().hex
        await self.ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "username": self.name,
                       "session": self.session, "date": "", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "content": content, "channel": "shell",
            "buffers": []}))
        while True:
            raw = await self.ws.read_message()
            if raw is None:
                raise RuntimeError(f"{self.name}: the kernel's websocket closed")
            if isinstance(raw, bytes):             # a message with binary buffers (a widget's)
                continue
            msg = json.loads(raw)
            if (msg.get("channel") == "shell" and msg["parent_header"].get("msg_id") == msg_id):
                return msg["content"]

    async def run_all(self, cells):
        t0 = time.monotonic()
        for i, (source, may_fail) in enumerate(cells):
            reply = await self.call("execute_request", {
                "code": source, "silent": False, "store_history": True, "user_expressions": {},
                "allow_stdin": False, "stop_on_error": True})
            if reply["status"] != "ok" and not may_fail:
                raise RuntimeError(f"{self.name}: cell {i} failed: {reply.get('ename')}: "
                                   f"{reply.get('evalue')}")
        self.run_all_s = time.monotonic() - t0

    async def close(self):
        self.ws.close()
        await self.request("DELETE", f"/api/sessions/{self.session_id}")


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------

def student_processes(hub, name):
    """{'server': Process, 'kernels': [Process]} of the student (HOME is their home)."""
    home = str(hub.homes / name)
    found = {"server": None, "kernels": []}
    for p in local_hub.marked_processes(hub.marker):
        try:
            if p.environ().get("HOME") != home:
                continue
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "ipykernel_launcher" in cmd:
            found["kernels"].append(p)
        elif "jupyterhub-singleuser" in cmd:
            found["server"] = p
    return found


def memory_mb(procs):
    rss = pss = 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss / MB, pss / MB


def hub_and_proxy_mb(hub):
    """RSS and PSS of the hub and its proxy: the marked processes outside the students' homes."""
    procs = []
    for p in local_hub.marked_processes(hub.marker):
        try:
            if not p.environ().get("HOME", "").startswith(str(hub.homes)):
                procs.append(p)
        except psutil.Error:
            pass
    return memory_mb(procs)


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------

def start_servers(hub, names):
    for name in names:
        hub.api("POST", f"/users/{name}")
        hub.api("POST", f"/users/{name}/server")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ready = [n for n in names
                 if (hub.api("GET", f"/users/{n}")["servers"].get("") or {}).get("ready")]
        if len(ready) == len(names):
            return
        time.sleep(1)
    raise RuntimeError(f"servers not ready after 600 s: {sorted(set(names) - set(ready))}")


def cells_of(path):
    nb = nbformat.read(path, as_version=4)
    return [(c.source, "raises-exception" in c.metadata.get("tags", []))
            for c in nb.cells if c.cell_type == "code"]


async def one_step(hub, names, notebook):
    nb_path = f"bn-course/notebooks/{notebook}.ipynb"
    students = [Student(hub, n) for n in names]
    await asyncio.gather(*(s.open(nb_path) for s in students))
    cells = cells_of(hub.homes / names[0] / nb_path)
    procs = {s.name: student_processes(hub, s.name) for s in students}
    cpu0 = {name: cpu_s(p) for name, p in procs.items()}
    await asyncio.wait_for(asyncio.gather(*(s.run_all(cells) for s in students)), RUN_TIMEOUT)
    cpu1 = {name: cpu_s(p) for name, p in procs.items()}
    mem = []
    for s in students:
        p = procs[s.name]
        server = memory_mb([p["server"]] if p["server"] else [])
        kernel = memory_mb(p["kernels"])
        mem.append({"server_rss": server[0], "kernel_rss": kernel[0],
                    "pss": server[1] + kernel[1]})
    used = psutil.virtual_memory().used / MB
    await asyncio.gather(*(s.close() for s in students))
    return {"run_all": [s.run_all_s for s in students],
            "cpu": [cpu1[s.name] - cpu0[s.name] for s in students],
            "kernel_start": [s.kernel_start_s for s in students], "memory": mem, "used_mb": used}


def cpu_s(procs):
    """CPU seconds (user + system) used so far by a student's server and kernel."""
    total = 0.0
    for p in [procs["server"]] + procs["kernels"]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except (psutil.Error, AttributeError):
            pass
    return total


def run(counts, notebooks, log=print):
    results = {"date": date.today().isoformat(), "load_before": os.getloadavg(), "used_before_mb": psutil.virtual_memory().used / MB,
               "steps": []}
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        with local_hub.LocalHub(tmp, scopes=["admin:users", "admin:servers", "servers",
                                             "access:servers"], expose_app=False, log=log) as hub:
            results["hub_mb"] = hub_and_proxy_mb(hub)
            started = []
            for n in counts:
                names = [f"student{i + 1:02d}" for i in range(n)]
                t0 = time.monotonic()
                start_servers(hub, [x for x in names if x not in started])
                started = sorted(set(started) | set(names))
                log(f"[bench] {n} servers ready ({time.monotonic() - t0:.0f} s)")
                for key in notebooks:
                    step = asyncio.run(one_step(hub, names, NOTEBOOKS[key]))
                    step.update(students=n, notebook=key)
                    results["steps"].append(step)
                    log(f"[bench] {n} students, {key}: Run All median "
                        f"{statistics.median(step['run_all']):.1f} s, max {max(step['run_all']):.1f} s; "
                        f"per student {statistics.mean(m['server_rss'] for m in step['memory']):.0f} MB "
                        f"server + {statistics.mean(m['kernel_rss'] for m in step['memory']):.0f} MB "
                        f"kernel RSS, {statistics.mean(m['pss'] for m in step['memory']):.0f} MB PSS")
            results["hub_mb_end"] = hub_and_proxy_mb(hub)
        results["leftovers"] = hub.leftovers
    results["load_after"] = os.getloadavg()
    return results


# ---------------------------------------------------------------------------
# The table and the rule of thumb
# ---------------------------------------------------------------------------

def table(results):
    lines = ["| students at once | notebook | Run All, median (s) | slowest (s) | CPU per student's Run All (core-s) "
             "| kernel start, median (s) | server RSS (MB) | kernel RSS (MB) | server + kernel PSS (MB) "
             "| machine's used memory (GB) |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in results["steps"]:
        m = s["memory"]
        lines.append(
            f"| {s['students']} | {s['notebook']} | {statistics.median(s['run_all']):.1f} | "
            f"{max(s['run_all']):.1f} | {statistics.median(s['cpu']):.1f} | "
            f"{statistics.median(s['kernel_start']):.1f} | "
            f"{statistics.mean(x['server_rss'] for x in m):.0f} | "
            f"{statistics.mean(x['kernel_rss'] for x in m):.0f} | "
            f"{statistics.mean(x['pss'] for x in m):.0f} | {s['used_mb'] / 1024:.1f} |")
    return "\n".join(lines)


def section(results):
    cores = os.cpu_count()
    mem = psutil.virtual_memory().total / 1024 ** 3
    steps = results["steps"]
    pss = max(statistics.mean(x["pss"] for x in s["memory"]) for s in steps)
    rss = max(statistics.mean(x["server_rss"] + x["kernel_rss"] for x in s["memory"]) for s in steps)
    per_gb = 1024 / pss
    top = max(s["students"] for s in steps)
    used = [s for s in steps if s["students"] == top]
    grown = (max(s["used_mb"] for s in used) - results["used_before_mb"]) / top
    rule = []
    for key in sorted({s["notebook"] for s in steps}):
        cpu = max(statistics.median(s["cpu"]) for s in steps if s["notebook"] == key)
        rule.append(f"- CPU, notebook {key}: one student's Run All costs about {cpu:.0f} core-seconds "
                    f"(the largest median measured), so everyone's Run All at the same moment "
                    f"finishes within a minute for up to about {60 / cpu:.1f} students per core, "
                    f"on a machine doing nothing else.")
    return f"""{BEGIN}
Measured by `.venv/bin/python tools/bench_hub.py` on {results['date']}, on this machine
({cores} cores, {mem:.0f} GB) with the one-machine hub of `tools/hub/jupyterhub_config.py`: the
servers of students 1..N started, then for each notebook all N students pressing Run All at the
same moment (one kernel each, reached through the proxy; no browser on the machine: in a class
the browsers run on the students' laptops). The machine was shared with other work (load
average {results['load_before'][0]:.1f} before, {results['load_after'][0]:.1f} after, on 2 cores), so
the wall-clock times are upper bounds, several times what a quiet machine gives (06 alone runs
in about 14 s there, [benchmarks.md](benchmarks.md)). The CPU seconds each student's server and
kernel used depend much less on the other work (they still grow under contention: numpy's and
torch's worker threads spin while they wait), and the memory not at all. Memory after the run, mean per
student: RSS counts the libraries every kernel maps (torch) once per process, PSS splits each
shared page between the processes sharing it. The hub and its proxy: {results['hub_mb'][0]:.0f} MB
RSS at the start, {results['hub_mb_end'][0]:.0f} MB at the end.

{table(results)}

Rule of thumb:

- memory: about {pss:.0f} MB per student (PSS, the largest mean measured; {rss:.0f} MB if you add
  up RSS; the machine's used memory grew by {grown:.0f} MB per student with {top} of them), so
  about {per_gb:.1f} students per GB of RAM after about 1 GB for the system and the hub: a
  {mem:.0f} GB machine like this one holds about {int((mem - 1) * per_gb)} students.
{chr(10).join(rule)}
- A class reading, dragging sliders and running cells one by one rarely computes all at the
  same moment: memory is the limit to plan for, CPU sets how long a simultaneous Run All waits.
{END}"""


def write(results):
    text = DOC.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section(results) + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section(results) + "\n"
    DOC.write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--notebooks", nargs="+", default=["02", "06"], choices=sorted(NOTEBOOKS))
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/teaching.md")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--from-json", help="measure nothing: write the section from an earlier --json")
    args = parser.parse_args()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        results = run(sorted(args.students), args.notebooks, log=log)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(section(results))
    if results["leftovers"]:
        print(f"(the hub left processes behind, killed: {results['leftovers']})", file=sys.stderr)
    if not args.no_write:
        write(results)
        print(f"wrote {DOC.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
