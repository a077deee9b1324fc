"""Started by a supervisor: systemd socket activation and sd_notify, inetd-style spawning.

There is no systemd here to run the units in docs/configs, so the tests play its parts
with real processes: ``systemd-socket-activate`` (or a few lines of Python holding the
listening socket, as a ``.socket`` unit does across service restarts) passes the socket,
a datagram socket with SO_PASSCRED reads what the server notifies and who sent it, and
socat or ``systemd-socket-activate --accept`` spawns one server per connection.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from django_runfcgi import systemd
from tests.support.binaries import require
from tests.support.clients import ProtocolError, Response, ajp_request, fcgi_request, scgi_request
from tests.support.frontends import DOC_LISTEN, DOC_SOCKET, FrontendMissing, Nginx, recipe
from tests.support.http import http_request
from tests.support.net import can_connect, free_port
from tests.support.paths import CONFIGS, TESTPROJECT
from tests.support.processes import TAG_VARIABLE, tagged_pids, wait_for
from tests.support.runner import Run, Runner, wait_until_accepting

MANAGE = TESTPROJECT / "manage.py"
UCRED = struct.Struct("3i")

# Plays a .socket unit: the listening socket arrives as stdin and is passed on at fd 3
# (and the next ones, for LISTEN_FDS > 1) with LISTEN_FDS/LISTEN_PID set as systemd sets
# them; argv: count, pid ('' for the service's own), then the service's command line.
SOCKET_UNIT = """\
import os, sys
count = int(sys.argv[1])
for fd in range(3, 3 + count):
    os.dup2(0, fd)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
os.environ["LISTEN_FDS"] = str(count)
os.environ["LISTEN_PID"] = sys.argv[2] or str(os.getpid())
os.execv(sys.argv[3], sys.argv[3:])
"""


@dataclass(frozen=True)
class Notification:
    pid: int
    fields: dict[str, str]
    at: float = 0.0
    """When it arrived (time.monotonic())."""


class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: each datagram with the pid of its sender."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        target = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(target)
        self.received: list[Notification] = []

    def close(self) -> None:
        self.sock.close()

    def _receive(self, timeout: float) -> Notification | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        except TimeoutError:
            return None
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = UCRED.unpack(payload[: UCRED.size])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        note = Notification(pid, fields, time.monotonic())
        self.received.append(note)
        return note

    def wait_for(self, name: str, timeout: float = 20.0) -> Notification:
        """The next notification that sets ``name``; earlier ones are kept in received."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            note = self._receive(remaining)
            if note is not None and name in note.fields:
                return note
        raise AssertionError(f"no {name} notification within {timeout} s: {self.received}")

    def during(self, seconds: float) -> list[Notification]:
        """Every notification that arrives in the next ``seconds``."""
        deadline = time.monotonic() + seconds
        notes = []
        while (remaining := deadline - time.monotonic()) > 0:
            note = self._receive(remaining)
            if note is not None:
                notes.append(note)
        return notes

    def drain(self) -> list[Notification]:
        while self._receive(0.2) is not None:
            pass
        return self.received


