"""Old ``.fcgi`` scripts: one changed import, the rest exactly as written for Django 1.8."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import pytest

from tests.support.clients import fcgi_request, scgi_request
from tests.support.net import free_port
from tests.support.paths import TESTPROJECT
from tests.support.processes import tagged_pids
from tests.support.runner import Runner

SCRIPT = """\
import os, sys
sys.path.insert(0, {testproject!r})
os.chdir({testproject!r})
os.environ['DJANGO_SETTINGS_MODULE'] = {settings!r}
from django_runfcgi import runfastcgi
{call}
"""


def fcgi_script(runner: Runner, call: str, settings: str = "testproject.settings") -> list[str]:
    path = runner.tmp / "mysite.fcgi"
    path.write_text(SCRIPT.format(testproject=str(TESTPROJECT), call=call, settings=settings))
    return [sys.executable, str(path)]


def test_web_server_spawned_script_on_an_inherited_socket(runner: Runner) -> None:
    """As mod_fcgid runs it: the listening socket on standard input."""
    command = fcgi_script(runner, 'runfastcgi(method="threaded", daemonize="false")')
    address = str(runner.tmp / "spawned.sock")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(address)
        listening.listen(16)
        run = runner.serve(command=command, address=address, stdin=listening.fileno())
    response = fcgi_request(address, "GET", "/echo/")
    assert response.status == 200
    assert response.json()["pid"] == run.proc.pid
    assert response.json()["meta"]["wsgi.multithread"] is True


def test_list_of_words_daemonizes_like_before(runner: Runner) -> None:
    sock = runner.tmp / "app.sock"
    pidfile = runner.tmp / "app.pid"
    command = fcgi_script(
        runner, f'runfastcgi(["method=prefork", "socket={sock}", "pidfile={pidfile}"])'
    )
    parent = runner.run(command=command)
    assert parent.proc.returncode == 0, parent.describe()
    assert fcgi_request(str(sock), "GET", "/echo/").status == 200
    os.kill(int(pidfile.read_text()), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and tagged_pids(runner.tag):
        time.sleep(0.05)
    assert not sock.exists()
    assert not pidfile.exists()


def test_python_typed_values(runner: Runner) -> None:
    port = free_port()
    command = fcgi_script(
        runner,
        f'runfastcgi(protocol="scgi", host="127.0.0.1", port={port}, daemonize=False, '
        "maxchildren=4, debug=False)",
    )
    run = runner.serve(command=command, address=("127.0.0.1", port))
    assert scgi_request(("127.0.0.1", port), "GET", "/echo/").status == 200
    run.signal(signal.SIGTERM)
    assert run.wait(10) == 0


def test_bad_option_is_one_line_and_exit_1(runner: Runner) -> None:
    command = fcgi_script(runner, 'runfastcgi(["method=prefork", "sokcet=/tmp/x.sock"])')
    run = runner.run(command=command)
    assert run.proc.returncode == 1
    assert run.stderr.strip() == (
        "runfcgi: error: Unknown option 'sokcet'. Did you mean 'socket'? "
        "See 'manage.py runfcgi help'."
    )


@pytest.mark.parametrize(
    ("settings", "source", "error"),
    [
        ("mysite.settings", None, "ModuleNotFoundError: No module named 'mysite'"),
        (
            "broken_settings",
            "SECRET_KEY = (\n",
            "SyntaxError: '(' was never closed (broken_settings.py, line 1)",
        ),
        (
            "broken_settings",
            "SECRET_KEY = 'x'\nINSTALLED_APPS = ['no_such_app']\n",
            "ModuleNotFoundError: No module named 'no_such_app'",
        ),
    ],
    ids=["missing-module", "syntax-error", "missing-app"],
)
def test_bad_settings_module_is_one_line_and_exit_1(
    runner: Runner, settings: str, source: str | None, error: str
) -> None:
    if source is not None:
        (runner.tmp / f"{settings}.py").write_text(source)
    command = fcgi_script(
        runner, 'runfastcgi(method="threaded", daemonize="false")', settings=settings
    )
    run = runner.run(
        command=command, env={"PYTHONPATH": f"{runner.tmp}:{os.environ.get('PYTHONPATH', '')}"}
    )
    assert run.proc.returncode == 1, run.describe()
    assert run.stderr.strip().splitlines() == [
        f"runfcgi: error: Cannot load the project (DJANGO_SETTINGS_MODULE={settings!r}): {error}"
    ], run.describe()
