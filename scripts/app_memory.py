"""Memory (and compare speed) of the app process, measured from outside: `python app.py` on the bundled weights.

    python scripts/app_memory.py                    # table
    python scripts/app_memory.py --json             # ... and one JSON object as the last line
    python scripts/app_memory.py --threads 2        # TINYSTORIES_THREADS=2 for the app
    python scripts/app_memory.py --env MALLOC_ARENA_MAX=2   # any extra environment for the app

Starts `python app.py` offline (HF_HUB_OFFLINE=1, no TINYSTORIES_APPROACH1/2, so checkpoints/approach1 and
approach2) on a free 127.0.0.1 port, waits until it serves, and reads VmRSS (resident now) and VmHWM (peak
resident) from /proc/<pid>/status, summed over the app and its child processes, if any:

    start       right after start-up: both models loaded, nothing generated yet
    after       after one /generate and one /compare call through gradio_client (the tag detector loads on
                the first finished story), by keyword, seed fixed

and the /compare call's speed: tokens of both stories / seconds (with --parallel N, then N /compare calls at
once, as N users would). Then stops the app. The budget the
project holds the app to is BUDGET_MB of RSS (tests/test_app_memory.py checks it).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_MB = 600
TAGS = ["Dialogue", "Twist"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/<pid>/task/<tid>/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of one process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def memory_mb(pid: int) -> dict:
    """{'rss_mb', 'hwm_mb', 'processes'} summed over the process tree (hwm: the sum of each one's peak)."""
    rss = hwm = 0
    pids = process_tree(pid)
    for p in pids:
        try:
            kb = status_kb(p)
        except OSError:  # exited meanwhile
            continue
        rss, hwm = rss + kb.get("VmRSS", 0), hwm + kb.get("VmHWM", 0)
    return {"rss_mb": round(rss / 1024, 1), "hwm_mb": round(hwm / 1024, 1), "processes": len(pids)}


def app_env(threads: int | None = None, extra: dict | None = None) -> dict:
    """The app's environment: offline, no analytics, bundled weights and the app's default threads (whatever the
    shell sets; `threads` sets TINYSTORIES_THREADS), unbuffered."""
    drop = ("TINYSTORIES_APPROACH1", "TINYSTORIES_APPROACH2", "TINYSTORIES_THREADS")  # the app's defaults
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    if threads is not None:
        env["TINYSTORIES_THREADS"] = str(threads)
    env.update(extra or {})
    return env


class App:
    """`python app.py` on a free port; a context manager that stops it (SIGINT, then SIGKILL) on exit."""

    def __init__(self, env: dict, timeout: float = 180):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1",
                                      "--port", str(self.port)], cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.seconds_to_serve = self._wait(timeout)

    def _wait(self, timeout: float) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with code {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"app.py did not serve {self.url} within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]

    def memory(self) -> dict:
        return memory_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def tokens_in(details: str) -> int:
    """The story's token count from the details markdown ('**Length:** 120 words, 151 tokens')."""
    found = re.search(r"(\d+) tokens", details)
    return int(found[1]) if found else 0


def measure(threads: int | None = None, extra_env: dict | None = None, max_tokens: int = 350, seed: int = 3,
            parallel: int = 0) -> dict:
    from gradio_client import Client

    with App(app_env(threads, extra_env)) as app:
        result = {"threads": threads, "env": extra_env or {}, "seconds_to_serve": round(app.seconds_to_serve, 1),
                  "start": app.memory()}
        client = Client(app.url, verbose=False)
        settings = dict(temperature=0.8, top_p=0.9, max_tokens=max_tokens, eos_bias_after=200, seed=seed)
        t = time.perf_counter()
        _, _, details = client.predict(tags=TAGS, **settings, approach=2, api_name="/generate")
        gen_s, gen_tokens = time.perf_counter() - t, tokens_in(details)
        t = time.perf_counter()
        _, _, _, details1, details2 = client.predict(tags=TAGS, **settings, api_name="/compare")
        cmp_s, cmp_tokens = time.perf_counter() - t, tokens_in(details1) + tokens_in(details2)
        result["after"] = app.memory()
        if parallel > 1:  # load: `parallel` /compare calls at once, from as many clients
            clients = [Client(app.url, verbose=False) for _ in range(parallel)]
            t = time.perf_counter()
            jobs = [c.submit(tags=TAGS, **{**settings, "seed": seed + i}, api_name="/compare")
                    for i, c in enumerate(clients)]
            outs = [j.result() for j in jobs]
            par_s = time.perf_counter() - t
            par_tokens = sum(tokens_in(o[3]) + tokens_in(o[4]) for o in outs)
            result["parallel_compare"] = {"calls": parallel, "tokens": par_tokens, "seconds": round(par_s, 2),
                                          "tokens_per_s": round(par_tokens / par_s, 1)}
            result["after_parallel"] = app.memory()
            for c in clients:
                c.close()
        result["generate"] = {"tokens": gen_tokens, "seconds": round(gen_s, 2),
                              "tokens_per_s": round(gen_tokens / gen_s, 1)}
        result["compare"] = {"tokens": cmp_tokens, "seconds": round(cmp_s, 2),
                             "tokens_per_s": round(cmp_tokens / cmp_s, 1)}
        client.close()
    result["budget_mb"] = BUDGET_MB
    points = [result[k]["rss_mb"] for k in ("start", "after", "after_parallel") if k in result]
    result["within_budget"] = max(points) <= BUDGET_MB
    return result


def table(r: dict) -> str:
    lines = [f"app.py, bundled weights, threads: {r['threads'] or 'app default'}"
             + (f", env {' '.join(f'{k}={v}' for k, v in r['env'].items())}" if r["env"] else "")
             + f"; served after {r['seconds_to_serve']} s",
             f"{'point':<28} {'VmRSS MB':>9} {'VmHWM MB':>9} {'procs':>6}"]
    for key, label in [("start", "start (both models loaded)"), ("after", "after /generate + /compare")]:
        m = r[key]
        lines.append(f"{label:<28} {m['rss_mb']:>9.1f} {m['hwm_mb']:>9.1f} {m['processes']:>6}")
    if "after_parallel" in r:
        m, label = r["after_parallel"], f"after {r['parallel_compare']['calls']} x /compare at once"
        lines.append(f"{label:<28} {m['rss_mb']:>9.1f} {m['hwm_mb']:>9.1f} {m['processes']:>6}")
    for key in ("generate", "compare", "parallel_compare"):
        if key in r:
            g, name = r[key], f"/{key}" if key != "parallel_compare" else f"{r[key]['calls']} x /compare at once"
            lines.append(f"{name}: {g['tokens']} tokens in {g['seconds']} s = {g['tokens_per_s']} tokens/s "
                         "(incl. HTTP)")
    lines.append(f"budget {r['budget_mb']} MB RSS: {'OK' if r['within_budget'] else 'OVER'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--threads", type=int, default=None, help="TINYSTORIES_THREADS for the app (default: unset)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for the app")
    p.add_argument("--max-tokens", type=int, default=350)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--parallel", type=int, default=0, metavar="N",
                   help="then N /compare calls at once (load: N users), their tokens/s and the RSS after them")
    args = p.parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in args.env)
    r = measure(args.threads, extra, args.max_tokens, args.seed, args.parallel)
    print(table(r))
    if args.json:
        print(json.dumps(r))
    return 0 if r["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
