"""The socket's permissions and the user the server runs as, on a real server started by root.

Started as an init script would (root, daemonized, pidfile in /run/mysite), runfcgi
creates the missing directory, binds the socket with the mode, owner and group asked
for, and becomes ``user=`` before it loads the project.
"""

from __future__ import annotations

import grp
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.accounts import User, nobody, reachable_interpreter_command, require_root
from tests.support.clients import fcgi_request
from tests.support.paths import TESTPROJECT
from tests.support.runner import Run, Runner, wait_until_accepting

WEB_GROUP = "www-data"


@pytest.fixture
def account() -> User:
    require_root()
    try:
        grp.getgrnam(WEB_GROUP)
    except KeyError:
        pytest.skip(f"no group {WEB_GROUP!r} on this system")
    return nobody()


@pytest.fixture
def open_tmp(runner: Runner) -> Path:
    """The test's directory, searchable by the user the server becomes."""
    runner.tmp.chmod(0o755)
    return runner.tmp


def start_as_root(runner: Runner, *words: str) -> Run:
    argv = [sys.executable, str(TESTPROJECT / "manage.py"), "runfcgi", *words]
    return runner.start(command=reachable_interpreter_command(argv, runner.tmp / "stage"))


def ids(pid: int) -> tuple[list[int], list[int], list[int]]:
    """Real, effective, saved and file-system uids and gids, and the supplementary groups."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(number) for number in value.split()]
    return fields["Uid"], fields["Gid"], fields["Groups"]


class FirstSight:
    """Watches for a path from before the server starts; keeps the first stat it sees."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: os.stat_result | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + 30
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.seen = os.lstat(self.path)
            except FileNotFoundError:
                continue
            return

    def result(self) -> os.stat_result:
        self._thread.join(timeout=30)
        self._stop.set()
        assert self.seen is not None, f"{self.path} never appeared"
        return self.seen


def test_root_binds_with_mode_owner_and_group_then_runs_as_user(
    runner: Runner, open_tmp: Path, account: User
) -> None:
    run_dir = open_tmp / "run" / "mysite"
    sock = run_dir / "fcgi.sock"
    pid_path = run_dir / "fcgi.pid"
    first = FirstSight(sock)
    starter = start_as_root(
        runner,
        f"socket={sock}",
        f"pidfile={pid_path}",
        "mkdir=true",
        f"socketgroup={WEB_GROUP}",
        "socketmode=660",
        f"user={account.name}",
    )
    assert starter.wait(30) == 0, starter.describe()
    wait_until_accepting(None, str(sock), 20)

    seen = first.result()
    web_gid = grp.getgrnam(WEB_GROUP).gr_gid
    assert stat.S_ISSOCK(seen.st_mode)
    assert (stat.S_IMODE(seen.st_mode), seen.st_uid, seen.st_gid) == (0o660, 0, web_gid)
    directory = os.stat(run_dir)
    assert (stat.S_IMODE(directory.st_mode), directory.st_uid) == (0o755, account.uid)
    assert not [name for name in os.listdir(run_dir) if name.startswith(".")], "temporary left"

    master = int(pid_path.read_text())
    worker = fcgi_request(str(sock), "GET", "/echo/").json()["pid"]
    for pid in (master, worker):
        uids, gids, groups = ids(pid)
        assert uids == [account.uid] * 4
        assert gids == [account.gid] * 4
        assert 0 not in groups
    assert "Running as root" not in starter.stderr

    os.kill(master, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while (sock.exists() or pid_path.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sock.exists(), "the server, now nobody, left its socket behind"
    assert not pid_path.exists()


def test_socketowner_sets_the_owner(runner: Runner, open_tmp: Path, account: User) -> None:
    sock = open_tmp / "fcgi.sock"
    first = FirstSight(sock)
    start_as_root(
        runner,
        "daemonize=false",
        f"socket={sock}",
        f"socketowner={account.name}",
        "socketmode=600",
        f"user={account.name}",
    )
    wait_until_accepting(runner.runs[-1], str(sock), 20)
    seen = first.result()
    assert (stat.S_IMODE(seen.st_mode), seen.st_uid, seen.st_gid) == (0o600, account.uid, 0)
    assert fcgi_request(str(sock), "GET", "/echo/").status == 200


def test_running_as_root_without_user_warns_and_still_serves(
    runner: Runner, account: User
) -> None:
    sock = str(runner.tmp / "fcgi.sock")
    run = runner.serve("daemonize=false", f"socket={sock}", address=sock)
    assert fcgi_request(sock, "GET", "/echo/").status == 200
    assert (
        "[WARNING] Running as root; pass user= to drop privileges after bind (for example "
        "user=mysite)." in run.stderr
    )
    run.signal(signal.SIGTERM)
    assert run.wait(20) == 0


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (("socketgroup=no-such-group",), "socketgroup='no-such-group': no such group"),
        (("socketowner=no-such-user",), "socketowner='no-such-user': no such user"),
        (("user=no-such-user",), "user='no-such-user': no such user"),
        (("user=nobody", "group=no-such-group"), "group='no-such-group': no such group"),
        (("socketmode=0890",), "socketmode='0890' is not an octal file mode"),
        (("socketmode=1777",), "socketmode='1777' is not an octal file mode"),
    ],
)
def test_bad_names_and_modes_fail_in_one_line(
    runner: Runner, account: User, words: tuple[str, ...], message: str
) -> None:
    sock = runner.tmp / "fcgi.sock"
    run = runner.run(f"socket={sock}", *words)
    assert run.proc.returncode == 1
    errors = run.stderr.splitlines()
    assert len(errors) == 1, run.stderr
    assert errors[0].startswith("CommandError: ")
    assert message in errors[0]
    assert not sock.exists()


