"""Instructions per request of a FastCGI or SCGI worker, counted by valgrind's callgrind.

Requests per second and even CPU time move with whatever else the machine is doing;
the number of instructions a worker executes for a request does not, for the same
build, request and environment. This starts each chosen server under callgrind with
one worker process, warms it up, then counts the instructions its worker executes
while it serves N identical ``hello`` requests (with the parameters nginx sends) over
its unix socket, one connection each, and prints them per request, with Django's own
share: its WSGI handler called in a loop with no server. Each server's own part is
compared with uWSGI's in the same protocol. Instructions are not time
(a cache miss costs more than an add), but a change that removes instructions from
the worker shows here in one run, where the load benchmark needs many.

    python -m benchmarks.instructions
    python -m benchmarks.instructions --servers runfcgi-fcgi-prefork,uwsgi-fastcgi -n 500
    python -m benchmarks.instructions --servers runfcgi-scgi-prefork,uwsgi-scgi -n 500
    python -m benchmarks.instructions --servers runfcgi-fcgi-prefork --runfcgi-options=status=/s

It needs valgrind (Debian package ``valgrind``) and takes a few minutes: programs run
some fifty times slower under it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.run import ROOT, children, tool
from benchmarks.views import HELLO

# What nginx sends with docs/configs/nginx-fastcgi.conf for GET /hello/.
PARAMS = {
    "QUERY_STRING": "",
    "REQUEST_METHOD": "GET",
    "CONTENT_TYPE": "",
    "CONTENT_LENGTH": "",
    "SCRIPT_NAME": "",
    "REQUEST_URI": "/hello/",
    "DOCUMENT_URI": "/hello/",
    "DOCUMENT_ROOT": "/usr/share/nginx/html",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REQUEST_SCHEME": "http",
    "GATEWAY_INTERFACE": "CGI/1.1",
    "SERVER_SOFTWARE": "nginx/1.22.1",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "51234",
    "SERVER_ADDR": "127.0.0.1",
    "SERVER_PORT": "8000",
    "SERVER_NAME": "localhost",
    "REDIRECT_STATUS": "200",
    "PATH_INFO": "/hello/",
    "HTTP_HOST": "127.0.0.1:8000",
    "HTTP_USER_AGENT": "wrk",
}
WARM_UP = 200
EXTRA_OPTIONS: list[str] = []
"""--runfcgi-options: added to each runfcgi server's command line."""
START_SECONDS = 300.0


def fastcgi_request(params: dict[str, str]) -> bytes:
    """One FastCGI request with an empty body, as nginx sends it: begin, parameters,
    their end, the body's end."""

    def record(kind: int, content: bytes = b"") -> bytes:
        padding = -len(content) % 8
        return struct.pack("!BBHHBx", 1, kind, 1, len(content), padding) + content + bytes(padding)

    def length(n: int) -> bytes:
        return bytes([n]) if n < 128 else struct.pack("!I", n | 0x80000000)

    pairs = b"".join(
        length(len(n)) + length(len(v)) + n + v
        for n, v in ((k.encode(), v.encode()) for k, v in params.items())
    )
    return record(1, struct.pack("!HB5x", 1, 0)) + record(4, pairs) + record(4) + record(5)


def scgi_request(params: dict[str, str]) -> bytes:
    """The same request over SCGI, as nginx's scgi_pass sends it: CONTENT_LENGTH first,
    then SCGI, then the parameters, in one netstring; no body."""
    fields = {"CONTENT_LENGTH": "0", "SCGI": "1"} | {
        name: value for name, value in params.items() if name != "CONTENT_LENGTH"
    }
    head = b"".join(n.encode() + b"\0" + v.encode() + b"\0" for n, v in fields.items())
    return str(len(head)).encode() + b":" + head + b","


def send_requests(path: Path, count: int, request: bytes) -> None:
    for _ in range(count):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(60.0)
            sock.connect(str(path))
            sock.sendall(request)
            answer = b"".join(iter(lambda sock=sock: sock.recv(65536), b""))
        if HELLO not in answer:
            raise RuntimeError(f"unexpected answer: {answer[:200]!r}")


@dataclass(frozen=True)
class Server:
    name: str
    command: Callable[[Path], list[str]]
    env: dict[str, str]
    stop: signal.Signals
    forks_worker: bool
    request: Callable[[dict[str, str]], bytes] = fastcgi_request
    baseline: str = "uwsgi-fastcgi"
    """The server whose own part this one's is compared with: uWSGI, same protocol."""


def runfcgi(sock: Path, protocol: str = "fcgi") -> list[str]:
    return [
        sys.executable,
        str(ROOT / "testproject" / "manage.py"),
        "runfcgi",
        f"protocol={protocol}",
        "method=prefork",
        f"socket={sock}",
        "daemonize=false",
        "minspare=1",
        "maxspare=1",
        "maxchildren=1",
        *EXTRA_OPTIONS,
    ]


