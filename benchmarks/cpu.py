"""CPU time per request of each server, from /proc: steadier than requests/s on a busy machine.

Requests per second depend on what else the machine is doing; the CPU time a server's
processes spend per request mostly does not. This starts the chosen servers behind nginx
like the benchmark does, loads each in turn with wrk and prints, per server, the CPU
microseconds per request of its workers, of its master process (if it has one) and of
nginx, with the requests per second for reference.

    python -m benchmarks.cpu --servers runfcgi-fcgi-prefork,gunicorn-sync --view hello
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.run import SERVERS, VIEWS, Backend, serving
from benchmarks.wrk import Scripts, parse_wrk, run_wrk

TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def group_cpu(pgid: int) -> dict[int, float]:
    """pid -> user + system CPU microseconds, for every process of a process group."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        # After the command name: state, ppid, pgrp, ..., utime (12th), stime (13th).
        if fields is not None and int(fields[2]) == pgid:
            found[int(entry.name)] = (int(fields[11]) + int(fields[12])) * TICK_US
    return found


@dataclass
class Usage:
    rps: float
    worker_us: float
    master_us: float
    nginx_us: float


def measure_once(
    backend: Backend, view_name: str, connections: int, seconds: int, scripts: Scripts
) -> Usage:
    view = VIEWS[view_name]
    pgid, nginx_pgid = backend.proc.pid, backend.nginx_pid
    before, nginx_before = group_cpu(pgid), group_cpu(nginx_pgid)
    output = run_wrk(backend.port, view.path, connections, seconds, scripts.of(view.method))
    after, nginx_after = group_cpu(pgid), group_cpu(nginx_pgid)
    sample = parse_wrk(output)
    if sample.errors or not sample.requests:
        raise RuntimeError(
            f"{backend.spec.name}: {sample.errors} errors in {sample.requests} requests"
        )

    def spent(pids: set[int]) -> float:
        return sum(after[pid] - before.get(pid, 0.0) for pid in pids)

    workers = set(after) - {pgid} if len(after) > 1 else set(after)
    master = {pgid} if len(after) > 1 else set()
    nginx = sum(nginx_after[pid] - nginx_before.get(pid, 0.0) for pid in nginx_after)
    requests = sample.requests
    return Usage(sample.rps, spent(workers) / requests, spent(master) / requests, nginx / requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu", description=__doc__)
    parser.add_argument("--servers", default="runfcgi-fcgi-prefork,gunicorn-sync,uwsgi-fastcgi")
    parser.add_argument("--view", default="hello", choices=sorted(VIEWS))
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    names = args.servers.split(",")
    unknown = set(names) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {','.join(SERVERS)}")
    directory = Path(tempfile.mkdtemp(prefix="bench-cpu-", dir="/tmp"))
    results: dict[str, list[Usage]] = {name: [] for name in names}
    try:
        scripts = Scripts.write(directory)
        with serving(names, directory) as backends:
            for backend in backends.values():  # warm up: imports, caches, first requests
                view = VIEWS[args.view]
                run_wrk(backend.port, view.path, args.connections, 1, scripts.of(view.method))
            for _ in range(args.repeat):
                for name, backend in backends.items():
                    usage = measure_once(
                        backend, args.view, args.connections, args.duration, scripts
                    )
                    results[name].append(usage)
                    print(
                        f"  {name:24} {usage.rps:8.1f} req/s  worker {usage.worker_us:6.1f}"
                        f"  master {usage.master_us:5.1f}  nginx {usage.nginx_us:5.1f} us/req",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    load = os.getloadavg()
    print(
        f"{args.view}, {args.connections} connections, {args.repeat} x {args.duration} s;"
        f" load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'server':24} {'req/s':>8} {'worker us':>10} {'master us':>10} {'nginx us':>9}")
    for name, samples in results.items():

        def median(attr: str, samples: list[Usage] = samples) -> float:
            return float(statistics.median(getattr(s, attr) for s in samples))

        print(
            f"{name:24} {median('rps'):8.1f} {median('worker_us'):10.1f}"
            f" {median('master_us'):10.1f} {median('nginx_us'):9.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
