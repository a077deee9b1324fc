"""``manage.py runfcgi check``: everything a start checks, on the real command, without
serving, detaching, binding or creating anything; one line per problem, exit 1."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys

import pytest

from tests.support.net import free_port
from tests.support.paths import TESTPROJECT
from tests.support.processes import tagged_pids
from tests.support.runner import Runner


def problems(run_stderr: str) -> list[str]:
    """The lines that say what is wrong (not the warnings, nor the summary)."""
    return [
        line
        for line in run_stderr.splitlines()
        if line.strip()
        and "[WARNING]" not in line
        and not line.startswith(("Warning: ", "CommandError: "))
    ]


def test_a_start_that_would_work_passes_and_leaves_nothing(runner: Runner) -> None:
    sock, pid = runner.tmp / "run" / "app.sock", runner.tmp / "run" / "app.pid"
    before = sorted(runner.tmp.iterdir())
    run = runner.run("check", f"socket={sock}", f"pidfile={pid}", "mkdir=true")
    assert run.proc.returncode == 0, run.describe()
    assert run.stdout.splitlines()[-1] == (
        f"OK: runfcgi would serve over FastCGI (prefork) on unix:{sock}."
    )
    assert problems(run.stderr) == []
    # Not detached, not serving: nothing created (the run's own output files aside).
    after = [path for path in sorted(runner.tmp.iterdir()) if not path.name.startswith("run0.")]
    assert after == [path for path in before if not path.name.startswith("run0.")]
    assert tagged_pids(runner.tag) == []


def test_a_leftover_socket_file_is_replaceable_and_left_alone(runner: Runner) -> None:
    sock = runner.tmp / "app.sock"
    with socket.socket(socket.AF_UNIX) as leftover:
        leftover.bind(str(sock))
    run = runner.run("check", f"socket={sock}")
    assert run.proc.returncode == 0, run.describe()
    assert sock.exists()


def test_tcp_address_free(runner: Runner) -> None:
    port = free_port()
    run = runner.run("check", "protocol=ajp", "host=127.0.0.1", f"port={port}")
    assert run.proc.returncode == 0, run.describe()
    assert f"OK: runfcgi would serve over AJP 1.3 (prefork) on 127.0.0.1:{port}." in run.stdout
    # Bound for a moment, never listening, and free again.
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


def _check_fails(runner: Runner, *args: str, env: dict[str, str] | None = None) -> list[str]:
    run = runner.run("check", *args, env=env)
    assert run.proc.returncode == 1, run.describe()
    assert "Traceback" not in run.stderr
    found = problems(run.stderr)
    count = f"{len(found)} problem" + ("s" if len(found) != 1 else "")
    assert run.stderr.splitlines()[-1] == f"CommandError: {count} found: runfcgi would not start."
    return found


def test_a_bad_option(runner: Runner) -> None:
    assert _check_fails(runner, "protocol=http") == [
        "protocol='http' is not supported; use fcgi or scgi or ajp."
    ]


def test_a_misspelled_setting(runner: Runner) -> None:
    setting = runner.tmp / "runfcgi.json"
    setting.write_text(json.dumps({"maxchilren": 20}))
    found = _check_fails(runner, env={"TESTPROJECT_RUNFCGI_FILE": str(setting)})
    assert found == [
        "?: (django_runfcgi.E003) settings.RUNFCGI has an unknown key 'maxchilren'. HINT: Did "
        "you mean 'maxchildren'? 'manage.py runfcgi help' lists the options."
    ]


def test_a_system_check_error(runner: Runner) -> None:
    found = _check_fails(
        runner, f"socket={runner.tmp / 'app.sock'}", env={"TESTPROJECT_CHECK_ERROR": "1"}
    )
    assert found == ["?: (testproject.E001) testproject is configured to fail its checks."]


def test_an_application_that_does_not_load(runner: Runner) -> None:
    [line] = _check_fails(
        runner,
        f"socket={runner.tmp / 'app.sock'}",
        env={"TESTPROJECT_WSGI": "testproject.broken_wsgi.application"},
    )
    assert line.startswith(
        "WSGI application 'testproject.broken_wsgi.application' could not be loaded;"
    )
    assert "cannot be imported (on purpose)" in line


def test_a_tcp_port_in_use(runner: Runner) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert _check_fails(runner, "host=127.0.0.1", f"port={port}") == [
            f"port {port} on 127.0.0.1 is already in use by another program."
        ]


def test_a_unix_socket_another_server_listens_on(runner: Runner) -> None:
    sock = runner.tmp / "app.sock"
    with socket.socket(socket.AF_UNIX) as taken:
        taken.bind(str(sock))
        taken.listen()
        assert _check_fails(runner, f"socket={sock}") == [
            f"Another server is listening on {str(sock)!r}; refusing to take its socket."
        ]


def test_a_socket_path_that_is_not_a_socket(runner: Runner) -> None:
    path = runner.tmp / "app.sock"
    path.write_text("data")
    assert _check_fails(runner, f"socket={path}") == [
        f"{str(path)!r} exists and is not a socket; refusing to remove it."
    ]
    assert path.read_text() == "data"


def test_a_pidfile_that_names_a_live_process(runner: Runner) -> None:
    pidfile = runner.tmp / "app.pid"
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            pidfile.write_text(f"{other.pid}\n")
            assert _check_fails(
                runner, f"socket={runner.tmp / 'a.sock'}", f"pidfile={pidfile}"
            ) == [
                f"Already running as PID {other.pid} (pidfile {str(pidfile)!r}). Stop it first, "
                "or remove the pidfile if that process is not this server."
            ]
        finally:
            other.kill()


def test_an_unknown_user_and_group(runner: Runner) -> None:
    assert _check_fails(runner, "user=no-such-user-here") == [
        "user='no-such-user-here': no such user on this system; give a user name from "
        "/etc/passwd or a numeric uid."
    ]
    assert _check_fails(
        runner, f"socket={runner.tmp / 'a.sock'}", "socketgroup=no-such-group-here"
    ) == [
        "socketgroup='no-such-group-here': no such group on this system; give a group name "
        "from /etc/group or a numeric gid."
    ]


def test_every_problem_is_one_line(runner: Runner) -> None:
    missing = runner.tmp / "missing"
    found = _check_fails(
        runner,
        f"socket={missing / 'app.sock'}",
        f"pidfile={missing / 'app.pid'}",
        f"errlog={missing / 'err.log'}",
        env={"TESTPROJECT_WSGI": "testproject.broken_wsgi.application"},
    )
    assert len(found) == 4, found
    assert found[0].startswith("WSGI application 'testproject.broken_wsgi.application'")
    assert found[1:] == [
        f"The directory of pidfile={str(missing / 'app.pid')!r} does not exist; create it "
        f"(mkdir -p {missing}) or pass mkdir=true.",
        f"The directory of socket={str(missing / 'app.sock')!r} does not exist; create it "
        f"(mkdir -p {missing}) or pass mkdir=true.",
        f"Cannot open errlog={str(missing / 'err.log')!r}: No such file or directory.",
    ]
    assert not missing.exists()


def test_a_running_server_of_the_same_pidfile_is_no_problem(runner: Runner) -> None:
    """Before a restart the server still runs: its pidfile and socket are its own."""
    sock, pidfile = runner.tmp / "app.sock", runner.tmp / "app.pid"
    server = runner.serve(
        "daemonize=false", f"socket={sock}", f"pidfile={pidfile}", address=str(sock)
    )
    assert pidfile.exists() or pytest.fail(server.describe())
    run = runner.run("check", f"socket={sock}", f"pidfile={pidfile}")
    assert run.proc.returncode == 0, run.describe()
    assert (
        f"runfcgi runs as PID {server.proc.pid} (pidfile {str(pidfile)!r}); its pidfile and "
        "address are free for this start once it stops." in run.stdout
    )
    assert os.path.exists(sock)


def test_config_shows_where_each_value_came_from(runner: Runner) -> None:
    setting = runner.tmp / "runfcgi.json"
    setting.write_text(json.dumps({"protocol": "scgi", "maxchildren": 20, "socket": "/x.sock"}))
    run = runner.run(
        "config",
        "maxchildren=8",
        "--json",
        env={"TESTPROJECT_RUNFCGI_FILE": str(setting)},
    )
    assert run.proc.returncode == 0, run.describe()
    shown = json.loads(run.stdout)
    assert shown["protocol"] == {"value": "scgi", "source": "settings"}
    assert shown["maxchildren"] == {"value": 8, "source": "command line"}
    assert shown["socket"] == {"value": "/x.sock", "source": "settings"}
    assert shown["method"] == {"value": "prefork", "source": "default"}
    # A daemon by default, logging beside the directory the command started in.
    assert shown["daemonize"] == {"value": True, "source": "default"}
    assert shown["errlog"] == {"value": str(runner.tmp / "runfcgi.log"), "source": "default"}
    assert not (runner.tmp / "runfcgi.log").exists()


def _documented_exec_start_pre() -> list[str]:
    """docs/configs/mysite.service's ExecStartPre=, with this interpreter for the venv's."""
    unit = (TESTPROJECT.parent / "docs" / "configs" / "mysite.service").read_text()
    [line] = [line for line in unit.splitlines() if line.startswith("ExecStartPre=")]
    argv = shlex.split(line.partition("=")[2])
    assert argv[:4] == ["/srv/mysite/venv/bin/python", "manage.py", "runfcgi", "check"], argv
    return [sys.executable, str(TESTPROJECT / "manage.py"), *argv[2:]]


def test_the_documented_exec_start_pre(runner: Runner) -> None:
    command = _documented_exec_start_pre()
    good = runner.run(command=command)
    assert good.proc.returncode == 0, good.describe()
    assert "OK: runfcgi would serve over FastCGI (prefork) on the socket it is passed" in (
        good.stdout
    )
    broken = runner.run(
        command=command, env={"TESTPROJECT_WSGI": "testproject.broken_wsgi.application"}
    )
    assert broken.proc.returncode == 1, broken.describe()
    assert "could not be loaded" in broken.stderr
