"""Serve trivial jobs with a process model in a real process, and talk to it.

As a script: ``python -m tests.support.jobs MODEL SOCKET [name=value ...]`` binds a unix
socket at SOCKET, builds the server (ours or flup's) and calls run(). It writes to
stdout what run() returned and, from a ``finally`` block, which process cleaned up:
a worker that runs the caller's code shows up there.

Jobs read command lines: ``pid`` (reply "PID THREAD"), ``sleep S`` (reply, sleep,
"done"), ``stubborn S`` (like sleep, but ignores KeyboardInterrupt), ``raise`` (reply,
then raise). ``job=line`` serves one line per connection, ``job=persistent`` serves
lines until the client closes or ``stop_when_idle()`` is called.

As a module: starting such servers for a test, and the client side that talks to them
(what /proc shows of their processes is in tests/support/processes.py).
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import ROOT
from tests.support.processes import Captured, children_of, session_members

# Server side.


class LineJob:
    """Serves one command line, then closes the connection."""

    def __init__(self, sock: Any, addr: Any) -> None:
        # Our servers hand a job CPython's C socket; makefile() is socket.socket's.
        if not isinstance(sock, socket.socket):
            sock = socket.socket(fileno=sock.detach())
        self.sock = sock

    def run(self) -> None:
        with self.sock, self.sock.makefile("rb") as lines:
            line = lines.readline()
            if line:
                self.handle(line.decode())

    def serve_ready(self) -> bool:
        """As a protocol that cannot leave a connection between requests: all of it."""
        self.run()
        return False

    def stop_when_idle(self) -> None:
        """Nothing to do: the connection ends after its one line anyway."""

    watches: tuple[Any, ...] = ()
    """Told when each line, a request, begins and ends (watch_requests)."""

    def handle(self, line: str) -> None:
        for watch in self.watches:
            watch.request_begins({})
        try:
            self._handle(line)
        finally:
            for watch in self.watches:
                watch.request_ends(200, 0)

    def _handle(self, line: str) -> None:
        command, _, argument = line.strip().partition(" ")
        self.sock.sendall(f"{os.getpid()} {threading.get_ident()}\n".encode())
        if command == "sleep":
            time.sleep(float(argument))
        elif command == "stubborn":
            deadline = time.monotonic() + float(argument)
            while time.monotonic() < deadline:
                with suppress(KeyboardInterrupt):
                    time.sleep(0.05)
        elif command == "raise":
            raise RuntimeError("job failed on purpose")
        if command != "pid":
            self.sock.sendall(b"done\n")


class PersistentJob(LineJob):
    """Serves lines until the client closes, like a FastCGI keep-conn connection."""

    def __init__(self, sock: socket.socket, addr: Any) -> None:
        super().__init__(sock, addr)
        self.stopping = False
        self.idle = True

    def stop_when_idle(self) -> None:
        self.stopping = True
        if self.idle:
            with suppress(OSError):
                self.sock.shutdown(socket.SHUT_RD)

    def run(self) -> None:
        with self.sock, self.sock.makefile("rb") as lines:
            while True:
                self.idle = True
                if self.stopping:
                    return
                line = lines.readline()
                self.idle = False
                if not line:
                    return
                self.handle(line.decode())


class Jobs:
    """A protocol for the process models that serves test jobs: every client may connect."""

    name = "test jobs"

    def __init__(self, job: type[LineJob]) -> None:
        self._job = job
        self._watches: tuple[Any, ...] = ()

    def allows(self, addr: Any) -> bool:
        return True

    def connection(self, sock: socket.socket, addr: Any) -> LineJob:
        job = self._job(sock, addr)
        job.watches = self._watches
        return job

    def watch_requests(self, watch: Any) -> None:
        """Recycling counts requests: here each line a job serves; every watch added is
        told, as a protocol tells them."""
        self._watches = (*self._watches, watch)


# Our process models' limits under the names flup's constructors take, so that one
# command line starts either.
LIMITS = {
    "minSpare": "minspare",
    "maxSpare": "maxspare",
    "maxChildren": "maxchildren",
    "maxThreads": "maxchildren",
    "maxRequests": "maxrequests",
    "shutdownTimeout": "shutdowntimeout",
}


def build_server(model: str, job: type[LineJob], options: dict[str, str]) -> Any:
    from flup.server import preforkserver, threadedserver

    from django_runfcgi.workers import Limits
    from django_runfcgi.workers.hooks import Hooks
    from django_runfcgi.workers.prefork import PreforkMaster
    from django_runfcgi.workers.threaded import ThreadedServer

    kwargs: dict[str, Any] = {
        name: float(value) if name == "shutdownTimeout" else int(value)
        for name, value in options.items()
    }
    if model.startswith("flup-"):
        flup_class = {"flup-prefork": preforkserver.PreforkServer}.get(
            model, threadedserver.ThreadedServer
        )
        return flup_class(jobClass=job, jobArgs=(), **kwargs)

    def report_usr1() -> None:
        sys.stdout.write(f"usr1 in {os.getpid()}\n")
        sys.stdout.flush()

    limits = Limits(**{LIMITS[name]: value for name, value in kwargs.items()})
    model_class = PreforkMaster if model == "prefork" else ThreadedServer
    return model_class(Jobs(job), limits, Hooks(on_usr1=report_usr1))


def main(argv: list[str]) -> None:
    model, path, *words = argv
    options = dict(word.split("=", 1) for word in words)
    job = {"line": LineJob, "persistent": PersistentJob}[options.pop("job", "line")]
    server = build_server(model, job, options)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(128)
    try:
        result = server.run(sock)
        if model == "flup-threaded":
            server.shutdown()  # What flup's fcgi.py and scgi.py do after run().
        for pid in getattr(server, "retiring", ()):
            # After a reload the next master waits for the workers; here this process does.
            os.waitpid(pid, 0)
        sys.stdout.write(f"run returned {result} in {os.getpid()}\n")
    finally:
        sys.stdout.write(f"cleanup in {os.getpid()}\n")
        sys.stdout.flush()
        sock.close()


# Client side.


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def read_line(sock: socket.socket) -> str:
    """One reply line; empty at end of file. Reads a byte at a time: nothing is lost."""
    data = b""
    while not data.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            break
        data += byte
    return data.decode().strip()


def read_to_end(sock: socket.socket) -> list[str]:
    lines = []
    while line := read_line(sock):
        lines.append(line)
    return lines


def ask(path: str, line: str, timeout: float = 10.0) -> list[str]:
    """Send one command on a new connection; the reply lines until the server closes."""
    with connect(path, timeout) as sock:
        sock.sendall(line.encode() + b"\n")
        return read_to_end(sock)


def ask_all(path: str, lines: list[str], timeout: float = 10.0) -> tuple[float, list[list[str]]]:
    """Send every command at once on its own connection; seconds taken and the replies."""
    start = time.monotonic()
    socks = [connect(path, timeout) for _ in lines]
    replies: dict[socket.socket, bytes] = {}
    try:
        with selectors.DefaultSelector() as selector:
            for sock, line in zip(socks, lines, strict=True):
                sock.sendall(line.encode() + b"\n")
                sock.setblocking(False)
                replies[sock] = b""
                selector.register(sock, selectors.EVENT_READ)
            deadline = start + timeout
            while selector.get_map() and time.monotonic() < deadline:
                for key, _ in selector.select(deadline - time.monotonic()):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    sock = ready
                    try:
                        data = sock.recv(4096)
                    except ConnectionResetError:
                        data = b""
                    replies[sock] += data
                    if not data:
                        selector.unregister(sock)
            elapsed = time.monotonic() - start
            if selector.get_map():
                text = [replies[sock].decode() for sock in socks]
                raise AssertionError(f"no complete reply within {timeout} s: {text}")
    finally:
        for sock in socks:
            sock.close()
    return elapsed, [replies[sock].decode().splitlines() for sock in socks]


def pid_of(reply: list[str]) -> int:
    """The process that served a reply."""
    return int(reply[0].split()[0])


def probe(path: str, timeout: float = 2.0) -> bool:
    """Whether the server answers: one line is enough, a persistent job stays open."""
    with connect(path, timeout) as sock:
        sock.sendall(b"pid\n")
        return bool(read_line(sock))


@dataclass
class ServerProcess(Captured):
    path: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, line: str, timeout: float = 10.0) -> list[str]:
        return ask(self.path, line, timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 5.0) -> float:
        """Signal the server and wait for it; seconds until it exited."""
        start = time.monotonic()
        self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {timeout} s after signal {signum}\n{self.describe()}"
            ) from None
        return time.monotonic() - start

    def workers(self) -> dict[int, str]:
        return children_of(self.pid)

    def leftovers(self) -> list[int]:
        """Processes still in the server's session, once the server has been reaped."""
        return session_members(self.pid)

    def kill(self) -> None:
        """SIGKILL the server's whole session, wherever its processes went."""
        with suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        for _ in range(100):
            alive = session_members(self.pid, zombies=False)
            if not alive:
                break
            for pid in alive:
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        self.proc.wait(10)


