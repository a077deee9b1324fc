"""Under a mount prefix, the links Django makes to static and uploaded files carry it.

startproject's ``STATIC_URL = "static/"`` is relative: Django puts the request's
SCRIPT_NAME in front. The system checks that runfcgi runs at start read STATIC_URL and
MEDIA_URL before any request came in; these servers run them (no ``--skip-checks``),
started by ``manage.py runfcgi`` and by an ``.fcgi`` script's ``runfastcgi()``, in the
foreground and as a daemon, with both process models.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import pytest

from tests.support.clients import fcgi_request
from tests.support.paths import TESTPROJECT
from tests.support.processes import tagged_pids
from tests.support.runner import Runner

SCRIPT = """\
import os, sys
sys.path.insert(0, {testproject!r})
os.environ['DJANGO_SETTINGS_MODULE'] = "testproject.settings"
from django_runfcgi import runfastcgi
runfastcgi({words!r})
"""

UNDER_APP = {
    "static": "/app/static/admin/css/base.css",
    "static_url": "/app/static/",
    "media_url": "/app/media/",
    "media_file": "/app/media/report.pdf",
}
STYLESHEET = re.compile(rb'<link rel="stylesheet" href="([^"]*)"')


def start(runner: Runner, how: str, daemonize: bool, *words: str) -> str:
    """A server on a unix socket, checks included; returns its address."""
    sock = str(runner.tmp / "app.sock")
    words = (f"socket={sock}", f"daemonize={str(daemonize).lower()}", *words)
    if daemonize:
        words = (*words, f"pidfile={runner.tmp / 'app.pid'}", f"workdir={runner.tmp}")
    command = None
    if how == "runfastcgi":
        script = runner.tmp / "mysite.fcgi"
        script.write_text(SCRIPT.format(testproject=str(TESTPROJECT), words=list(words)))
        command = [sys.executable, str(script)]
    if daemonize:
        parent = runner.run(*words, command=command)
        assert parent.proc.returncode == 0, parent.describe()
        assert tagged_pids(runner.tag), "the daemon is not running"
    else:
        runner.serve(*words, command=command, address=sock)
    return sock


def stop(runner: Runner, daemonize: bool) -> None:
    """TERM the server (the daemon through its pidfile); it leaves no process behind."""
    if daemonize:
        os.kill(int((runner.tmp / "app.pid").read_text()), signal.SIGTERM)
    else:
        runner.runs[-1].signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and tagged_pids(runner.tag):
        time.sleep(0.05)
    assert tagged_pids(runner.tag) == []


@pytest.mark.parametrize("method", ["prefork", "threaded"])
@pytest.mark.parametrize("daemonize", [False, True], ids=["foreground", "daemon"])
@pytest.mark.parametrize("how", ["manage.py", "runfastcgi"])
def test_static_and_media_urls_carry_the_mount_prefix(
    runner: Runner, how: str, daemonize: bool, method: str
) -> None:
    sock = start(runner, how, daemonize, f"method={method}")
    login = fcgi_request(sock, "GET", "/app/admin/login/", script_name="/app")
    assert login.status == 200, login.body[:400]
    links = [link.decode() for link in STYLESHEET.findall(login.body)]
    assert "/app/static/admin/css/base.css" in links
    assert [link for link in links if not link.startswith("/app/static/admin/css/")] == []
    assets = fcgi_request(sock, "GET", "/app/assets/", script_name="/app")
    assert assets.json() == UNDER_APP
    stop(runner, daemonize)


def test_storages_used_while_loading_take_the_prefix(runner: Runner) -> None:
    """The static and media storages made before the first request are made again."""
    sock = str(runner.tmp / "app.sock")
    runner.serve(
        "daemonize=false",
        f"socket={sock}",
        env={"TESTPROJECT_URLS_AT_LOAD": "1"},
        address=sock,
    )
    assets = fcgi_request(sock, "GET", "/app/assets/", script_name="/app")
    assert assets.json() == UNDER_APP