@pytest.fixture
def notify(short_tmp: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(str(short_tmp / "notify"))
    yield listener
    listener.close()


def unix_listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(64)
    return sock


def tcp_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def activated(
    runner: Runner,
    listening: socket.socket,
    *words: str,
    env: dict[str, str] | None = None,
    fds: int = 1,
    listen_pid: str = "",
    command: list[str] | None = None,
    cwd: Path | None = None,
) -> Run:
    """Start runfcgi (or ``command``) as the service of a socket unit holding ``listening``."""
    service = command or [sys.executable, str(MANAGE), "runfcgi", *words]
    unit = [sys.executable, "-c", SOCKET_UNIT, str(fds), listen_pid, *service]
    return runner.start(command=unit, stdin=listening, env=env, cwd=cwd)


def pid_of(address: str | tuple[str, int], timeout: float = 20) -> int:
    response = fcgi_request(address, "GET", "/echo/", timeout=timeout)
    assert response.status == 200, response
    pid: int = response.json()["pid"]
    return pid


def release_of(address: str) -> str:
    release: str = fcgi_request(address, "GET", "/echo/", timeout=20).json()["release"]
    return release


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def exits(run: Run, timeout: float = 15) -> int:
    try:
        return run.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s\n{run.describe()}")


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


# Socket activation and sd_notify.


@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_activated_server_serves_systemd_socket_and_notifies_each_state(
    runner: Runner, notify: NotifySocket, method: str
) -> None:
    path = runner.tmp / "fcgi.sock"
    release = runner.tmp / "release"
    release.write_text("v1")
    with unix_listener(path) as listening:
        inode = os.stat(path).st_ino
        run = activated(
            runner,
            listening,
            f"method={method}",
            env={"NOTIFY_SOCKET": notify.address, "TESTPROJECT_RELEASE_FILE": str(release)},
        )
        master = run.proc.pid
        ready = notify.wait_for("READY")
        assert ready.pid == master
        assert ready.fields["MAINPID"] == str(master)
        assert f"unix:{path} (passed by systemd)" in ready.fields["STATUS"]
        assert release_of(str(path)) == "v1"
        assert f"on unix:{path} (passed by systemd), PID {master}." in run.stdout

        release.write_text("v2")
        sent = monotonic_usec()
        run.signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING")
        assert abs(int(reloading.fields["MONOTONIC_USEC"]) - sent) < 30_000_000
        reloaded = notify.wait_for("READY")
        assert reloaded.fields["STATUS"] == (
            f"Reloaded; serving over FastCGI ({method}) on unix:{path} (passed by systemd), "
            f"PID {master}."
        )
        assert wait_for(lambda: release_of(str(path)) == "v2", timeout=20), run.describe()
        assert os.stat(path).st_ino == inode, "runfcgi bound the path again"
        assert reloaded.fields["STATUS"] in run.stdout

        run.signal(signal.SIGTERM)
        notify.wait_for("STOPPING")
        assert exits(run) == 0, run.describe()
        assert stat.S_ISSOCK(os.stat(path).st_mode), "the unit's socket file was removed"
        assert can_connect(str(path)), "the unit's socket no longer accepts"
    assert {note.pid for note in notify.drain()} == {master}, "only the master notifies"


def test_cancelled_reload_tells_systemd_the_old_code_serves(
    runner: Runner, notify: NotifySocket
) -> None:
    path = runner.tmp / "fcgi.sock"
    release = runner.tmp / "release"
    release.write_text("v1")
    with unix_listener(path) as listening:
        run = activated(
            runner,
            listening,
            env={"NOTIFY_SOCKET": notify.address, "TESTPROJECT_RELEASE_FILE": str(release)},
        )
        notify.wait_for("READY")
        release.write_text("broken")
        run.signal(signal.SIGHUP)
        notify.wait_for("RELOADING")
        status = notify.wait_for("READY").fields["STATUS"]
        assert status.startswith("Reload cancelled, still serving the old code: "), status
        assert release_of(str(path)) == "v1"
        run.signal(signal.SIGTERM)
        assert exits(run) == 0, run.describe()


def test_daemonized_server_notifies_from_the_daemon_on_abstract_socket(runner: Runner) -> None:
    notify = NotifySocket(f"@runfcgi-test-{runner.tag}")
    try:
        path = runner.tmp / "own.sock"
        pidfile = runner.tmp / "app.pid"
        run = runner.run(
            f"socket={path}", f"pidfile={pidfile}", env={"NOTIFY_SOCKET": notify.address}
        )
        assert run.proc.returncode == 0, run.describe()
        ready = notify.wait_for("READY")
        daemon_pid = int(pidfile.read_text())
        assert ready.pid == daemon_pid
        assert ready.fields["MAINPID"] == str(daemon_pid)
        os.kill(daemon_pid, signal.SIGINT)
        assert notify.wait_for("STOPPING").pid == daemon_pid
        assert wait_for(lambda: not pidfile.exists(), timeout=15)
    finally:
        notify.close()


def test_bind_options_must_name_the_socket_systemd_passed(runner: Runner) -> None:
    path = runner.tmp / "fcgi.sock"
    other = runner.tmp / "other.sock"
    with unix_listener(path) as listening:
        run = activated(runner, listening, f"socket={other}")
        assert exits(run) == 1
        assert last_line(run.stderr) == (
            f"CommandError: socket='{other}' does not match the socket systemd passed "
            f"(unix:{path}); leave host=, port= and socket= out, or make them name the "
            "ListenStream= address."
        )
        assert not other.exists()

        # The same address: served, in the foreground (systemd tracks the process).
        run = activated(runner, listening, f"socket={path}")
        assert pid_of(str(path)) != run.proc.pid
        assert run.proc.poll() is None, run.describe()
        run.signal(signal.SIGTERM)
        assert exits(run) == 0
        assert path.exists()


def test_ajp_is_activated_on_the_host_and_port_it_names(runner: Runner) -> None:
    with tcp_listener() as listening:
        port = listening.getsockname()[1]
        wrong = free_port()
        run = activated(runner, listening, "protocol=ajp", "host=127.0.0.1", f"port={wrong}")
        assert exits(run) == 1
        assert last_line(run.stderr).startswith(
            f"CommandError: host=127.0.0.1 port={wrong} does not match the socket systemd "
            f"passed (127.0.0.1:{port});"
        )
        run = activated(runner, listening, "protocol=ajp", "host=localhost", f"port={port}")
        response = ajp_request(("127.0.0.1", port), "GET", "/echo/", timeout=20)
        assert response.status == 200, run.describe()
        assert run.proc.poll() is None
        run.signal(signal.SIGTERM)
        assert exits(run) == 0


def test_more_than_one_passed_socket_is_refused_in_one_line(runner: Runner) -> None:
    path = runner.tmp / "fcgi.sock"
    with unix_listener(path) as listening:
        run = activated(runner, listening, fds=2)
        assert exits(run) == 1
        assert last_line(run.stderr) == (
            "CommandError: LISTEN_FDS=2: runfcgi serves one socket; give its service a "
            "single ListenStream= in one .socket unit."
        )


def test_passed_sockets_meant_for_another_process_are_ignored(runner: Runner) -> None:
    path = runner.tmp / "fcgi.sock"
    own = runner.tmp / "own.sock"
    with unix_listener(path) as listening:
        run = activated(runner, listening, f"socket={own}", "daemonize=false", listen_pid="1")
        wait_until_accepting(run, str(own), timeout=20)
        assert pid_of(str(own)) != run.proc.pid
        run.signal(signal.SIGTERM)
        assert exits(run) == 0
        assert not own.exists()


def test_datagram_socket_is_refused_in_one_line(runner: Runner) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as datagram:
        datagram.bind(str(runner.tmp / "dgram.sock"))
        run = activated(runner, datagram)
        assert exits(run) == 1
        assert last_line(run.stderr) == (
            "CommandError: The socket systemd passed on file descriptor 3 is not a stream "
            "socket; runfcgi needs one (ListenStream= for systemd, 'stream' for inetd)."
        )


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"LISTEN_FDS": "x"}, "LISTEN_FDS='x' is not a number of file descriptors."),
        (
            {"LISTEN_FDS": "3", "LISTEN_FDNAMES": "web:admin:api"},
            "LISTEN_FDS=3 (web, admin, api): runfcgi serves one socket; give its service "
            "a single ListenStream= in one .socket unit.",
        ),
    ],
)
def test_unusable_listen_variables_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(systemd.ActivationError) as caught:
        systemd.listen_fd()
    assert str(caught.value) == message
    assert not set(systemd.LISTEN_VARIABLES) & set(os.environ)