class Servers:
    """Starts servers for one test, and kills every process they leave at the end."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
        self.started: list[ServerProcess] = []

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for server in self.started:
            server.kill()
        shutil.rmtree(self.tmp)

    def start(self, model: str, *options: str, timeout: float = 10.0) -> ServerProcess:
        """Start a server and wait until it has answered a request."""
        index = len(self.started)
        path = str(self.tmp / f"s{index}")
        out_path = self.tmp / f"s{index}.out"
        err_path = self.tmp / f"s{index}.err"
        # Our servers must not warn; flup's do (deprecated calls: flup.rst#thread-constructor).
        warnings = [] if model.startswith("flup-") else ["-W", "error"]
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, *warnings, "-m", "tests.support.jobs", model, path, *options],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        server = ServerProcess(proc, out_path, err_path, path)
        self.started.append(server)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if probe(path):
                    return server
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{model} server did not serve\n{server.describe()}")
            time.sleep(0.05)


def assert_stopped_cleanly(server: ServerProcess) -> None:
    """Exit status 0, the caller's cleanup ran once, in the server's own process (not in a
    worker), no process left, no warning."""
    cleanups = [line for line in server.stdout.splitlines() if line.startswith("cleanup in")]
    assert server.proc.returncode == 0, server.describe()
    assert cleanups == [f"cleanup in {server.pid}"], server.describe()
    assert server.leftovers() == [], server.describe()
    assert "Warning" not in server.stderr, server.describe()


def flup_fails(model: str, bug: str, *, race: bool = False) -> Any:
    """flup's own class for ``model`` as a test parameter, where the test must fail.

    ``race``: flup's bug shows only when the test outruns flup's threads, which is most
    runs but not every one on a loaded machine; flup passing then is not an error.
    """
    return pytest.param(
        f"flup-{model}", marks=pytest.mark.xfail(reason=f"flup {bug}", strict=not race)
    )


def ours_and_flup(ours: str, bug: str, *, race: bool = False) -> pytest.MarkDecorator:
    """Run a test on our server, and on flup's, where it must fail."""
    return pytest.mark.parametrize("model", [ours, flup_fails(ours, bug, race=race)])


def both_models(**flup_bugs: str) -> pytest.MarkDecorator:
    """Run a test on both process models, and on flup's class for each model named
    (``prefork=``, ``threaded=``: the bug it shows), where it must fail."""
    flup = [flup_fails(model, bug) for model, bug in flup_bugs.items()]
    return pytest.mark.parametrize("model", ["prefork", "threaded", *flup])


if __name__ == "__main__":
    main(sys.argv[1:])
