"""The process lifecycle under real traffic through nginx: reloads and restart scripts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from tests.support.clients import fcgi_request
from tests.support.frontends import DOC_LISTEN, DOC_SOCKET, Nginx, recipe
from tests.support.http import http_request
from tests.support.net import free_port
from tests.support.paths import CONFIGS, TESTPROJECT
from tests.support.processes import parent_of, processes, wait_for
from tests.support.runner import Run, Runner, wait_until_accepting

LOAD_THREADS = 4
LOAD_LIMIT = 20_000  # requests per thread, a bound that a healthy run never reaches


@contextmanager
def nginx_in_front(directory: Path, sock: str) -> Iterator[int]:
    port = free_port()
    nginx = Nginx(
        directory,
        recipe("nginx-fastcgi.conf", {DOC_LISTEN: f"listen 127.0.0.1:{port};", DOC_SOCKET: sock}),
        port,
    )
    nginx.start()
    try:
        yield port
    finally:
        nginx.stop()


class Load:
    """Browsers requesting /echo/ through nginx until stopped; every outcome counted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.outcomes: Counter[str] = Counter()
        self.releases: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(LOAD_THREADS)]

    def _run(self) -> None:
        for _ in range(LOAD_LIMIT):
            if self._stop.is_set():
                return
            try:
                response = http_request(self.port, "GET", "/echo/", timeout=30)
                outcome = str(response.status)
                release = response.json()["release"] if response.status == 200 else ""
            except (OSError, ValueError) as err:
                outcome, release = type(err).__name__, ""
            with self._lock:
                self.outcomes[outcome] += 1
                self.releases[release] += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def served(self) -> int:
        with self._lock:
            return self.outcomes["200"]

    def serves_on(self, more: int = 20, timeout: float = 10) -> bool:
        """Whether `more` requests succeed from now on, within `timeout` seconds."""
        target = self.served() + more
        return wait_for(lambda: self.served() >= target, timeout=timeout)


def reloads(run: Run) -> int:
    return run.stdout.count("Reloaded; serving")


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_reload_under_load_fails_no_request(
    runner: Runner, nginx_binary: str, method: str
) -> None:
    release = runner.tmp / "release"
    release.write_text("r0")
    sock = str(runner.tmp / "fcgi.sock")
    run = runner.serve(
        "daemonize=false",
        f"socket={sock}",
        f"method={method}",
        "maxspare=4",
        address=sock,
        env={"TESTPROJECT_RELEASE_FILE": str(release)},
    )
    with nginx_in_front(runner.tmp / "nginx", sock) as port, Load(port) as load:
        assert load.serves_on()
        for n in range(1, 4):
            release.write_text(f"r{n}")
            run.signal(signal.SIGHUP)
            assert wait_for(lambda n=n: reloads(run) >= n, timeout=30), run.describe()
            assert load.serves_on()
    print(f"3 HUP reloads ({method}) under load: {dict(load.outcomes)}")
    assert set(load.outcomes) == {"200"}, (load.outcomes, run.describe())
    assert load.releases["r3"] > 0
    assert run.proc.poll() is None, run.describe()


# Django 1.8's restart script, as docs/signals.rst shows it.
RESTART_SCRIPT = CONFIGS / "restart.sh"
DOC_PYTHON = "/srv/mysite/venv/bin/python"
# The first line of a manage.py made by django-admin startproject.
STARTPROJECT_SHEBANG = "#!/usr/bin/env python"


def masters_serving(sock: str) -> list[int]:
    """runfcgi processes started for `sock` that are not workers of another one."""
    found: dict[int, int] = {}
    for pid, fields in processes().items():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if fields[0] != "Z" and f"socket={sock}".encode() in cmdline.split(b"\0"):
            found[pid] = int(fields[1])
    return sorted(pid for pid, parent in found.items() if parent not in found)


@pytest.fixture
def old_style_site(short_tmp: Path) -> Iterator[tuple[Path, Callable[[], int]]]:
    """A project laid out for the historic restart script; its servers killed at the end.

    The script clears the environment (``env -``), PATH included, so the first line
    of manage.py (``#!/usr/bin/env python``) would find no Python: the script names the
    virtual environment's Python (this interpreter here), and the project package is
    found through PYTHONPATH="..".
    """
    site = short_tmp / "site"
    project = site / "mysite"
    project.mkdir(parents=True)
    (site / "testproject").symlink_to(TESTPROJECT / "testproject")
    manage = project / "manage.py"
    source = (TESTPROJECT / "manage.py").read_text().split("\n", 1)[1]
    manage.write_text(f"{STARTPROJECT_SHEBANG}\n{source}")
    manage.chmod(0o755)
    script = short_tmp / "restart.sh"
    script.write_text(recipe(RESTART_SCRIPT.name, {DOC_PYTHON: sys.executable}))
    sock, pidfile = short_tmp / "fcgi.sock", short_tmp / "mysite.pid"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PROJDIR": str(project),
        "PIDFILE": str(pidfile),
        "SOCKET": str(sock),
    }

    def restart() -> int:
        result = subprocess.run(
            ["/bin/sh", str(script)], env=env, capture_output=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return int(pidfile.read_text())

    try:
        yield sock, restart
    finally:
        # Only servers of this socket: a pid of an old master may belong to another
        # process by now. A daemon is not its own group leader (double fork); its
        # workers share its group.
        for master in masters_serving(str(sock)):
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(master), signal.SIGKILL)
        shutil.rmtree(site, ignore_errors=True)


def test_the_restart_script_starts_a_startproject_manage_py(
    old_style_site: tuple[Path, Callable[[], int]],
) -> None:
    """``env -`` leaves no PATH for ``#!/usr/bin/env python``; the venv's Python is named."""
    sock, restart = old_style_site
    pid = restart()
    wait_until_accepting(None, str(sock), 20)
    response = fcgi_request(str(sock), "GET", "/echo/", timeout=20)
    assert response.status == 200
    assert parent_of(response.json()["pid"]) == pid


@pytest.mark.e2e
def test_the_historic_restart_script_ten_times_under_load_fails_no_request(
    old_style_site: tuple[Path, Callable[[], int]], short_tmp: Path, nginx_binary: str
) -> None:
    sock, restart = old_style_site
    first = restart()
    wait_until_accepting(None, str(sock), 20)
    masters = [first]
    with nginx_in_front(short_tmp / "nginx", str(sock)) as port, Load(port) as load:
        assert load.serves_on()
        for _ in range(10):
            masters.append(restart())
            assert load.serves_on(10, timeout=20), load.outcomes
            assert wait_for(lambda: masters_serving(str(sock)) == [masters[-1]], timeout=35), (
                masters_serving(str(sock)),
                masters,
            )
        time.sleep(0.2)
    assert len(set(masters)) == 11
    # Each stopping server handed its socket, with the connections waiting on it, to
    # the next one: not one request failed.
    print(f"10 runs of the restart script under load: {dict(load.outcomes)}")
    assert set(load.outcomes) == {"200"}, load.outcomes
