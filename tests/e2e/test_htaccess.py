"""The warning at the top of docs/migrating.rst, through Apache httpd with mod_fcgid.

Apache without mod_fastcgi does not know the handler an old ``.htaccess`` names
(``fastcgi-script``) and serves ``mysite.fcgi`` as a plain file: its source, with 200.
The documented ``.htaccess`` (docs/configs/htaccess) makes mod_fcgid run it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.apache import DOC_PROJECT, DOC_PYTHON, DOC_SETTINGS, Apache
from tests.support.frontends import recipe
from tests.support.http import HttpResponse, http_request
from tests.support.net import free_port
from tests.support.paths import TESTPROJECT
from tests.support.processes import alive, wait_for
from tests.support.runner import Runner

pytestmark = pytest.mark.e2e

DOCUMENTED_HANDLER = "AddHandler fcgid-script .fcgi"
# The line of Django 1.8's documentation, for the long-gone mod_fastcgi.
OLD_HANDLER = "AddHandler fastcgi-script .fcgi"
# A line of mysite.fcgi that only its source contains.
SOURCE_LINE = b"from django_runfcgi import runfastcgi"
DOC_WEBDIR = "/home/mysite/public_html"


class SharedHost:
    """Apache with one user's web directory holding mysite.fcgi and an .htaccess."""

    def __init__(self, directory: Path, htaccess: str) -> None:
        self.runner = Runner(directory)
        self.htdocs = htdocs = directory / "htdocs"
        htdocs.mkdir()
        (htdocs / ".htaccess").write_text(htaccess)
        script = htdocs / "mysite.fcgi"
        script.write_text(
            recipe(
                "mysite.fcgi",
                {
                    DOC_PYTHON: f"#!{sys.executable}",
                    DOC_PROJECT: str(TESTPROJECT),
                    DOC_SETTINGS: '"testproject.settings"',
                },
            )
        )
        script.chmod(0o755)
        self.port = free_port()
        env = self.runner.env()
        site = f"""
<VirtualHost 127.0.0.1:{self.port}>
    DocumentRoot {htdocs}
    <Directory {htdocs}>
        AllowOverride FileInfo Options=ExecCGI
        Require all granted
    </Directory>
</VirtualHost>
"""
        main = "\n".join(
            f"FcgidInitialEnv {name} {env[name]}"
            for name in ("RUNFCGI_TEST_TAG", "TESTPROJECT_DB", "PYTHONUNBUFFERED")
        )
        self.apache = Apache(directory / "apache", site, self.port, main=main)

    def get(self, path: str) -> HttpResponse:
        return http_request(self.port, "GET", path, timeout=20)


@pytest.fixture
def tmp_web(apache_binary: str) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def serving(directory: Path, htaccess: str) -> Iterator[SharedHost]:
    """Apache serving the web directory; Apache and what mod_fcgid started stopped after."""
    host = SharedHost(directory, htaccess)
    try:
        host.apache.start()
        yield host
    finally:
        host.apache.stop()
        host.runner.cleanup()


def test_documented_htaccess_runs_the_script(tmp_web: Path) -> None:
    with serving(tmp_web, recipe("htaccess", {})) as host:
        for path in ("/echo/", "/mysite.fcgi"):
            response = host.get(path)
            assert response.status == 200, (path, response, host.apache.error_log())
            assert SOURCE_LINE not in response.body
        assert host.get("/echo/").json()["path"] == "/echo/"


def test_old_htaccess_serves_the_source_of_the_script(tmp_web: Path) -> None:
    """What the warning says: 200, with the script's source as the body."""
    with serving(tmp_web, recipe("htaccess", {DOCUMENTED_HANDLER: OLD_HANDLER})) as host:
        response = host.get("/mysite.fcgi")
        assert response.status == 200, (response, host.apache.error_log())
        assert SOURCE_LINE in response.body


def test_documented_restart_stops_only_the_script(tmp_web: Path) -> None:
    """docs/configs/fcgid-restart.sh stops the script; mod_fcgid starts a fresh one."""
    with serving(tmp_web, recipe("htaccess", {})) as host:
        old = host.get("/echo/").json()["pid"]
        # A process of the same user that only mentions the script is left alone.
        bystander = host.runner.start(
            command=[sys.executable, "-c", "import time; time.sleep(60)", "mysite.fcgi"]
        )
        script = tmp_web / "restart.sh"
        script.write_text(
            recipe(
                "fcgid-restart.sh",
                {
                    DOC_PYTHON.removeprefix("#!"): sys.executable,
                    DOC_WEBDIR: str(host.htdocs),
                },
            )
        )
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "USER": getpass.getuser()}
        result = subprocess.run(
            ["/bin/sh", str(script)], env=env, capture_output=True, timeout=30, check=False
        )
        assert result.returncode == 0, (result, Path(f"/proc/{old}/cmdline").read_bytes())
        assert wait_for(lambda: not alive(old), timeout=10)
        again = host.get("/echo/")
        assert again.status == 200
        assert again.json()["pid"] != old
        assert bystander.proc.poll() is None