def test_missing_directory_says_what_to_run(runner: Runner, account: User) -> None:
    directory = runner.tmp / "run" / "mysite"
    run = runner.run(f"socket={directory}/fcgi.sock", f"user={account.name}")
    assert run.proc.returncode == 1
    assert run.stderr.strip() == (
        f"CommandError: The directory of socket='{directory}/fcgi.sock' does not exist; "
        f"create it (mkdir -p {directory} && chown nobody {directory}) or pass mkdir=true."
    )
    assert not directory.exists()


def test_user_needs_root(runner: Runner, open_tmp: Path, account: User) -> None:
    sock = open_tmp / "fcgi.sock"
    argv = [
        "setpriv",
        f"--reuid={account.uid}",
        f"--regid={account.gid}",
        "--clear-groups",
        sys.executable,
        str(TESTPROJECT / "manage.py"),
        "runfcgi",
        f"socket={sock}",
        "user=daemon",
    ]
    run = runner.start(command=reachable_interpreter_command(argv, runner.tmp / "stage"))
    assert run.wait(30) == 1
    assert run.stderr.strip() == (
        "CommandError: user='daemon' needs root to switch to, but runfcgi runs as "
        "'nobody'; start it as root, or leave user= and group= out."
    )


def serve_as_nobody(runner: Runner, sock: Path, pid_path: Path, account: User) -> Run:
    """A foreground server started by root, as the restart script starts one."""
    run = start_as_root(
        runner,
        "daemonize=false",
        f"socket={sock}",
        f"pidfile={pid_path}",
        "mkdir=true",
        f"socketgroup={WEB_GROUP}",
        "socketmode=660",
        f"user={account.name}",
    )
    wait_until_accepting(run, str(sock), 20)
    return run


def test_hup_reloads_as_the_same_user(runner: Runner, open_tmp: Path, account: User) -> None:
    sock, pid_path = open_tmp / "run" / "fcgi.sock", open_tmp / "run" / "fcgi.pid"
    run = serve_as_nobody(runner, sock, pid_path, account)
    before = fcgi_request(str(sock), "GET", "/echo/").json()["pid"]
    run.signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "Reloaded; serving" not in run.stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Reloaded; serving" in run.stdout, run.describe()
    after = fcgi_request(str(sock), "GET", "/echo/").json()["pid"]
    assert after != before
    assert ids(after)[0] == [account.uid] * 4
    assert ids(run.proc.pid)[0] == [account.uid] * 4
    run.signal(signal.SIGTERM)
    assert run.wait(30) == 0, run.describe()
    assert not sock.exists()


def test_restart_by_root_takes_the_socket_of_a_server_that_dropped_root(
    runner: Runner, open_tmp: Path, account: User
) -> None:
    """kill, rm the pidfile, start: the new server, still root, takes nobody's socket."""
    sock, pid_path = open_tmp / "run" / "fcgi.sock", open_tmp / "run" / "fcgi.pid"
    old = serve_as_nobody(runner, sock, pid_path, account)
    old.signal(signal.SIGTERM)
    pid_path.unlink()
    new = serve_as_nobody(runner, sock, pid_path, account)
    assert old.wait(30) == 0, old.describe()
    assert "Handed the listening socket to the runfcgi started as PID" in old.stderr
    served_by = fcgi_request(str(sock), "GET", "/echo/").json()["pid"]
    assert ids(served_by)[0] == [account.uid] * 4
    new.signal(signal.SIGTERM)
    assert new.wait(30) == 0, new.describe()
    assert not sock.exists()
