"""Every unix-socket recipe, as written, with the project run by a user other than the
web server's.

On a real machine the web server's workers run as ``www-data`` and the project as its
own user. Here runfcgi is started as root with the very command the deployment page
shows (``/run/mysite`` moved to a temporary directory, ``user=mysite`` become
``user=nobody``, who is not in group ``www-data``), and nginx, Apache and lighttpd serve
as ``www-data``. Without the right group and mode on the socket they answer 502 (503 for
lighttpd): the last test shows that this harness does see that.
"""

from __future__ import annotations

import grp
import pwd
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.accounts import nobody, reachable_interpreter_command, require_root
from tests.support.apache import Apache, vhost
from tests.support.binaries import require
from tests.support.frontends import DOC_LISTEN, DOC_STATIC, Nginx, recipe
from tests.support.http import http_request
from tests.support.lighttpd import Lighttpd
from tests.support.net import free_port
from tests.support.paths import ROOT, TESTPROJECT
from tests.support.runner import Runner, wait_until_accepting
from tests.support.scenarios import SCENARIOS, Site

pytestmark = pytest.mark.e2e

WEB_USER = "www-data"
DOC_RUN_DIR = "/run/mysite"
DOC_USER = "user=mysite"
DOCS = ROOT / "docs"
CHECKS = ("get", "non-ascii-path", "post-1MB", "multipart", "cookies")


@dataclass(frozen=True)
class Recipe:
    frontend: str  # "nginx", "apache" or "lighttpd"
    config: str  # the file under docs/configs/
    page: str  # the deployment page that shows the command to start runfcgi
    socket: str  # the socket's name in /run/mysite
    mount: str = ""


RECIPES = [
    Recipe("nginx", "nginx-fastcgi.conf", "deployment/nginx.rst", "fcgi.sock"),
    Recipe("nginx", "nginx-fastcgi-prefix.conf", "deployment/nginx.rst", "fcgi.sock", "/app"),
    Recipe("nginx", "nginx-fastcgi-streaming.conf", "deployment/nginx.rst", "fcgi.sock"),
    Recipe("nginx", "nginx-scgi.conf", "deployment/nginx.rst", "scgi.sock"),
    Recipe("apache", "apache-fcgi.conf", "deployment/apache.rst", "fcgi.sock"),
    Recipe("lighttpd", "lighttpd-fastcgi.conf", "deployment/lighttpd.rst", "fcgi.sock"),
    Recipe(
        "lighttpd", "lighttpd-fastcgi-prefix.conf", "deployment/lighttpd.rst", "fcgi.sock", "/app"
    ),
]


def documented_command(page: str, socket_name: str) -> list[str]:
    """The one ``./manage.py runfcgi`` line of ``page`` that serves ``socket_name`` as
    another user."""
    text = (DOCS / page).read_text()
    lines = {
        line.strip()
        for line in text.splitlines()
        if line.strip().startswith("./manage.py runfcgi ")
        and f"socket={DOC_RUN_DIR}/{socket_name}" in line
        and DOC_USER in line
    }
    assert len(lines) == 1, f"{page} shows {len(lines)} commands for {socket_name}: {lines}"
    return lines.pop().split()[2:]


def as_run_here(words: list[str], run_dir: Path, user: str) -> list[str]:
    """The documented words with the test's directory and user in place of mysite's."""
    return [
        f"user={user}" if word == DOC_USER else word.replace(DOC_RUN_DIR, str(run_dir))
        for word in words
    ]


def web_user() -> str:
    require_root()
    try:
        pwd.getpwnam(WEB_USER)
        grp.getgrnam(WEB_USER)
    except KeyError:
        pytest.skip(f"no user and group {WEB_USER!r} on this system")
    return WEB_USER


def start_runfcgi(runner: Runner, words: list[str]) -> None:
    """Start the documented command as root; it detaches once it serves, as it would."""
    argv = [sys.executable, str(TESTPROJECT / "manage.py"), "runfcgi", *words]
    command = reachable_interpreter_command(argv, runner.tmp / "stage")
    starter = runner.start(command=command)
    assert starter.wait(30) == 0, starter.describe()


def frontend_for(
    item: Recipe, directory: Path, run_dir: Path, port: int
) -> Nginx | Apache | Lighttpd:
    """The recipe's web server, serving as www-data, with the test's socket and port."""
    static = directory.parent / "static"
    static.mkdir(exist_ok=True)
    replacements = {
        f"{DOC_RUN_DIR}/{item.socket}": str(run_dir / item.socket),
        DOC_STATIC: f"{static}/",
    }
    if item.frontend == "nginx":
        require("nginx", "nginx-light")
        block = recipe(item.config, replacements | {DOC_LISTEN: f"listen 127.0.0.1:{port};"})
        return Nginx(directory, block, port, user=WEB_USER)
    if item.frontend == "apache":
        require("apache2", "apache2")
        return Apache(
            directory, recipe(item.config, replacements | vhost(port)), port, user=WEB_USER
        )
    require("lighttpd", "lighttpd")
    return Lighttpd(directory, recipe(item.config, replacements), port, user=WEB_USER)


@contextmanager
def serving(item: Recipe, words: list[str] | None = None) -> Iterator[tuple[Site, Path]]:
    """runfcgi started as the page says, behind the recipe's web server as www-data."""
    web_user()
    tmp = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    # The test's own directory, which the web server's workers must be able to search.
    tmp.chmod(0o755)
    runner = Runner(tmp)
    frontend: Nginx | Apache | Lighttpd | None = None
    run_dir = tmp / "run" / "mysite"
    try:
        documented = words or documented_command(item.page, item.socket)
        start_runfcgi(runner, as_run_here(documented, run_dir, nobody().name))
        wait_until_accepting(None, str(run_dir / item.socket), 20)
        port = free_port()
        frontend = frontend_for(item, tmp / item.frontend, run_dir, port)
        frontend.start()
        protocol = "scgi" if item.socket.startswith("scgi") else "fcgi"
        yield Site(item.frontend, protocol, "as-www-data", item.mount, port, streams=True), run_dir
    finally:
        if frontend is not None:
            frontend.stop()
        runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("item", RECIPES, ids=lambda r: r.config.removesuffix(".conf"))
def test_recipe_works_as_written_with_the_project_run_as_another_user(item: Recipe) -> None:
    with serving(item) as (site, run_dir):
        for name in CHECKS:
            SCENARIOS[name](site)
        served_by = site.request("GET", "/echo/").json()["pid"]
        status = Path(f"/proc/{served_by}/status").read_text()
        uid = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
        assert uid is not None
        assert int(uid.group(1)) == nobody().uid
        sock = (run_dir / item.socket).stat()
        assert (stat.S_IMODE(sock.st_mode), sock.st_gid) == (0o660, grp.getgrnam(WEB_USER).gr_gid)


def test_without_the_socket_group_the_web_server_is_refused() -> None:
    """The harness sees the 502 the recipes gave before socketgroup= and socketmode=."""
    item = RECIPES[0]
    words = [
        word
        for word in documented_command(item.page, item.socket)
        if not word.startswith(("socketgroup=", "socketmode="))
    ]
    with serving(item, words) as (site, _):
        assert http_request(site.port, "GET", site.url("/echo/"), timeout=10).status == 502
