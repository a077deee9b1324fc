"""``runfcgi stop``, ``reload`` and ``reopen`` on real daemons: the signal, then the
outcome; and the docs' deploy script and logrotate recipe that use them.

The testproject reads TESTPROJECT_RELEASE_FILE when it loads; only the server gets it
(a command that loaded a broken release would fail itself), so what /echo/ reports as
"release" is the code the server runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.accounts import nobody, reachable_interpreter_command, require_root
from tests.support.clients import fcgi_request
from tests.support.frontends import recipe
from tests.support.net import free_port
from tests.support.paths import TESTPROJECT
from tests.support.processes import holding, tagged_pids, wait_for
from tests.support.runner import Run, Runner


def running(pid: int) -> bool:
    """Not gone and not a zombie (a daemon's parent here may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@dataclass
class Daemon:
    """A daemonized runfcgi, started in ``site`` with its options in settings.RUNFCGI."""

    runner: Runner
    site: Path
    sock: Path
    pidfile: Path
    release: Path
    env: dict[str, str]

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def command(self, *words: str, timeout: float = 60) -> Run:
        """``manage.py runfcgi WORDS`` as an operator types it: without the release."""
        return self.runner.run(
            command=[sys.executable, str(self.site / "manage.py"), "runfcgi", *words],
            cwd=self.site,
            env={"TESTPROJECT_RUNFCGI_FILE": self.env["TESTPROJECT_RUNFCGI_FILE"]},
            timeout=timeout,
        )

    def release_served(self) -> str:
        data = fcgi_request(str(self.sock), "GET", "/echo/", timeout=10).json()
        release: str = data["release"]
        return release

    def log(self) -> str:
        path = self.site / "runfcgi.log"
        return path.read_text() if path.exists() else ""


def start_daemon(runner: Runner, **setting: object) -> Daemon:
    """No errlog=: the daemon logs to runfcgi.log in its site, or nowhere."""
    site = runner.tmp / "mysite"
    site.mkdir()
    shutil.copy(TESTPROJECT / "manage.py", site / "manage.py")
    sock, pidfile, release = site / "fcgi.sock", site / "mysite.pid", site / "release"
    release.write_text("v1")
    settings = site / "runfcgi.json"
    settings.write_text(json.dumps({"socket": str(sock), "pidfile": str(pidfile), **setting}))
    env = {"TESTPROJECT_RUNFCGI_FILE": str(settings), "TESTPROJECT_RELEASE_FILE": str(release)}
    run = runner.run(
        command=[sys.executable, str(site / "manage.py"), "runfcgi"], cwd=site, env=env
    )
    assert run.proc.returncode == 0, run.describe()
    daemon = Daemon(runner, site, sock, pidfile, release, env)
    assert daemon.release_served() == "v1"
    return daemon


def test_stop_waits_for_the_request_in_progress_and_the_process(runner: Runner) -> None:
    daemon = start_daemon(runner)
    pid = daemon.pid
    slow: dict[str, int] = {}

    def request() -> None:
        slow["status"] = fcgi_request(str(daemon.sock), "GET", "/slow/", query="s=2").status

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.5)
    began = time.monotonic()
    run = daemon.command("stop")
    took = time.monotonic() - began
    thread.join(30)
    assert run.proc.returncode == 0, run.describe()
    assert run.stdout.strip() == f"Stopped: PID {pid} is gone."
    assert slow == {"status": 200}
    assert took > 1.0, "stop returned before the request finished"
    assert not running(pid)
    assert not daemon.pidfile.exists()
    assert not daemon.sock.exists()
    assert tagged_pids(runner.tag) == []


def test_stop_now_sends_int(runner: Runner) -> None:
    daemon = start_daemon(runner)
    pid = daemon.pid
    failed: list[BaseException] = []

    def request() -> None:
        try:
            fcgi_request(str(daemon.sock), "GET", "/slow/", query="s=20", timeout=30)
        except Exception as err:  # The connection is cut: what the client says varies.
            failed.append(err)

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.5)
    began = time.monotonic()
    run = daemon.command("stop", "--now")
    assert run.proc.returncode == 0, run.describe()
    assert time.monotonic() - began < 8
    assert run.stdout.strip() == f"Stopped: PID {pid} is gone."
    thread.join(30)
    assert "Stopped, PID" in daemon.log()