@pytest.mark.parametrize("listen_pid", ["1", "", "abc"])
def test_listen_variables_not_naming_this_process_are_dropped(
    monkeypatch: pytest.MonkeyPatch, listen_pid: str
) -> None:
    monkeypatch.setenv("LISTEN_PID", listen_pid)
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "web")
    assert systemd.listen_fd() is None
    assert not set(systemd.LISTEN_VARIABLES) & set(os.environ)


def test_notifier_without_a_usable_socket_never_stops_the_server(
    caplog: pytest.LogCaptureFixture, short_tmp: Path
) -> None:
    systemd.Notifier(None).ready("quiet")
    systemd.Notifier("vsock:2:1234").ready("unsupported")
    systemd.Notifier(str(short_tmp / "nobody-listens")).ready("lost")
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "NOTIFY_SOCKET='vsock:2:1234' is not a unix socket path; not notifying."
    assert messages[1].startswith(
        f"Cannot notify systemd on NOTIFY_SOCKET='{short_tmp / 'nobody-listens'}': "
    )
    assert len(messages) == 2


def test_only_the_owner_notifies(notify: NotifySocket) -> None:
    notifier = systemd.Notifier(notify.address)
    notifier.owner = os.getppid()
    notifier.stopping()
    notifier.owner = os.getpid()
    notifier.stopping()
    assert [note.pid for note in notify.drain()] == [os.getpid()]


# The live STATUS= figures and the watchdog.

BUSY = re.compile(
    r" Busy: (?P<busy>\d+) of (?P<alive>\d+) (?P<unit>processes|threads) "
    r"\(at most (?P<most>\d+)\)(?:, (?P<connections>[\d,]+) connections)?\.$"
)
SYSTEMD_VARIABLES = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}


