"""settings.RUNFCGI on real processes: a server configured once, the command line on
top, and the mistakes that stop it before it starts (and a reload that would move it)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tests.support.clients import fcgi_request, scgi_request
from tests.support.paths import TESTPROJECT
from tests.support.processes import tagged_pids, wait_for
from tests.support.runner import Runner


def settings_file(runner: Runner, setting: Any) -> dict[str, str]:
    """The environment that gives testproject ``RUNFCGI = setting``."""
    path = runner.tmp / "runfcgi.json"
    path.write_text(json.dumps(setting))
    return {"TESTPROJECT_RUNFCGI_FILE": str(path)}


def test_a_server_configured_in_settings_alone(runner: Runner) -> None:
    sock = str(runner.tmp / "scgi.sock")
    env = settings_file(
        runner, {"protocol": "scgi", "socket": sock, "daemonize": False, "maxchildren": 3}
    )
    run = runner.serve(address=sock, env=env)
    assert scgi_request(sock, "GET", "/echo/", timeout=10).status == 200
    assert "Serving over SCGI (prefork) on unix:" in run.stdout
    run.signal(signal.SIGTERM)
    assert run.wait(10) == 0, run.describe()


def test_the_command_line_wins_over_settings(runner: Runner) -> None:
    in_settings, given = str(runner.tmp / "a.sock"), str(runner.tmp / "b.sock")
    env = settings_file(runner, {"protocol": "scgi", "socket": in_settings, "daemonize": False})
    run = runner.serve("protocol=fcgi", f"socket={given}", address=given, env=env)
    assert fcgi_request(given, "GET", "/echo/", timeout=10).status == 200
    assert not os.path.exists(in_settings)
    run.signal(signal.SIGTERM)
    assert run.wait(10) == 0, run.describe()


def test_a_misspelled_key_stops_check_and_runfcgi(runner: Runner) -> None:
    sock = runner.tmp / "app.sock"
    env = settings_file(runner, {"socket": str(sock), "maxchilren": 20})
    check = runner.run(command=[sys.executable, str(TESTPROJECT / "manage.py"), "check"], env=env)
    assert check.proc.returncode == 1
    expected = "?: (django_runfcgi.E003) settings.RUNFCGI has an unknown key 'maxchilren'."
    assert expected in check.stderr
    assert "HINT: Did you mean 'maxchildren'?" in check.stderr
    start = runner.run(env=env)
    assert start.proc.returncode == 1
    assert "django_runfcgi.E003" in start.stderr
    assert not sock.exists()


def test_a_reload_that_would_move_the_socket_is_cancelled(runner: Runner) -> None:
    """The settings change with the code; a reload cannot take the server elsewhere."""
    sock, moved = str(runner.tmp / "app.sock"), str(runner.tmp / "moved.sock")
    env = settings_file(runner, {"socket": sock, "daemonize": False})
    run = runner.serve(address=sock, env=env)
    Path(env["TESTPROJECT_RUNFCGI_FILE"]).write_text(
        json.dumps({"socket": moved, "daemonize": False})
    )
    run.signal(signal.SIGHUP)
    assert wait_for(lambda: "Reload cancelled" in run.stderr, timeout=30), run.describe()
    assert (
        f"A reload keeps the server's address (host=, port=, socket=): unix:{sock}, and the "
        f"options now give unix:{moved}; restart the server to change it." in run.stderr
    )
    assert fcgi_request(sock, "GET", "/echo/", timeout=10).status == 200
    assert not os.path.exists(moved)
    run.signal(signal.SIGTERM)
    assert run.wait(10) == 0, run.describe()


def test_a_reload_picks_up_new_pool_settings(runner: Runner) -> None:
    sock = str(runner.tmp / "app.sock")
    pool = {"socket": sock, "daemonize": False, "maxspare": 3, "minspare": 3}
    env = settings_file(runner, pool)
    run = runner.serve(address=sock, env=env)
    assert wait_for(lambda: len(tagged_pids(runner.tag)) == 4, timeout=20)
    Path(env["TESTPROJECT_RUNFCGI_FILE"]).write_text(
        json.dumps(pool | {"maxspare": 1, "minspare": 1, "maxchildren": 1})
    )
    run.signal(signal.SIGHUP)
    assert wait_for(lambda: "Reloaded; serving" in run.stdout, timeout=30), run.describe()
    # The master and the one worker maxchildren=1 allows now.
    assert wait_for(lambda: len(tagged_pids(runner.tag)) == 2, timeout=20), run.describe()
    assert fcgi_request(sock, "GET", "/echo/", timeout=10).status == 200
    run.signal(signal.SIGTERM)
    assert run.wait(10) == 0, run.describe()