def test_stop_gives_up_after_shutdowntimeout_and_a_margin(runner: Runner) -> None:
    """A server that cannot act on TERM (stopped here with SIGSTOP) is reported, not
    waited on for ever."""
    daemon = start_daemon(runner, shutdowntimeout=0)
    pid = daemon.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        run = daemon.command("stop")
        took = time.monotonic() - began
    finally:
        os.kill(pid, signal.SIGCONT)
    assert run.proc.returncode == 1, run.describe()
    assert run.stderr.strip() == (
        f"CommandError: PID {pid} is still running 10 s after SIGTERM; 'runfcgi stop --now' "
        "sends INT."
    )
    assert 9 < took < 20
    # The TERM was pending: once it runs again, the server stops.
    assert wait_for(lambda: not running(pid), timeout=15)


@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_reload_reports_both_outcomes_without_an_errlog(runner: Runner, method: str) -> None:
    daemon = start_daemon(runner, method=method)
    pid = daemon.pid
    # Whatever the daemon logs, the command does not read it.
    (daemon.site / "runfcgi.log").unlink()

    daemon.release.write_text("v2")
    run = daemon.command("reload")
    assert run.proc.returncode == 0, run.describe()
    assert run.stdout.strip() == f"Reloaded: serving the new code, PID {pid}."
    assert wait_for(lambda: daemon.release_served() == "v2", timeout=5)

    daemon.release.write_text("broken")
    run = daemon.command("reload")
    assert run.proc.returncode == 1, run.describe()
    assert run.stderr.strip() == (
        "CommandError: Reload cancelled, still serving the old code: RuntimeError: this "
        "release does not load"
    )
    assert daemon.release_served() == "v2"
    assert daemon.pid == pid


def test_reload_says_why_when_the_settings_would_move_the_server(runner: Runner) -> None:
    daemon = start_daemon(runner)
    setting = Path(daemon.env["TESTPROJECT_RUNFCGI_FILE"])
    moved = daemon.site / "moved.sock"
    setting.write_text(json.dumps({"socket": str(moved), "pidfile": str(daemon.pidfile)}))
    # The command reads the settings too: give it the pidfile the server has.
    run = daemon.command("reload")
    assert run.proc.returncode == 1, run.describe()
    assert "Reload cancelled, still serving the old code: CommandError: A reload keeps the " in (
        run.stderr
    )
    assert f"unix:{daemon.sock}, and the options now give unix:{moved}" in run.stderr
    assert daemon.release_served() == "v1"


def test_reopen_waits_until_the_logs_are_reopened(runner: Runner) -> None:
    daemon = start_daemon(runner)
    log = daemon.site / "runfcgi.log"
    log.rename(daemon.site / "runfcgi.log.1")
    run = daemon.command("reopen")
    assert run.proc.returncode == 0, run.describe()
    assert run.stdout.strip() == f"Reopened the log files of PID {daemon.pid}."
    assert log.exists()
    os.kill(daemon.pid, signal.SIGHUP)  # The historic kill: its outcome lands there.
    assert wait_for(lambda: "Reloaded; serving" in log.read_text(), timeout=30)
    assert "Reloaded" not in (daemon.site / "runfcgi.log.1").read_text()


def test_the_historic_kill_and_the_commands_mix(runner: Runner) -> None:
    daemon = start_daemon(runner)
    daemon.release.write_text("v2")
    os.kill(daemon.pid, signal.SIGHUP)
    assert wait_for(lambda: daemon.release_served() == "v2", timeout=30)
    daemon.release.write_text("v3")
    run = daemon.command("reload")
    assert run.proc.returncode == 0, run.describe()
    assert wait_for(lambda: daemon.release_served() == "v3", timeout=5)
    pid = daemon.pid
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not running(pid), timeout=20)
    assert not daemon.pidfile.exists()
    assert not (daemon.site / "mysite.pid.state").exists()


