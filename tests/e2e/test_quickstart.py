"""docs/quickstart.rst, followed: settings, collectstatic, runfcgi, nginx, a request.

The page's own commands (``collectstatic`` and the ``runfcgi`` line) are read from it
and run with its paths moved into a temporary directory; its settings
(docs/configs/quickstart-settings.py) are added to the test project's, and its nginx
site (docs/configs/nginx-quickstart.conf) runs with only the port and the paths
replaced. The system steps (apt-get, adduser, install -d) are played by the temporary
directories.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.frontends import DOC_LISTEN, DOC_SOCKET, Nginx, recipe
from tests.support.http import HttpResponse, http_request
from tests.support.net import free_port
from tests.support.paths import CONFIGS, ROOT, TESTPROJECT
from tests.support.processes import wait_for
from tests.support.runner import Runner, wait_until_accepting

pytestmark = pytest.mark.e2e

QUICKSTART = ROOT / "docs" / "quickstart.rst"
DOC_RUN_DIR = "/run/mysite"
DOC_LOG_DIR = "/var/log/mysite"
DOC_STATIC_ROOT = "/srv/mysite/static"
DOC_HOST = "example.com"
STATIC_CSS = "body { color: #333; }\n"


def page_command(prefix: str) -> list[str]:
    """The one ``$`` line of the page that starts with ``prefix``, as words."""
    lines = [
        line.strip()[2:]
        for line in QUICKSTART.read_text().splitlines()
        if line.strip().startswith(f"$ {prefix}")
    ]
    assert len(lines) == 1, (prefix, lines)
    return shlex.split(lines[0])


@dataclass
class Site:
    port: int
    errlog: Path
    pidfile: Path

    def get(self, path: str, host: str = DOC_HOST) -> HttpResponse:
        return http_request(self.port, "GET", path, headers={"Host": host}, timeout=20)


def moved(word: str, tmp: Path) -> str:
    return word.replace(DOC_RUN_DIR, str(tmp / "run")).replace(DOC_LOG_DIR, str(tmp / "log"))


@pytest.fixture(scope="module")
def site(module_runner: Runner, nginx_binary: str) -> Iterator[Site]:
    """The page followed once; every test of the module asks the same site."""
    runner = module_runner
    tmp = runner.tmp
    static_root = tmp / "static"
    assets = tmp / "assets"
    assets.mkdir()
    (assets / "quickstart.css").write_text(STATIC_CSS)
    # The page's settings on top of the test project's, plus a file for collectstatic.
    settings = recipe("quickstart-settings.py", {DOC_STATIC_ROOT: str(static_root)})
    (tmp / "quickstart_settings.py").write_text(
        "from testproject.settings import *  # noqa: F403\n"
        f"{settings}\nSTATICFILES_DIRS = [{str(assets)!r}]\n"
    )
    env = {
        "DJANGO_SETTINGS_MODULE": "quickstart_settings",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTPROJECT), str(tmp)]),
    }
    manage = [sys.executable, str(TESTPROJECT / "manage.py")]

    collectstatic = page_command("./manage.py collectstatic")
    collected = subprocess.run(
        [*manage, *collectstatic[1:]],
        env=runner.env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert collected.returncode == 0, collected.stderr
    assert (static_root / "quickstart.css").read_text() == STATIC_CSS

    (tmp / "log").mkdir()  # install -d ... /var/log/mysite
    words = [moved(word, tmp) for word in page_command("./manage.py runfcgi")[1:]]
    started = runner.run(command=[*manage, *words], env=env)
    assert started.proc.returncode == 0, started.describe()
    sock = str(tmp / "run" / "fcgi.sock")
    wait_until_accepting(None, sock, 20)

    port = free_port()
    nginx = Nginx(
        tmp / "nginx",
        recipe(
            "nginx-quickstart.conf",
            {
                DOC_LISTEN: f"listen 127.0.0.1:{port};",
                f"alias {DOC_STATIC_ROOT}/;": f"alias {static_root}/;",
                DOC_SOCKET: sock,
            },
        ),
        port,
    )
    nginx.start()
    try:
        yield Site(port, tmp / "log" / "runfcgi.log", tmp / "run" / "fcgi.pid")
    finally:
        nginx.stop()


def test_the_page_serves_the_site_through_nginx(site: Site) -> None:
    response = site.get("/echo/")
    assert response.status == 200
    assert response.json()["path"] == "/echo/"
    assert response.json()["pid"] != int(site.pidfile.read_text())  # a prefork worker


def test_static_files_come_from_static_root(site: Site) -> None:
    response = site.get("/static/quickstart.css")
    assert response.status == 200
    assert response.body == STATIC_CSS.encode()
    # Served by nginx from the directory: Django's security headers are absent.
    assert response.header("X-Frame-Options") is None


def test_other_hosts_are_refused(site: Site) -> None:
    assert site.get("/echo/", host="other.example").status == 400


def test_errors_reach_the_errlog(site: Site) -> None:
    assert site.get("/fail/").status == 500
    assert wait_for(
        lambda: "testproject.views.fail raised on purpose" in site.errlog.read_text(),
        timeout=10,
    ), site.errlog.read_text()


def test_the_page_shows_the_documented_files() -> None:
    text = QUICKSTART.read_text()
    for name in ("quickstart-settings.py", "nginx-quickstart.conf"):
        assert (CONFIGS / name).exists()
        assert f".. literalinclude:: configs/{name}" in text