def runfcgi_scgi(sock: Path) -> list[str]:
    return runfcgi(sock, "scgi")


def uwsgi(sock: Path, mode: str = "fastcgi") -> list[str]:
    return [
        tool("uwsgi"),
        f"--{mode}-socket={sock}",
        "--processes=1",
        "--module=benchmarks.wsgi:application",
        "--need-app",
        "--disable-logging",
    ]


SERVERS = {
    server.name: server
    for server in (
        Server("runfcgi-fcgi-prefork", runfcgi, {}, signal.SIGTERM, True),
        Server(
            "runfcgi-fcgi-pure-python",
            runfcgi,
            {"RUNFCGI_PURE_PYTHON": "1"},
            signal.SIGTERM,
            True,
        ),
        Server("uwsgi-fastcgi", uwsgi, {}, signal.SIGINT, False),
        Server(
            "runfcgi-scgi-prefork",
            runfcgi_scgi,
            {},
            signal.SIGTERM,
            True,
            scgi_request,
            "uwsgi-scgi",
        ),
        Server(
            "uwsgi-scgi",
            lambda sock: uwsgi(sock, "scgi"),
            {},
            signal.SIGINT,
            False,
            scgi_request,
            "uwsgi-scgi",
        ),
    )
}

DJANGO_LOOP = """
from django.core.wsgi import get_wsgi_application
from benchmarks.ceiling import BASE_ENVIRON, respond
handler = get_wsgi_application()
base = dict(BASE_ENVIRON, **PARAMS)
for _ in range(COUNT):
    respond(handler, base)
"""


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "testproject")])
    env.pop("PYTHONDEVMODE", None)
    return env


def instructions(dump: Path) -> int:
    match = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no instruction total in {dump}")
    return int(match.group(1))


def callgrind(directory: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        f"--callgrind-out-file={directory}/callgrind.%p",
    ]


def count_server(server: Server, count: int, directory: Path) -> float:
    """Instructions per request in the worker, from counters zeroed after a warm-up."""
    sock = directory / f"{server.name}.sock"
    log = directory / f"{server.name}.log"
    env = environment() | server.env
    with log.open("wb") as out:
        proc = subprocess.Popen(
            callgrind(directory) + server.command(sock),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
        request = server.request(PARAMS)
        send_requests(sock, WARM_UP, request)
        workers = children(proc.pid) if server.forks_worker else [proc.pid]
        if len(workers) != 1:
            raise RuntimeError(f"{server.name}: expected one worker, found {workers}")
        worker = str(workers[0])
        subprocess.run(["callgrind_control", "--zero", worker], check=True, capture_output=True)
        send_requests(sock, count, request)
        subprocess.run(["callgrind_control", "--dump", worker], check=True, capture_output=True)
        [dump] = directory.glob(f"callgrind.{worker}.*")
        return instructions(dump) / count
    finally:
        os.killpg(proc.pid, server.stop)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def count_django(count: int, directory: Path) -> float:
    """Instructions per request of Django's handler alone: two loops, subtracted."""
    totals = []
    for loops in (count, 2 * count):
        out = directory / f"django-{loops}"
        script = f"PARAMS = {PARAMS!r}\nCOUNT = {loops}\n{DJANGO_LOOP}"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        subprocess.run(
            [*command, sys.executable, "-c", script],
            check=True,
            capture_output=True,
            env=environment(),
        )
        totals.append(instructions(out))
    return (totals[1] - totals[0]) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__)
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"from {','.join(SERVERS)}")
    parser.add_argument("-n", "--requests", type=int, default=1000, help="requests counted")
    parser.add_argument(
        "--runfcgi-options",
        default="",
        metavar="WORDS",
        help="more key=value options for the runfcgi servers, such as 'status=/status'",
    )
    args = parser.parse_args(argv)
    EXTRA_OPTIONS[:] = args.runfcgi_options.split()
    names = args.servers.split(",")
    unknown = set(names) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {','.join(SERVERS)}")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (Debian package valgrind).")
    directory = Path(tempfile.mkdtemp(prefix="bench-instructions-", dir="/tmp"))
    try:
        django = count_django(args.requests, directory)
        results = {}
        for name in names:
            results[name] = count_server(SERVERS[name], args.requests, directory)
            print(f"  {name:26} {results[name]:10.0f}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    shown = f", runfcgi {args.runfcgi_options}" if args.runfcgi_options else ""
    print(f"hello, {args.requests} requests, one connection each, counted by callgrind{shown}")
    head = f"{'server':26} {'per request':>12} {'server part':>12} {'/uwsgi':>8}"
    print(f"{head} {'part/uwsgi':>11}")
    for name, total in results.items():
        base = results.get(SERVERS[name].baseline)
        share = f"{total / base:7.2f}x" if base else ""
        part = f"{(total - django) / (base - django):10.2f}x" if base and base > django else ""
        print(f"{name:26} {total:12.0f} {total - django:12.0f} {share:>8} {part:>11}")
    print(f"{'Django handler alone':26} {django:12.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
