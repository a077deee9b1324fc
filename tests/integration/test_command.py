"""``manage.py runfcgi`` as a user types it: errors, help, and the daemon's lifecycle."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.support.clients import fcgi_request
from tests.support.net import free_port
from tests.support.processes import tagged_pids
from tests.support.runner import Runner


def assert_one_line_error(run_output: str, expected: str) -> None:
    lines = [line for line in run_output.splitlines() if line.strip()]
    assert lines, "no error was printed"
    assert expected in lines[-1], run_output
    assert "Traceback" not in run_output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["deamonize=false"], "Unknown option 'deamonize'. Did you mean 'daemonize'?"),
        (["protocol=http"], "protocol='http' is not supported; use fcgi or scgi or ajp."),
        (["host=127.0.0.1", "port=99999"], "port='99999' is out of range; use 1 to 65535."),
        (["umask=8"], "umask='8' is not an octal umask"),
        (["socket=/tmp/x.sock", "host=127.0.0.1", "port=1"], "Use either socket= or"),
        (["host=127.0.0.1"], "host='127.0.0.1' needs port= too."),
        (["protocol=ajp", "socket=/tmp/x.sock"], "AJP needs host= and port="),
        (["minspare=9"], "minspare=9 is above maxspare=5"),
        (["--port", "80", "port=81", "--host", "h"], "port= is given twice."),
        (["--protocol", "gopher"], "protocol='gopher' is not supported"),
        (["--protocl=scgi"], "Unknown option 'protocl'. Did you mean 'protocol'?"),
        (["--daemonize", "maybe"], "daemonize='maybe' is not a boolean; use true or false"),
        (["socket=/tmp/x.sock", "false"], "'false' stands alone; write the option and its value"),
        (["--daemonize=perhaps"], "daemonize='perhaps' is not a boolean; use true or false"),
        (["--no-daemonize=true"], "--no-daemonize takes no value; write --daemonize=true"),
        (["--no-socket"], "--no-socket is not an option: socket= is not true or false."),
        (["--socket"], "--socket needs a value; write --socket=FILE or socket=FILE."),
        (["--verbosity", "9"], "argument -v/--verbosity: invalid choice: 9"),
    ],
)
def test_bad_options_exit_non_zero_with_one_line(
    runner: Runner, args: list[str], expected: str
) -> None:
    run = runner.run(*args)
    assert run.proc.returncode == 1
    assert_one_line_error(run.stderr, expected)


@pytest.mark.parametrize(
    "form",
    [
        ["--daemonize=false"],
        ["--daemonize", "false"],
        ["--no-daemonize"],
        ["daemonize=false"],
        ["--daemonize", "no", "--debug", "false"],
        ["--debug=off", "--daemonize=0", "--method", "threaded"],
        ["--method", "threaded", "daemonize=false", "--verbosity", "1"],
    ],
    ids=" ".join,
)
def test_every_boolean_form_serves_in_the_foreground(runner: Runner, form: list[str]) -> None:
    """The README's ``--socket PATH --daemonize=false`` and its neighbours all work."""
    sock = runner.tmp / "fcgi.sock"
    run = runner.serve("--socket", str(sock), *form, address=str(sock))
    response = fcgi_request(str(sock), "GET", "/echo/")
    assert response.status == 200
    assert response.json()["pid"] in (run.proc.pid, *tagged_pids(runner.tag))
    assert run.proc.poll() is None, "the server detached although daemonize was false"
    run.signal(signal.SIGTERM)
    assert run.wait(10) == 0


def test_words_stand_anywhere_among_options(runner: Runner) -> None:
    sock = runner.tmp / "fcgi.sock"
    run = runner.serve(
        f"socket={sock}", "--method", "threaded", "daemonize=false", address=str(sock)
    )
    assert fcgi_request(str(sock), "GET", "/echo/").json()["pid"] == run.proc.pid
    run.signal(signal.SIGTERM)
    assert run.wait(10) == 0


def test_port_in_use_is_reported_before_detaching(runner: Runner) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = runner.run("host=127.0.0.1", f"port={port}")
    assert run.proc.returncode == 1
    assert_one_line_error(
        run.stderr, f"port {port} on 127.0.0.1 is already in use by another program."
    )
    assert tagged_pids(runner.tag) == []


def test_address_not_on_this_machine(runner: Runner) -> None:
    run = runner.run("host=192.0.2.1", "port=9000")
    assert run.proc.returncode == 1
    assert_one_line_error(run.stderr, "no network interface on this machine has that address")


def test_socket_path_that_is_a_regular_file_is_left_alone(runner: Runner) -> None:
    path = runner.tmp / "precious.txt"
    path.write_text("keep me")
    run = runner.run(f"socket={path}")
    assert run.proc.returncode == 1
    assert_one_line_error(
        run.stderr, f"'{path}' exists and is not a socket; refusing to remove it."
    )
    assert path.read_text() == "keep me"


def test_live_socket_of_another_server_is_refused(runner: Runner) -> None:
    path = runner.tmp / "live.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen()
        run = runner.run(f"socket={path}")
        assert run.proc.returncode == 1
        assert_one_line_error(
            run.stderr, f"Another server is listening on '{path}'; refusing to take its socket."
        )
        assert path.exists()


def test_missing_socket_directory(runner: Runner) -> None:
    run = runner.run(f"socket={runner.tmp}/no/such/dir/app.sock")
    assert run.proc.returncode == 1
    assert_one_line_error(
        run.stderr,
        f"does not exist; create it (mkdir -p {runner.tmp}/no/such/dir) or pass mkdir=true.",
    )