def figures(note: Notification) -> dict[str, str | None] | None:
    """The figures of a STATUS= line, None for a line without them."""
    found = BUSY.search(note.fields.get("STATUS", ""))
    return found.groupdict() if found else None


def wait_for_figures(
    notify: NotifySocket, busy: int, connections: int | None, timeout: float = 20
) -> dict[str, str | None]:
    """The STATUS= figures, the last received or a later one, with `busy` workers on a
    connection and that many connections (None: no count shown)."""
    wanted = (str(busy), None if connections is None else str(connections))
    shown = [figures(note) for note in notify.received if "STATUS" in note.fields][-1:]
    deadline = time.monotonic() + timeout
    while not (shown and shown[0] and (shown[0]["busy"], shown[0]["connections"]) == wanted):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no STATUS= with {wanted}: {notify.received}")
        shown = [figures(notify.wait_for("STATUS", remaining))]
    assert shown[0] is not None
    return shown[0]


def served_under_systemd(
    runner: Runner, *words: str, env: dict[str, str], shell: str = ""
) -> tuple[Run, str]:
    """runfcgi in the foreground on a unix socket, as its own service would run it;
    ``shell`` goes before the command in ``sh -c`` (to set WATCHDOG_PID=$$, as systemd
    names the process it starts)."""
    path = str(runner.tmp / "fcgi.sock")
    line = [sys.executable, str(MANAGE), "runfcgi", "daemonize=false", f"socket={path}", *words]
    command = ["sh", "-c", f"{shell} exec {shlex.join(line)}"]
    run = runner.serve(command=command, address=path, env=env)
    return run, path


def environ_names(path: str) -> set[str]:
    response = fcgi_request(path, "GET", "/environ/", timeout=20)
    assert response.status == 200, response
    return set(response.json()["names"])


@pytest.mark.parametrize("status_page", [False, True], ids=["", "status="])
@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_status_lines_follow_the_pool_under_a_known_load(
    runner: Runner, notify: NotifySocket, method: str, status_page: bool
) -> None:
    words = [f"method={method}", "minspare=1", "maxspare=3", "maxchildren=3"]
    words += ["status=/fcgi-status"] if status_page else []
    run, path = served_under_systemd(runner, *words, env={"NOTIFY_SOCKET": notify.address})
    ready = notify.wait_for("READY")
    unit = "processes" if method == "prefork" else "threads"
    first = notify.wait_for("STATUS")
    assert first.fields["STATUS"].startswith(ready.fields["STATUS"] + " Busy: "), first
    shown = figures(first)
    assert shown is not None, first
    assert (shown["unit"], shown["most"]) == (unit, "3")
    # The connection that found the server accepting is counted, with status= only.
    wait_for_figures(notify, 0, 1 if status_page else None)

    with ThreadPoolExecutor(2) as pool:
        slow = [
            pool.submit(fcgi_request, path, "GET", "/slow/", query="s=4", timeout=30)
            for _ in range(2)
        ]
        busy = wait_for_figures(notify, 2, 3 if status_page else None, timeout=4)
        assert int(busy["alive"] or 0) in (2, 3), busy
        assert all(future.result().status == 200 for future in slow)
    wait_for_figures(notify, 0, 3 if status_page else None)
    assert run.proc.poll() is None, run.describe()
    statuses = [note for note in notify.received if "STATUS" in note.fields]
    lines = [note.fields["STATUS"] for note in statuses]
    assert all(a != b for a, b in itertools.pairwise(lines)), "sent unchanged"
    # After READY's own line, figures at most every STATUS_SECONDS.
    gaps = [b.at - a.at for a, b in itertools.pairwise(statuses[1:])]
    assert min(gaps) > systemd.STATUS_SECONDS - 0.5, gaps
    assert {note.pid for note in notify.received} == {run.proc.pid}


def pings(notes: list[Notification], pid: int) -> list[float]:
    return [note.at for note in notes if note.fields.get("WATCHDOG") == "1" and note.pid == pid]


