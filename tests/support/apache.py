"""Apache httpd 2.4 in front of runfcgi, configured from the recipes in docs/configs/.

A recipe is a site file written for a person (``<VirtualHost *:80>``, the socket in
``/run/mysite/``, backends on ``127.0.0.1:8001``...); the harness changes only those
addresses and wraps the site in the smallest main configuration Apache needs to run
from a temporary directory.

Apache refuses to serve as root and switches to ``User`` instead, but that user could
not open the test's sockets, temp directories or interpreter. So when the tests run as
root, Apache starts in a user namespace where the test's uid looks like an ordinary
user: it keeps the test's file access and needs no ``User`` at all.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.frontends import Frontend, find

DOC_VHOST = "<VirtualHost *:80>"
DOC_FCGI_TCP = "127.0.0.1:8001"
DOC_SCGI_TCP = "127.0.0.1:8002"
DOC_AJP_FIRST = "127.0.0.1:8009"
DOC_AJP_SECOND = "127.0.0.1:8010"
DOC_PYTHON = "#!/home/mysite/venv/bin/python"
DOC_PROJECT = "/home/mysite/mysite"
DOC_SETTINGS = '"mysite.settings"'

MODULES = "/usr/lib/apache2/modules"
LOADED = (
    "authz_core",
    "authz_host",
    "mime",
    "dir",
    "alias",
    "env",
    "setenvif",
    "headers",
    "rewrite",
    "proxy",
    "proxy_fcgi",
    "proxy_scgi",
    "proxy_ajp",
    "proxy_balancer",
    "slotmem_shm",
    "lbmethod_byrequests",
    "fcgid",
)

# Small pools that still serve the scenarios' eight concurrent requests at once.
MPM_SETTINGS = {
    "event": "StartServers 1\nServerLimit 2\nThreadsPerChild 25\nMaxRequestWorkers 50\n"
    "MinSpareThreads 10\nMaxSpareThreads 50",
    "prefork": "StartServers 4\nMinSpareServers 2\nMaxSpareServers 12\nServerLimit 24\n"
    "MaxRequestWorkers 24",
}


def vhost(port: int) -> dict[str, str]:
    """The replacement that puts a documented site on the test's loopback port."""
    return {DOC_VHOST: f"<VirtualHost 127.0.0.1:{port}>"}


@dataclass
class Apache(Frontend):
    """``apache2 -DFOREGROUND`` with one site, its own ServerRoot and logs."""

    directory: Path
    site: str
    port: int
    mpm: str = "event"
    main: str = ""
    # Started as root, Apache serves as this user (User and Group), such as www-data.
    user: str | None = None
    # Loaded after LOADED, such as ("socache_shmcb", "ssl") for an HTTPS site.
    modules: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def config(self) -> str:
        d = self.directory
        modules = "\n".join(
            f"LoadModule {name}_module {MODULES}/mod_{name}.so"
            for name in (f"mpm_{self.mpm}", *LOADED, *self.modules)
        )
        account = f"User {self.user}\nGroup {self.user}" if self.user else ""
        return f"""
ServerRoot {d}
ServerName 127.0.0.1
Listen 127.0.0.1:{self.port}
PidFile {d}/httpd.pid
DefaultRuntimeDir {d}
Mutex file:{d} default
ErrorLog {d}/error.log
LogLevel warn
{modules}
TypesConfig /etc/mime.types
{MPM_SETTINGS[self.mpm]}
Timeout 60
FcgidIPCDir {d}/fcgid
FcgidProcessTableFile {d}/fcgid/table
{account}
<Directory />
    AllowOverride None
    Require all denied
</Directory>
{self.main}
{self.site}
"""

    def command(self, conf: Path) -> list[str]:
        argv = [find("apache2", "apache2"), "-f", str(conf), "-DFOREGROUND"]
        if os.geteuid() == 0 and self.user is None:
            return ["unshare", "--user", "--map-user=65533", "--map-group=65533", *argv]
        return argv

    def start(self) -> Apache:
        (self.directory / "fcgid").mkdir(parents=True, exist_ok=True)
        conf = self.directory / "httpd.conf"
        conf.write_text(self.config())
        self._launch(self.command(conf), "httpd.out")
        return self

    def stop(self) -> None:
        """TERM to the process group: Apache, its children and what mod_fcgid spawned."""
        self._stop_group(signal.SIGTERM)