def test_broken_wsgi_application_fails_before_detaching(runner: Runner) -> None:
    run = runner.run(
        f"socket={runner.tmp / 'app.sock'}",
        env={"TESTPROJECT_WSGI": "testproject.broken_wsgi.application"},
    )
    assert run.proc.returncode == 1
    assert (
        "WSGI application 'testproject.broken_wsgi.application' could not be loaded" in run.stderr
    )
    assert "cannot be imported (on purpose)" in run.stderr
    assert not (runner.tmp / "app.sock").exists()


def test_system_check_errors_stop_the_start(runner: Runner) -> None:
    run = runner.run(f"socket={runner.tmp / 'app.sock'}", env={"TESTPROJECT_CHECK_ERROR": "1"})
    assert run.proc.returncode == 1
    assert "testproject.E001" in run.stderr
    assert not (runner.tmp / "app.sock").exists()


def test_runfcgi_help_lists_options(runner: Runner) -> None:
    run = runner.run("help")
    assert run.proc.returncode == 0, run.describe()
    for name in ("protocol=PROTOCOL", "maxchildren=NUMBER", "umask=UMASK", "daemonize=BOOL"):
        assert name in run.stdout
    assert "(default: fcgi)" in run.stdout


def test_manage_py_help_runfcgi_lists_the_options_with_defaults(runner: Runner) -> None:
    run = runner.start(
        command=[sys.executable, "manage.py", "help", "runfcgi"],
        cwd=Path(__file__).parents[2] / "testproject",
    )
    run.wait(30)
    assert run.proc.returncode == 0, run.describe()
    text = " ".join(run.stdout.split())
    for fragment in (
        "--protocol PROTOCOL",
        "--maxspare NUMBER",
        "(default: 5)",
        "--daemonize, --no-daemonize",
        "key=value",
    ):
        assert fragment in text


def test_daemon_serves_then_stops_cleanly(runner: Runner) -> None:
    sock = runner.tmp / "app.sock"
    pidfile = runner.tmp / "app.pid"
    errlog = runner.tmp / "err.log"
    started = time.monotonic()
    parent = runner.run(f"socket={sock}", "pidfile=app.pid", "errlog=err.log", cwd=runner.tmp)
    assert parent.proc.returncode == 0, parent.describe()
    # The parent returned only once the daemon was serving.
    response = fcgi_request(str(sock), "GET", "/echo/")
    assert response.status == 200
    daemon_pid = int(pidfile.read_text())
    assert daemon_pid != parent.proc.pid
    assert response.json()["pid"] != daemon_pid  # a prefork worker answered
    assert time.monotonic() - started < 20
    os.kill(daemon_pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (pidfile.exists() or sock.exists()):
        time.sleep(0.05)
    assert not pidfile.exists(), "the pidfile was left behind"
    assert not sock.exists(), "the socket was left behind"
    assert errlog.exists()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and tagged_pids(runner.tag):
        time.sleep(0.05)
    assert tagged_pids(runner.tag) == []


def test_live_pidfile_is_refused_before_binding(runner: Runner) -> None:
    sock = runner.tmp / "first.sock"
    pidfile = runner.tmp / "app.pid"
    first = runner.run(f"socket={sock}", f"pidfile={pidfile}")
    assert first.proc.returncode == 0, first.describe()
    daemon_pid = int(pidfile.read_text())
    second = runner.run(f"socket={runner.tmp / 'second.sock'}", f"pidfile={pidfile}")
    assert second.proc.returncode == 1
    assert_one_line_error(second.stderr, f"Already running as PID {daemon_pid}")
    assert not (runner.tmp / "second.sock").exists()
    assert int(pidfile.read_text()) == daemon_pid


def test_stale_pidfile_and_socket_are_replaced(runner: Runner) -> None:
    sock = runner.tmp / "app.sock"
    pidfile = runner.tmp / "app.pid"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(sock))  # a socket file nobody listens on
    pidfile.write_text("999999\n")
    run = runner.run(f"socket={sock}", f"pidfile={pidfile}")
    assert run.proc.returncode == 0, run.describe()
    assert fcgi_request(str(sock), "GET", "/echo/").status == 200
    assert int(pidfile.read_text()) != 999999


def test_foreground_tcp_ipv6(runner: Runner) -> None:
    port = free_port("::1")
    run = runner.serve("host=::1", f"port={port}", "daemonize=false", address=("::1", port))
    assert fcgi_request(("::1", port), "GET", "/echo/").status == 200
    run.signal(signal.SIGTERM)
    assert run.wait(5) == 0
    assert "Serving over FastCGI (prefork) on [::1]" in run.stdout


def test_scriptname_mounts_the_project_under_a_prefix(runner: Runner) -> None:
    """Like Apache's mod_proxy_fcgi: SCRIPT_NAME is the whole path and there is no PATH_INFO."""
    sock = str(runner.tmp / "app.sock")
    runner.serve("daemonize=false", f"socket={sock}", "scriptname=/app/", address=sock)
    response = fcgi_request(
        sock,
        "GET",
        "/app/echo/",
        query="x=1",
        params={"SCRIPT_NAME": "/app/echo/", "PATH_INFO": None},
    )
    data = response.json()
    assert (data["script_name"], data["path_info"], data["path"]) == (
        "/app",
        "/echo/",
        "/app/echo/",
    )
    assert data["reverse_echo"] == "/app/echo/"
    assert data["absolute_uri"].endswith("/app/echo/?x=1")