@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_watchdog_is_pinged_from_the_main_loop_at_half_its_interval(
    runner: Runner, notify: NotifySocket, method: str
) -> None:
    env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000"}
    run, path = served_under_systemd(
        runner, f"method={method}", env=env, shell="WATCHDOG_PID=$$ &&"
    )
    master = run.proc.pid
    notify.wait_for("READY")
    # Pings every 0.5 s: 6 in 3 s, give or take a slow machine.
    assert 4 <= len(pings(notify.during(3.0), master)) <= 8, notify.received
    assert not environ_names(path) & SYSTEMD_VARIABLES

    run.signal(signal.SIGSTOP)
    try:
        notify.during(0.3)  # a ping sent just before the stop
        assert pings(notify.during(1.5), master) == [], "a stopped master still pings"
    finally:
        run.signal(signal.SIGCONT)
    assert len(pings(notify.during(1.5), master)) >= 2, notify.received

    # A reload gives the variables back to the process it becomes, not to the project.
    run.signal(signal.SIGHUP)
    assert notify.wait_for("READY").fields["STATUS"].startswith("Reloaded; serving")
    assert 2 <= len(pings(notify.during(2.0), master)) <= 6, notify.received
    assert wait_for(lambda: not environ_names(path) & SYSTEMD_VARIABLES, timeout=20)
    run.signal(signal.SIGTERM)
    assert exits(run) == 0, run.describe()


def test_watchdog_meant_for_another_process_is_not_pinged(
    runner: Runner, notify: NotifySocket
) -> None:
    env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}
    run, path = served_under_systemd(runner, "method=threaded", env=env)
    notify.wait_for("READY")
    assert pings(notify.during(1.5), run.proc.pid) == []
    assert not environ_names(path) & SYSTEMD_VARIABLES
    run.signal(signal.SIGTERM)
    assert exits(run) == 0, run.describe()


def test_a_notify_socket_that_reads_nothing_never_stalls_the_server(
    runner: Runner, notify: NotifySocket
) -> None:
    """Pings every 0.05 s to a socket nobody reads: its queue is full in a moment."""
    env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "100000"}
    run, path = served_under_systemd(runner, "method=threaded", env=env)
    time.sleep(1.5)
    assert pid_of(path) == run.proc.pid
    run.signal(signal.SIGTERM)
    assert exits(run) == 0, run.describe()
    lost = f"NOTIFY_SOCKET={notify.address!r} reads nothing; notifications are lost until it does."
    assert run.stderr.count(lost) == 1, run.describe()


# One connection per process: inetd, socat, systemd Accept=yes.


def spawner_env(runner: Runner, extra: dict[str, str] | None = None) -> list[str]:
    """systemd-socket-activate passes on only the variables named with -E."""
    names = [TAG_VARIABLE, "PYTHONPATH", "TESTPROJECT_DB", "PYTHONUNBUFFERED"]
    args = [f"--setenv={name}" for name in names]
    args += [f"--setenv={name}={value}" for name, value in (extra or {}).items()]
    return args


def socat_inetd(runner: Runner, listen: str, program: list[str]) -> Run:
    """socat as the super-server: each connection becomes the program's stdin and stdout."""
    socat = require("socat", "socat")
    exec_address = "EXEC:" + " ".join(shlex.quote(word) for word in program) + ",nofork"
    return runner.start(command=[socat, f"{listen},fork", exec_address])


def served_by_new_processes(requests: list[Response]) -> set[int]:
    for response in requests:
        assert response.status == 200, response
    return {response.json()["pid"] for response in requests}


def wait_for_no_server(runner: Runner, keep: int) -> bool:
    """Every per-connection server has exited; only the super-server (``keep``) is left."""
    return wait_for(lambda: set(tagged_pids(runner.tag)) <= {keep}, timeout=20)


@pytest.mark.parametrize("protocol", ["fcgi", "scgi"])
def test_socat_super_server_spawns_one_runfcgi_per_connection(
    runner: Runner, protocol: str
) -> None:
    path = str(runner.tmp / "inetd.sock")
    spawner = socat_inetd(
        runner,
        f"UNIX-LISTEN:{path}",
        [sys.executable, str(MANAGE), "runfcgi", f"protocol={protocol}"],
    )
    assert wait_for(lambda: can_connect(path), timeout=10), spawner.describe()
    request = fcgi_request if protocol == "fcgi" else scgi_request
    body = b"x" * 300_000
    responses = [request(path, "POST", "/echo/", body=body, timeout=20) for _ in range(3)]
    assert len(served_by_new_processes(responses)) == 3
    for response in responses:
        assert response.json()["body_length"] == len(body)
    assert wait_for_no_server(runner, spawner.proc.pid), spawner.describe()


