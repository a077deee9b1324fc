"""Hostile input against a live server, per protocol and, for FastCGI, per reader.

Each input goes to a running ``manage.py runfcgi`` (prefork, two workers at most) on
its own connection, which the client then half-closes. Whatever it is, the server
must answer or close within EXCHANGE_SECONDS, and after every batch it must still be
whole: the master alive, no more workers than maxchildren, each worker's memory
within MEMORY_GROWTH of what it had before, and a valid request answered. Bad input
may cost a log line or two, never a traceback per input.

The normal run tries the same EXAMPLES inputs per target every time (seed 0), within
SECONDS; ``scripts/fuzz`` runs many more under other seeds (RUNFCGI_FUZZ_EXAMPLES,
RUNFCGI_FUZZ_SEED, RUNFCGI_FUZZ_SECONDS) and prints the figures each run appends to
RUNFCGI_FUZZ_REPORT. A failure names the input, which ``generate()`` gives again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fuzz.inputs import generate
from tests.support import clients
from tests.support.net import free_port
from tests.support.processes import children_of
from tests.support.runner import Run, Runner

EXAMPLES = int(os.environ.get("RUNFCGI_FUZZ_EXAMPLES", "1000"))
SEED = int(os.environ.get("RUNFCGI_FUZZ_SEED", "0"))
SECONDS = float(os.environ.get("RUNFCGI_FUZZ_SECONDS", "20"))
BATCH = 25
EXCHANGE_SECONDS = 10.0
MEMORY_GROWTH = 64 * 1024 * 1024
LINES_PER_INPUT = 3
MAXCHILDREN = 2

TARGETS = {
    "fcgi": ("fcgi", {}),
    "fcgi-pure-python": ("fcgi", {"RUNFCGI_PURE_PYTHON": "1"}),
    "scgi": ("scgi", {}),
    "scgi-pure-python": ("scgi", {"RUNFCGI_PURE_PYTHON": "1"}),
    "ajp": ("ajp", {}),
}

REQUESTS = {"fcgi": clients.fcgi_request, "scgi": clients.scgi_request, "ajp": clients.ajp_request}


def rss(pid: int) -> int:
    """Resident memory in bytes; 0 for a process that has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Served:
    target: str
    protocol: str
    run: Run
    address: tuple[str, int]
    memory: dict[int, int] = field(default_factory=dict)
    most_memory: int = 0

    def workers(self) -> list[int]:
        return [pid for pid, state in children_of(self.run.proc.pid).items() if state != "Z"]

    def log_lines(self) -> int:
        return len(self.run.stderr.splitlines())

    def assert_whole(self, after: str) -> None:
        """The server is alive, within its limits, and answers a valid request."""
        assert self.run.proc.poll() is None, (
            f"the server died after {after}\n{self.run.describe()}"
        )
        reply = REQUESTS[self.protocol](self.address, path="/echo/", timeout=EXCHANGE_SECONDS)
        assert reply.status == 200, f"after {after}: {reply.status}"
        workers = self.workers()
        assert len(workers) <= MAXCHILDREN, f"after {after}: workers {workers}"
        for pid in workers:
            now = rss(pid)
            self.most_memory = max(self.most_memory, now)
            before = self.memory.setdefault(pid, now)
            assert now - before < MEMORY_GROWTH, f"worker {pid} grew to {now} bytes after {after}"


@pytest.fixture(scope="module", params=list(TARGETS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    protocol, env = TARGETS[request.param]
    runner = Runner(Path(str(tmp_path_factory.mktemp("fuzz"))))
    port = free_port()
    run = runner.serve(
        f"protocol={protocol}",
        "method=prefork",
        "host=127.0.0.1",
        f"port={port}",
        "daemonize=false",
        f"maxchildren={MAXCHILDREN}",
        f"maxspare={MAXCHILDREN}",
        "minspare=1",
        address=("127.0.0.1", port),
        env=env,
    )
    served = Served(request.param, protocol, run, ("127.0.0.1", port))
    try:
        served.assert_whole("starting")
        yield served
    finally:
        runner.cleanup()


def test_hostile_input_leaves_the_server_whole(served: Served) -> None:
    lines_before = served.log_lines()
    started = time.monotonic()
    tried = 0
    for index in range(EXAMPLES):
        if time.monotonic() - started > SECONDS:
            break
        name = SEED * 10_000_000 + index
        data = generate(served.protocol, name)
        try:
            clients.raw_exchange(served.address, data, timeout=EXCHANGE_SECONDS)
        except TimeoutError:
            pytest.fail(
                f"no answer and no close within {EXCHANGE_SECONDS} s for input {name} "
                f"(tests.fuzz.inputs.generate({served.protocol!r}, {name})): {data[:2000]!r}"
            )
        tried += 1
        if tried % BATCH == 0:
            served.assert_whole(f"{tried} inputs, the last {name}")
    served.assert_whole(f"all {tried} inputs")
    lines = served.log_lines() - lines_before
    report = os.environ.get("RUNFCGI_FUZZ_REPORT")
    if report:
        figures = {
            "target": served.target,
            "seed": SEED,
            "inputs": tried,
            "seconds": round(time.monotonic() - started, 1),
            "log_lines": lines,
            "most_worker_rss_mb": round(served.most_memory / 2**20, 1),
        }
        with open(report, "a") as out:
            out.write(json.dumps(figures) + "\n")
    assert lines <= LINES_PER_INPUT * tried, served.run.stderr[-3000:]
