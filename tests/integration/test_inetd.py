"""The lines of docs/configs/inetd.conf, run by a real inetd (Debian's openbsd-inetd).

``inetd -d CONF`` runs in the foreground with the documented lines, their example paths
replaced by this checkout's, and spawns one runfcgi per connection as it would in
production. A stand-in such as socat passes a full path as argv[0] whatever the line
says; inetd passes the line's argv[0] as written, which is what decides whether a
virtual environment's Python finds its packages.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import sys

from tests.support.binaries import require
from tests.support.clients import Response, fcgi_request, scgi_request
from tests.support.frontends import DOC_SCGI_SOCKET, recipe
from tests.support.net import can_connect, free_port
from tests.support.paths import TESTPROJECT
from tests.support.processes import wait_for
from tests.support.runner import Run, Runner

DOC_PYTHON = "/srv/mysite/venv/bin/python"
DOC_MANAGE = "/srv/mysite/manage.py"
DOC_USER = "\tmysite\t"
DOC_FCGI_ADDRESS = "127.0.0.1:9000"
# What inetd started by systemd or an init script has on PATH: no virtual environment.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def start_inetd(runner: Runner, port: int, scgi_socket: str) -> Run:
    """inetd in the foreground with the documented lines on the test's addresses."""
    user = pwd.getpwuid(os.getuid()).pw_name
    conf = runner.tmp / "inetd.conf"
    conf.write_text(
        recipe(
            "inetd.conf",
            {
                DOC_PYTHON: sys.executable,
                DOC_MANAGE: str(TESTPROJECT / "manage.py"),
                DOC_USER: f"\t{user}\t",
                DOC_FCGI_ADDRESS: f"127.0.0.1:{port}",
                DOC_SCGI_SOCKET: scgi_socket,
            },
        )
    )
    inetd = runner.start(
        command=[require("inetd", "openbsd-inetd"), "-d", str(conf)], env={"PATH": SYSTEM_PATH}
    )
    assert wait_for(lambda: "ADD:" in inetd.stderr and os.path.exists(scgi_socket), timeout=10), (
        inetd.describe()
    )
    assert wait_for(lambda: can_connect(("127.0.0.1", port)), timeout=10), inetd.describe()
    return inetd


def spawned_by(inetd: Run, responses: list[Response]) -> set[int]:
    """The pids that served ``responses``, each one a program inetd started."""
    pids = set()
    for response in responses:
        assert response.status == 200, (response, inetd.describe())
        pid = response.json()["pid"]
        assert re.search(rf"^{pid} execv ", inetd.stderr, re.MULTILINE), inetd.describe()
        pids.add(pid)
    return pids


def test_documented_lines_serve_fastcgi_on_tcp_and_scgi_on_a_unix_socket(
    runner: Runner,
) -> None:
    port = free_port()
    scgi_socket = str(runner.tmp / "scgi.sock")
    inetd = start_inetd(runner, port, scgi_socket)
    body = b"x" * 200_000

    fastcgi = [fcgi_request(("127.0.0.1", port), "GET", "/echo/", timeout=20) for _ in range(2)]
    scgi = [scgi_request(scgi_socket, "POST", "/echo/", body=body, timeout=20) for _ in range(2)]

    assert len(spawned_by(inetd, fastcgi + scgi)) == 4
    for response in scgi:
        assert response.json()["body_length"] == len(body)
    # As docs/supervisors.rst says: inetd leaves the socket file open to every user.
    assert stat.S_IMODE(os.stat(scgi_socket).st_mode) == 0o666