@pytest.mark.parametrize("action", ["stop", "reload", "reopen"])
def test_each_command_refuses_a_pidfile_that_names_no_server(runner: Runner, action: str) -> None:
    pidfile = runner.tmp / "app.pid"

    def refusal(*words: str) -> str:
        run = runner.run(action, f"pidfile={pidfile}", *words)
        assert run.proc.returncode == 1, run.describe()
        [line] = run.stderr.splitlines()
        return line

    assert refusal() == (
        f"CommandError: No server to control: pidfile {str(pidfile)!r} does not exist (or is "
        "empty); it is not running, or was started with another pidfile=."
    )
    gone = subprocess.Popen(["true"])
    gone.wait()
    pidfile.write_text(f"{gone.pid}\n")
    assert refusal() == (
        f"CommandError: Stale pidfile {str(pidfile)!r}: PID {gone.pid} is not running; the "
        "server is gone (remove the pidfile, or start the server)."
    )
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            pidfile.write_text(f"{other.pid}\n")
            assert refusal() == (
                f"CommandError: PID {other.pid} (pidfile {str(pidfile)!r}) is not a runfcgi "
                "server: it runs 'sleep 60'. The server is gone; remove the pidfile."
            )
        finally:
            other.kill()


def test_a_state_file_of_another_process_does_not_vouch_for_the_pid(runner: Runner) -> None:
    """A pid reused after the server died: the state file names the old process."""
    daemon = start_daemon(runner)
    state = daemon.site / "mysite.pid.state"
    recorded = json.loads(state.read_text())
    os.kill(daemon.pid, signal.SIGTERM)
    assert wait_for(lambda: not daemon.pidfile.exists(), timeout=20)
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            daemon.pidfile.write_text(f"{other.pid}\n")
            state.write_text(json.dumps({**recorded, "pid": other.pid}))
            run = daemon.command("reload")
            assert run.proc.returncode == 1
            assert "is not a runfcgi server: it runs 'sleep 60'" in run.stderr
            assert other.poll() is None, "the other process got the signal"
        finally:
            other.kill()


# Without a pidfile: the server listening on socket= or host= and port=.

LISTENER = (
    "import socket, sys, time; family, where = sys.argv[1], sys.argv[2]; "
    "s = socket.socket(socket.AF_UNIX if family == 'unix' else socket.AF_INET); "
    "s.bind(where if family == 'unix' else ('127.0.0.1', int(where))); s.listen(); "
    "print('listening', flush=True); time.sleep(60)"
)
"""A listening socket that is not runfcgi's."""


def only_line(run: Run) -> str:
    [line] = run.stderr.splitlines()
    return line


@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_reopen_and_reload_find_the_server_by_its_unix_socket(runner: Runner, method: str) -> None:
    sock, log, release = runner.tmp / "app.sock", runner.tmp / "app.log", runner.tmp / "release"
    release.write_text("v1")
    server = runner.serve(
        "daemonize=false",
        f"method={method}",
        f"socket={sock}",
        f"errlog={log}",
        address=str(sock),
        env={"TESTPROJECT_RELEASE_FILE": str(release)},
    )
    pid = server.proc.pid
    log.rename(runner.tmp / "app.log.1")
    run = runner.run("reopen", f"socket={sock}")
    assert run.proc.returncode == 0, run.describe()
    assert run.stdout.strip() == (
        f"Sent SIGUSR1 to PID {pid}; without pidfile= runfcgi cannot tell whether it "
        "reopened its logs: see the server's log."
    )
    assert wait_for(log.exists, timeout=10), server.describe()

    release.write_text("v2")
    run = runner.run("reload", f"socket={sock}")
    assert run.proc.returncode == 0, run.describe()
    assert run.stdout.startswith(f"Sent SIGHUP to PID {pid}; "), run.describe()

    def served() -> str:
        release: str = fcgi_request(str(sock), "GET", "/echo/", timeout=10).json()["release"]
        return release

    assert wait_for(lambda: served() == "v2", timeout=30), server.describe()
    assert server.proc.poll() is None