def server_spawned_by(runner: Runner, spawner: Run) -> int:
    """The pid of the one runfcgi a super-server started, once it has loaded the project."""
    found: list[int] = []

    def spawned() -> bool:
        found[:] = [pid for pid in tagged_pids(runner.tag) if pid != spawner.proc.pid]
        return len(found) == 1

    assert wait_for(spawned, timeout=20), spawner.describe()
    return found[0]


@pytest.mark.parametrize("stderr_too", [False, True], ids=["stdio", "stdio+stderr"])
def test_one_connection_keeps_the_project_output_out_of_it(
    runner: Runner, stderr_too: bool
) -> None:
    """Classic inetd passes the connection as stderr too: socat's ``stderr`` option."""
    path = str(runner.tmp / "inetd.sock")
    socat = require("socat", "socat")
    program = " ".join([sys.executable, str(MANAGE), "runfcgi"])
    options = ",nofork,stderr" if stderr_too else ",nofork"
    spawner = runner.start(command=[socat, f"UNIX-LISTEN:{path},fork", f"EXEC:{program}{options}"])
    assert wait_for(lambda: os.path.exists(path), timeout=10), spawner.describe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.settimeout(30)
        server = server_spawned_by(runner, spawner)
        # Kept open: several requests, one process.
        first = fcgi_request(path, "GET", "/echo/", keep_conn=True, sock=conn)
        second = fcgi_request(path, "POST", "/echo/", body=b"abc", keep_conn=True, sock=conn)
        assert first.json()["pid"] == second.json()["pid"] == server
        assert second.json()["body_length"] == 3
        targets = [os.readlink(f"/proc/{server}/fd/{fd}") for fd in (0, 1, 2)]
        error_target = os.devnull if stderr_too else str(spawner.err_path)
        assert targets == [os.devnull, error_target, error_target]
    assert wait_for(lambda: not os.path.exists(f"/proc/{server}/fd"), timeout=20)


def test_pidfile_is_refused_for_one_connection(runner: Runner) -> None:
    path = str(runner.tmp / "inetd.sock")
    pidfile = runner.tmp / "app.pid"
    spawner = socat_inetd(
        runner,
        f"UNIX-LISTEN:{path}",
        [sys.executable, str(MANAGE), "runfcgi", f"pidfile={pidfile}"],
    )
    assert wait_for(lambda: can_connect(path), timeout=10), spawner.describe()
    with pytest.raises((ProtocolError, OSError), match=r"(closed|reset) the connection"):
        fcgi_request(path, "GET", "/echo/", timeout=20)
    error = (
        f"CommandError: pidfile='{pidfile}' does not apply to a connection passed by a "
        "super-server (inetd, systemd Accept=yes): each connection is its own process; "
        "leave pidfile= out."
    )
    assert wait_for(lambda: error in spawner.stderr, timeout=20), spawner.describe()
    assert not pidfile.exists()


def test_one_connection_from_a_refused_client_is_closed(runner: Runner) -> None:
    port = free_port()
    spawner = runner.start(
        command=[
            require("socat", "socat"),
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
            f"EXEC:{sys.executable} {MANAGE} runfcgi,nofork",
        ],
        env={"FCGI_WEB_SERVER_ADDRS": "192.0.2.1"},
    )
    address = ("127.0.0.1", port)
    assert wait_for(lambda: can_connect(address), timeout=10), spawner.describe()
    with pytest.raises((ProtocolError, OSError), match=r"(closed|reset) the connection"):
        fcgi_request(address, "GET", "/echo/", timeout=20)
    assert wait_for(
        lambda: "CommandError: Refused the connection from 127.0.0.1:" in spawner.stderr,
        timeout=20,
    ), spawner.describe()
    assert "not in FCGI_WEB_SERVER_ADDRS" in spawner.stderr


@pytest.mark.parametrize("style", ["--inetd", "fd 3"])
def test_systemd_accept_yes_passes_one_connection(runner: Runner, style: str) -> None:
    activate = require("systemd-socket-activate", "systemd")
    path = str(runner.tmp / "accept.sock")
    command = [activate, "--accept", f"--listen={path}", *spawner_env(runner)]
    if style == "--inetd":
        command.append("--inetd")
    command += [sys.executable, str(MANAGE), "runfcgi", "method=threaded"]
    spawner = runner.start(command=command)
    assert wait_for(lambda: can_connect(path), timeout=10), spawner.describe()
    responses = [fcgi_request(path, "GET", "/echo/", timeout=20) for _ in range(2)]
    pids = served_by_new_processes(responses)
    assert len(pids) == 2
    assert wait_for(
        lambda: all(f"Child {pid} died with code 0" in spawner.stderr for pid in pids),
        timeout=20,
    ), spawner.describe()


