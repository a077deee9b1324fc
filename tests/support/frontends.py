"""Real web servers in front of runfcgi, configured from the recipes in docs/configs/.

A recipe is written for a person (``listen 80``, ``/run/mysite/fcgi.sock``); the harness
changes only those addresses, then wraps it in the smallest main configuration the
server needs to run unprivileged in a temporary directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.paths import CONFIGS

DOC_SOCKET = "/run/mysite/fcgi.sock"
DOC_SCGI_SOCKET = "/run/mysite/scgi.sock"
# Backends listening on TCP, in the order a recipe lists them.
DOC_TCP = ("127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003")
DOC_LISTEN = "listen 80;"
# STATIC_ROOT, which every recipe serves at /static/ (/app/static/ under the prefix).
DOC_STATIC = "/srv/mysite/static/"


class FrontendMissing(RuntimeError):
    """The web server binary is not installed; the message says what to install."""


def find(binary: str, package: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        raise FrontendMissing(f"{binary} is not installed (Debian package: {package}).")
    return path


def recipe(name: str, replacements: dict[str, str]) -> str:
    """A docs/configs file with its example addresses replaced; each must occur."""
    text = (CONFIGS / name).read_text()
    for old, new in replacements.items():
        if old not in text:
            raise AssertionError(f"{name} no longer contains {old!r}")
        text = text.replace(old, new)
    return text


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the web server exited with {proc.returncode}:\n{log.read_text()}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the web server did not listen on {port} within {timeout} s")


class Frontend:
    """What the web server harnesses share: start in a new session, wait, stop, logs."""

    directory: Path
    port: int
    proc: subprocess.Popen[bytes] | None

    def start(self) -> Frontend:
        """Write the configuration and start the server; returns once it listens."""
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def _launch(self, argv: list[str], log_name: str, env: dict[str, str] | None = None) -> None:
        """Start the server in its own session; fail with its error log if it does not listen."""
        log = self.directory / log_name
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, self.proc, log)
        except RuntimeError as err:
            self.stop()
            raise RuntimeError(f"{err}\n{self.error_log()}") from None

    def _stop_group(self, signum: signal.Signals) -> None:
        """Signal the server's process group; SIGKILL it if it is still there after 10 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signum)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Nginx(Frontend):
    """nginx in the foreground with one server block, in its own directory."""

    directory: Path
    server_block: str
    port: int
    # The workers' user when started as root, such as www-data; else the test's own user.
    user: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def config(self) -> str:
        user = ""
        if self.user is not None:
            user = f"user {self.user};"
        elif os.geteuid() == 0:
            # Workers run as the test's user so they can reach sockets in its temp dirs.
            name = pwd.getpwuid(os.getuid()).pw_name
            user = f"user {name};"
        temp = self.directory / "temp"
        return f"""
{user}
worker_processes 1;
daemon off;
pid {self.directory}/nginx.pid;
error_log {self.directory}/error.log warn;
events {{ worker_connections 512; }}
http {{
    # As Debian's nginx.conf: a stylesheet must come as text/css or browsers ignore it.
    include mime.types;
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {temp}/body;
    fastcgi_temp_path {temp}/fastcgi;
    scgi_temp_path {temp}/scgi;
    uwsgi_temp_path {temp}/uwsgi;
    proxy_temp_path {temp}/proxy;
{self.server_block}
}}
"""

    def start(self) -> Nginx:
        binary = find("nginx", "nginx-light")
        (self.directory / "temp").mkdir(parents=True, exist_ok=True)
        for params in ("fastcgi_params", "scgi_params", "uwsgi_params", "mime.types"):
            source = Path("/etc/nginx") / params
            if source.exists():
                shutil.copy(source, self.directory / params)
        conf = self.directory / "nginx.conf"
        conf.write_text(self.config())
        self._launch([binary, "-p", str(self.directory), "-c", str(conf)], "nginx.out")
        return self

    def stop(self) -> None:
        """QUIT: nginx finishes the requests it is serving."""
        self._stop_group(signal.SIGQUIT)