@pytest.mark.parametrize(
    ("method", "host"), [("prefork", "127.0.0.1"), ("threaded", "127.0.0.1"), ("prefork", "::1")]
)
def test_stop_finds_the_server_by_its_host_and_port(
    runner: Runner, method: str, host: str
) -> None:
    port = free_port(host)
    server = runner.serve(
        "daemonize=false",
        f"method={method}",
        f"host={host}",
        f"port={port}",
        address=(host, port),
    )
    pid = server.proc.pid
    if method == "prefork":
        assert wait_for(lambda: len(tagged_pids(runner.tag)) > 1, timeout=10)  # workers
    run = runner.run("stop", f"host={host}", f"port={port}")
    assert run.proc.returncode == 0, run.describe()
    assert run.stdout.strip() == f"Stopped: PID {pid} is gone."
    assert server.proc.wait(timeout=5) == 0
    assert tagged_pids(runner.tag) == []


def test_nothing_listening_is_refused_in_one_line(runner: Runner) -> None:
    sock = runner.tmp / "nobody.sock"
    run = runner.run("stop", f"socket={sock}")
    assert run.proc.returncode == 1, run.describe()
    assert only_line(run) == f"CommandError: No server to control: nothing listens on unix:{sock}."
    port = free_port()
    run = runner.run("reopen", "host=127.0.0.1", f"port={port}")
    assert run.proc.returncode == 1, run.describe()
    assert only_line(run) == (
        f"CommandError: No server to control: nothing listens on 127.0.0.1:{port}."
    )


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_a_listener_that_is_not_runfcgi_is_refused(runner: Runner, family: str) -> None:
    if family == "unix":
        where = str(runner.tmp / "other.sock")
        words, shown = [f"socket={where}"], f"unix:{where}"
    else:
        where = str(free_port())
        words, shown = ["host=127.0.0.1", f"port={where}"], f"127.0.0.1:{where}"
    other = runner.start(command=[sys.executable, "-c", LISTENER, family, where])
    assert wait_for(lambda: "listening" in other.stdout, timeout=10), other.describe()
    run = runner.run("stop", *words)
    assert run.proc.returncode == 1, run.describe()
    assert only_line(run) == (
        f"CommandError: PID {other.proc.pid} listens on {shown} but is not runfcgi: it runs "
        f"{' '.join([sys.executable, '-c', LISTENER, family, where])!r}."
    )
    assert other.proc.poll() is None, "the other program got a signal"


def test_more_than_one_server_on_the_address_is_refused(runner: Runner) -> None:
    """Two processes sharing a port (SO_REUSEPORT), each calling itself runfcgi."""
    port = free_port()
    code = LISTENER.replace(
        "s.bind(", "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); s.bind("
    )
    others = [
        runner.start(command=[sys.executable, "-c", code, "tcp", str(port), "runfcgi"])
        for _ in range(2)
    ]
    assert wait_for(lambda: all("listening" in other.stdout for other in others), timeout=10)
    run = runner.run("reload", "host=127.0.0.1", f"port={port}")
    assert run.proc.returncode == 1, run.describe()
    first, second = sorted(other.proc.pid for other in others)
    assert only_line(run) == (
        f"CommandError: More than one server listens on 127.0.0.1:{port} (PIDs {first}, "
        f"{second}); give pidfile= to choose one."
    )
    assert all(other.proc.poll() is None for other in others)


def test_another_users_server_is_refused_with_what_to_do(runner: Runner) -> None:
    """A server of root's, and the command run as nobody, who may not read its fds."""
    require_root()
    runner.tmp.chmod(0o755)
    sock = runner.tmp / "root.sock"
    server = runner.serve("daemonize=false", f"socket={sock}", address=str(sock))
    user = nobody()
    argv = [
        "setpriv",
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        "--clear-groups",
        sys.executable,
        str(TESTPROJECT / "manage.py"),
        "runfcgi",
        "stop",
        f"socket={sock}",
    ]
    run = runner.run(command=reachable_interpreter_command(argv, runner.tmp / "stage"))
    assert run.proc.returncode == 1, run.describe()
    assert run.stderr.splitlines()[-1] == (
        f"CommandError: Cannot tell which process listens on unix:{sock}: the processes "
        "of other users cannot be read here; run this command as the server's user or as "
        "root, or give pidfile=."
    )
    assert server.proc.poll() is None


