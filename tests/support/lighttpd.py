"""lighttpd in front of runfcgi, configured from the recipes in docs/configs/lighttpd-*.

A recipe is a snippet for ``/etc/lighttpd/conf-available/`` written for a person (the
socket in ``/run/mysite/``, a backend on port 8001, the project in ``/srv/mysite``); the
harness changes only those, then includes it from the smallest main configuration
lighttpd needs to run in the foreground from a temporary directory.

With ``bin-path`` lighttpd starts runfcgi itself, so lighttpd is stopped with TERM to
its own pid: what it started must then go away by itself, and ``stop()`` reports
whatever did not.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.frontends import Frontend, find
from tests.support.processes import children_of, group_members

DOC_SCGI_PORT = '"port" => 8001'
DOC_AJP_PORT = '"port" => 8009'
DOC_SPAWN_SOCKET = "/run/lighttpd/mysite-fcgi.sock"
DOC_PYTHON = "/srv/mysite/venv/bin/python"
DOC_MANAGE = "/srv/mysite/manage.py"
DOC_SETTINGS = '"mysite.settings"'


def account_lines() -> str:
    """As root, lighttpd switches to the test's user, so it can reach the test's sockets.

    lighttpd refuses to switch to uid 0; a test run by root itself keeps running as root.
    """
    if os.geteuid() != 0 or os.getuid() == 0:
        return ""
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    return f'server.username = "{user}"\nserver.groupname = "{group}"\n'


@dataclass
class Lighttpd(Frontend):
    """``lighttpd -D`` with one recipe included, in its own directory and session."""

    directory: Path
    site: str
    port: int
    env: dict[str, str] | None = None
    # Started as root, lighttpd serves as this user and its group, such as www-data.
    user: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def config(self) -> str:
        d = self.directory
        return f"""
server.document-root = "{d}/htdocs"
server.port = {self.port}
server.bind = "127.0.0.1"
server.modules = ("mod_indexfile", "mod_access", "mod_alias", "mod_redirect")
server.errorlog = "{d}/error.log"
server.upload-dirs = ("{d}/uploads")
{account_lines() if self.user is None else self._user_lines()}
# Debian's /etc/lighttpd/lighttpd.conf normalizes request paths this way.
server.http-parseopts = (
    "header-strict" => "enable",
    "host-strict" => "enable",
    "host-normalize" => "enable",
    "url-normalize-unreserved" => "enable",
    "url-normalize-required" => "enable",
    "url-ctrls-reject" => "enable",
    "url-path-2f-decode" => "enable",
    "url-path-dotseg-remove" => "enable",
)

# As Debian's lighttpd.conf: a stylesheet must come as text/css or browsers ignore it.
include_shell "/usr/share/lighttpd/create-mime.conf.pl"

include "{d}/site.conf"
"""

    def _user_lines(self) -> str:
        return f'server.username = "{self.user}"\nserver.groupname = "{self.user}"\n'

    def start(self) -> Lighttpd:
        binary = find("lighttpd", "lighttpd")
        for name in ("htdocs", "uploads"):
            (self.directory / name).mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            # lighttpd opens its error log, and writes request bodies, as that user.
            entry = pwd.getpwnam(self.user)
            for directory in (self.directory, self.directory / "uploads"):
                os.chown(directory, entry.pw_uid, entry.pw_gid)
        (self.directory / "site.conf").write_text(self.site)
        conf = self.directory / "lighttpd.conf"
        conf.write_text(self.config())
        self._launch([binary, "-D", "-f", str(conf)], "lighttpd.out", env=self.env)
        return self

    def spawned(self) -> list[int]:
        """The backends lighttpd started itself (``bin-path``)."""
        if self.proc is None:
            return []
        return [pid for pid, state in children_of(self.proc.pid).items() if state not in "ZX"]

    def stop(self, timeout: float = 10) -> list[int]:
        """TERM lighttpd, which stops the backends it started; returns what outlived it.

        Whatever is still in lighttpd's process group after ``timeout`` is killed.
        """
        if self.proc is None:
            return []
        pgid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self.proc = None
        deadline = time.monotonic() + timeout
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = group_members(pgid)
        for pid in left:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left