# The units in docs/configs, as written (the inetd lines: tests/integration/test_inetd.py).


def read_unit(name: str) -> dict[str, list[str]]:
    """``Key=value`` settings of a unit file by key, in order, from every section."""
    settings: dict[str, list[str]] = {}
    for raw in (CONFIGS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@dataclass(frozen=True)
class Service:
    """A documented service's command and environment, with the example paths replaced."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    settings: dict[str, list[str]]


def documented_service(name: str) -> Service:
    settings = read_unit(name)
    (workdir,) = settings["WorkingDirectory"]
    assert workdir == "/srv/mysite"
    (exec_start,) = settings["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[:3] == ["/srv/mysite/venv/bin/python", "manage.py", "runfcgi"], argv
    env = {}
    for assignment in settings.get("Environment", []):
        key, _, value = assignment.partition("=")
        env[key] = value.replace("mysite.settings", "testproject.settings")
    return Service([sys.executable, *argv[1:]], env, TESTPROJECT, settings)


def test_documented_units_pass_systemd_analyze_verify(short_tmp: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd).")
    names = ["mysite.socket", "mysite.service", "mysite-accept.socket", "mysite-accept@.service"]
    for name in names:
        text = (CONFIGS / name).read_text()
        # verify checks that the program exists; the example's virtualenv does not.
        text = text.replace("/srv/mysite/venv/bin/python", sys.executable)
        (short_tmp / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", *(str(short_tmp / name) for name in names)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.strip() == "", output


def test_documented_socket_and_service_under_systemd_socket_activate(
    runner: Runner, notify: NotifySocket
) -> None:
    activate = require("systemd-socket-activate", "systemd")
    socket_unit = read_unit("mysite.socket")
    assert socket_unit["ListenStream"] == [DOC_SOCKET]
    service = documented_service("mysite.service")
    assert service.settings["Type"] == ["notify"]
    assert service.settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    (watchdog,) = service.settings["WatchdogSec"]
    path = runner.tmp / "fcgi.sock"
    # As systemd sets them (WATCHDOG_PID is left out: it would name this very process).
    env = {**service.env, "NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": f"{watchdog}000000"}
    command = [activate, f"--listen={path}", *spawner_env(runner, env), *service.argv]
    run = runner.start(command=command, cwd=service.cwd)
    assert wait_for(path.exists, timeout=10), run.describe()
    # Started on the first connection, as systemd starts a socket-activated service.
    assert pid_of(str(path)) != run.proc.pid
    ready = notify.wait_for("READY")
    assert ready.pid == run.proc.pid == int(ready.fields["MAINPID"])
    # The first ping comes with the first turn of the master's loop, then every 15 s.
    assert notify.wait_for("WATCHDOG", timeout=5).pid == run.proc.pid

    reload_argv = shlex.split(service.settings["ExecReload"][0].replace("$MAINPID", "{}"))
    subprocess.run([word.format(run.proc.pid) for word in reload_argv], check=True, timeout=10)
    notify.wait_for("RELOADING")
    notify.wait_for("READY")
    assert pid_of(str(path)) != run.proc.pid

    (kill_signal,) = service.settings["KillSignal"]
    run.signal(signal.Signals[kill_signal])
    notify.wait_for("STOPPING")
    assert exits(run) == 0, run.describe()
    assert path.exists(), "runfcgi removed the socket unit's file"


def test_documented_socket_keeps_accepting_across_service_restarts(
    runner: Runner, notify: NotifySocket
) -> None:
    socket_unit = read_unit("mysite.socket")
    service = documented_service("mysite.service")
    path = runner.tmp / "fcgi.sock"
    (mode,) = socket_unit["SocketMode"]
    with unix_listener(path) as listening:
        os.chmod(path, int(mode, 8))
        env = {**service.env, "NOTIFY_SOCKET": notify.address}
        first = activated(runner, listening, command=service.argv, env=env, cwd=service.cwd)
        notify.wait_for("READY")
        before = pid_of(str(path))

        first.signal(signal.Signals[service.settings["KillSignal"][0]])
        assert exits(first) == 0, first.describe()
        # Between the two runs the socket unit still accepts; the request waits.
        answers: list[Response] = []
        waiting = threading.Thread(
            target=lambda: answers.append(fcgi_request(str(path), "GET", "/echo/", timeout=30))
        )
        waiting.start()
        time.sleep(0.5)
        assert answers == []
        second = activated(runner, listening, command=service.argv, env=env, cwd=service.cwd)
        waiting.join(40)
        assert answers, second.describe()
        assert answers[0].status == 200, second.describe()
        assert answers[0].json()["pid"] != before
        assert stat.S_IMODE(os.stat(path).st_mode) == int(mode, 8)
        second.signal(signal.SIGTERM)
        assert exits(second) == 0


class Traffic:
    """Requests through the web server, one after another, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.results: list[tuple[int, int]] = []  # (status, pid or 0)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                response = http_request(self.port, "GET", "/echo/", timeout=60)
            except OSError as err:
                self.errors.append(repr(err))
                continue
            pid = response.json()["pid"] if response.status == 200 else 0
            self.results.append((response.status, pid))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(90)

    def wait_for_more(self, count: int) -> None:
        target = len(self.results) + count
        assert wait_for(lambda: len(self.results) >= target, timeout=30), self.errors


def test_no_failed_request_through_nginx_while_the_service_reloads_and_restarts(
    runner: Runner, notify: NotifySocket
) -> None:
    service = documented_service("mysite.service")
    path = runner.tmp / "fcgi.sock"
    port = free_port()
    server_block = recipe(
        "nginx-fastcgi.conf", {DOC_SOCKET: str(path), DOC_LISTEN: f"listen 127.0.0.1:{port};"}
    )
    nginx = Nginx(runner.tmp / "nginx", server_block, port)
    env = {**service.env, "NOTIFY_SOCKET": notify.address}
    with unix_listener(path) as listening:
        first = activated(runner, listening, command=service.argv, env=env, cwd=service.cwd)
        notify.wait_for("READY")
        try:
            nginx.start()
        except FrontendMissing as err:
            if os.environ.get("CI"):
                pytest.fail(str(err))
            pytest.skip(str(err))
        try:
            with Traffic(port) as traffic:
                traffic.wait_for_more(20)
                first.signal(signal.SIGHUP)
                notify.wait_for("RELOADING")
                notify.wait_for("READY")
                traffic.wait_for_more(20)
                first.signal(signal.SIGTERM)
                assert exits(first) == 0, first.describe()
                second = activated(
                    runner, listening, command=service.argv, env=env, cwd=service.cwd
                )
                notify.wait_for("READY")
                traffic.wait_for_more(20)
            second.signal(signal.SIGTERM)
            assert exits(second) == 0, second.describe()
        finally:
            nginx.stop()
    statuses = [status for status, _ in traffic.results]
    assert traffic.errors == []
    assert statuses == [200] * len(statuses), nginx.error_log()
    assert len(statuses) >= 60
    served_by = {pid for _, pid in traffic.results}
    assert len(served_by) >= 2


def test_documented_accept_units_serve_one_connection_per_process(runner: Runner) -> None:
    activate = require("systemd-socket-activate", "systemd")
    socket_unit = read_unit("mysite-accept.socket")
    assert socket_unit["Accept"] == ["yes"]
    assert socket_unit["ListenStream"] == [DOC_SOCKET]
    service = documented_service("mysite-accept@.service")
    path = str(runner.tmp / "fcgi.sock")
    command = [
        activate,
        "--accept",
        f"--listen={path}",
        *spawner_env(runner, service.env),
        *service.argv,
    ]
    spawner = runner.start(command=command, cwd=service.cwd)
    assert wait_for(lambda: can_connect(path), timeout=10), spawner.describe()
    responses = [fcgi_request(path, "GET", "/echo/", timeout=20) for _ in range(2)]
    assert len(served_by_new_processes(responses)) == 2


def test_one_connection_answers_ping_and_says_it_has_no_status_figures(runner: Runner) -> None:
    """A process that serves one connection has no pool: ping= answers as ever, the
    status page says it has nothing to show instead of sending the request to Django."""
    path = str(runner.tmp / "inetd.sock")
    spawner = socat_inetd(
        runner,
        f"UNIX-LISTEN:{path}",
        [sys.executable, str(MANAGE), "runfcgi", "ping=/ping", "status=/status"],
    )
    assert wait_for(lambda: can_connect(path), timeout=10), spawner.describe()
    pong = fcgi_request(path, "GET", "/ping", timeout=20)
    assert (pong.status, pong.body) == (200, b"pong")
    page = fcgi_request(path, "GET", "/status", timeout=20)
    assert page.status == 503
    assert page.body == b"The status page is not available in this process.\n"
    assert fcgi_request(path, "GET", "/echo/", timeout=20).status == 200