def test_without_pidfile_or_address_the_command_says_what_to_give(runner: Runner) -> None:
    run = runner.run("stop")
    assert run.proc.returncode == 1, run.describe()
    assert only_line(run) == (
        "CommandError: runfcgi stop finds the server by its pidfile or its address: give "
        'pidfile=, socket= or host= and port= (or "pidfile" in settings.RUNFCGI).'
    )


# The docs' recipes.


def test_the_documented_deploy_script(runner: Runner) -> None:
    daemon = start_daemon(runner)
    script = runner.tmp / "deploy.sh"
    script.write_text(
        recipe("deploy.sh", {"venv/bin/python": sys.executable, "/srv/mysite": str(daemon.site)})
    )

    def deploy() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/bin/sh", str(script)],
            env=runner.env(daemon.env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    daemon.release.write_text("v2")
    result = deploy()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK: runfcgi would serve over FastCGI (prefork) on unix:{daemon.sock}." in (
        result.stdout
    )
    assert f"Reloaded: serving the new code, PID {daemon.pid}." in result.stdout
    assert wait_for(lambda: daemon.release_served() == "v2", timeout=5)

    # A release whose application does not load stops at the check: no HUP is sent.
    daemon.release.write_text("broken-app")
    result = deploy()
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "Cannot load the application: RuntimeError: this release's application does not load"
        in result.stderr
    )
    assert "Reloaded" not in result.stdout
    assert daemon.release_served() == "v2"
    assert "Reload cancelled" not in daemon.log()


def daemon_request(daemon: Daemon, mark: str) -> None:
    assert fcgi_request(str(daemon.sock), "GET", "/echo/", query=mark).status == 200


def test_the_documented_logrotate_recipe(runner: Runner) -> None:
    logrotate = shutil.which("logrotate")
    if logrotate is None:
        if os.environ.get("CI"):
            pytest.fail("logrotate is not installed (Debian package: logrotate)")
        pytest.skip("logrotate is not installed (Debian package: logrotate)")
    daemon = start_daemon(runner, accesslog="access.log", minspare=2, maxspare=2)
    daemon_request(daemon, "before")
    config = runner.tmp / "logrotate.conf"
    config.write_text(
        recipe(
            "logrotate-mysite",
            {"/srv/mysite/venv/bin/python": sys.executable, "/srv/mysite": str(daemon.site)},
        )
    )
    config.chmod(0o644)
    result = subprocess.run(
        [logrotate, "--force", "--state", str(runner.tmp / "logrotate.state"), str(config)],
        env=runner.env({"TESTPROJECT_RUNFCGI_FILE": daemon.env["TESTPROJECT_RUNFCGI_FILE"]}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rotated, log = daemon.site / "runfcgi.log.1", daemon.site / "runfcgi.log"
    assert "Serving over FastCGI" in rotated.read_text()
    # postrotate's reopen returned once the server had reopened: the file is there.
    assert log.exists()
    access, rotated_access = daemon.site / "access.log", daemon.site / "access.log.1"
    assert wait_for(access.exists, timeout=5)
    # Each worker reopens too: every request from now on is in the new file, whichever
    # worker serves it.
    assert wait_for(lambda: not holding(tagged_pids(runner.tag), rotated_access), timeout=5)
    for n in range(4):
        daemon_request(daemon, f"after{n}")
    assert wait_for(lambda: access.read_text().count("?after") == 4, timeout=5)
    assert "?before" in rotated_access.read_text()
    assert "?after" not in rotated_access.read_text()
    os.kill(daemon.pid, signal.SIGHUP)
    assert wait_for(lambda: "Reloaded; serving" in log.read_text(), timeout=30)
    assert "Reloaded" not in rotated.read_text()
