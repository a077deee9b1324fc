"""Run one command from the docs as a user would, then check that it served and stopped.

    unshare --mount --net --pid --fork --mount-proc --propagation private \\
        python -m tests.support.doc_sandbox SITE 'COMMAND' ['SET-UP COMMAND'...]

Inside the new namespaces /srv, /home, /run and /var/log are empty file systems, the
project SITE (a fresh ``django-admin startproject mysite``) is copied to /srv/mysite and
/home/mysite/mysite, where the pages put it, and the loopback interface is this run's
alone. The page's own set-up commands that make directories run first, then the
command, exactly as the page shows it, fixed ports and /run paths
included, beside any other test. A command for a web server on another machine
(``host=`` its own address, ``allow=`` the web server's) finds both addresses on that
loopback, and is asked from the web server's. When this process ends the kernel ends every process
the command left, so nothing outlives the run. Exit status 0 means: it served a request
over the protocol it names and stopped leaving no socket, pidfile or process behind.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django_runfcgi import options
from django_runfcgi.protocols.clients import AllowEntry
from tests.support import reachable
from tests.support.clients import Response, ajp_request, fcgi_request, scgi_request
from tests.support.net import Address
from tests.support.paths import ROOT

PROJECT = Path("/srv/mysite")
HOME_PROJECT = Path("/home/mysite/mysite")
FRESH = ("/srv", "/home", "/run", "/var/log")
CLIENTS: dict[str, Callable[..., Response]] = {
    "fcgi": fcgi_request,
    "scgi": scgi_request,
    "ajp": ajp_request,
}
SECONDS = 60.0
SETTINGS_VARIABLE = "DOC_RUNFCGI_SETTINGS"
"""A page's ``RUNFCGI = {...}`` file, which the project's settings end with."""
USER, USER_ID = "mysite", 2999


class Failed(Exception):
    pass


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _add_user(scratch: Path) -> None:
    """The pages' ``user=mysite``: an account that exists in this sandbox only."""
    for name, line in (
        ("passwd", f"{USER}:x:{USER_ID}:{USER_ID}::/home/mysite:/usr/sbin/nologin\n"),
        ("group", f"{USER}:x:{USER_ID}:\n"),
    ):
        copy = scratch / name
        copy.write_text(Path(f"/etc/{name}").read_text() + line)
        _mount("--bind", str(copy), f"/etc/{name}")


def _sandbox(site: Path) -> None:
    for path in FRESH:
        Path(path).mkdir(parents=True, exist_ok=True)
        _mount("-t", "tmpfs", "tmpfs", path)
    scratch = Path("/run/doc-sandbox")  # gone with the namespace
    scratch.mkdir()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    _add_user(scratch)
    # The dropped user=mysite reads the interpreter, the venv and the checkout.
    reachable.open_the_way(reachable.needed(), scratch / "stage")
    for project, owned in ((PROJECT, PROJECT), (HOME_PROJECT, HOME_PROJECT.parent)):
        shutil.copytree(site, project, symlinks=True)
        project.chmod(0o755)
        subprocess.run(["chown", "-R", f"{USER}:{USER}", str(owned)], check=True)


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST"))}
    env.pop("PYTHONPATH", None)
    # An activated virtualenv: `python` and the manage.py shebang find its interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _wait(check: Callable[[], bool], what: str, proc: subprocess.Popen[Any] | None) -> None:
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise Failed(f"the command exited with status {proc.returncode} before {what}")
        time.sleep(0.05)
    raise Failed(f"no {what} within {SECONDS} s")


def _accepting(address: Address) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET6
    if not isinstance(address, str) and ":" not in address[0]:
        family = socket.AF_INET
    with socket.socket(family) as probe:
        try:
            probe.connect(address)
        except OSError:
            return False
    return True


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def _other_machines(
    bind: options.TCP, allow: tuple[AllowEntry, ...] | None
) -> tuple[Address, str | None]:
    """A page's command for a web server on another machine listens on the application
    server's address and lets in the web server's (allow=): this sandbox's loopback gets
    both addresses, and the request comes from the first one allow= lets in. Returns
    where to connect, and from which address."""
    address: Address = (bind.host, bind.port)
    try:
        listening = ipaddress.ip_address(bind.host)
    except ValueError:
        listening = None
    addresses = []
    if listening is not None and not (listening.is_loopback or listening.is_unspecified):
        addresses.append(listening)
    source = None
    if allow:
        network = allow[0].network
        source = network.network_address if network.num_addresses == 1 else next(network.hosts())
        addresses.append(source)
        if listening is not None and listening.is_unspecified:
            address = (str(source), bind.port)
    for added in addresses:
        subprocess.run(
            ["ip", "addr", "add", f"{added}/{added.max_prefixlen}", "dev", "lo"], check=True
        )
    return address, None if source is None else str(source)


def _ask(
    client: Callable[..., Response],
    address: Address,
    path: str,
    source: str | None = None,
    **extra: Any,
) -> None:
    """GET `path`, from `source` if given; `extra` is what the web server adds, such as
    AJP's secret."""
    if source is None:
        response = client(address, "GET", path, timeout=30, **extra)
    else:
        with socket.create_connection(address, 30, source_address=(source, 0)) as sock:
            response = client(address, "GET", path, timeout=30, sock=sock, **extra)
    if response.status != 200 or b"The install worked successfully" not in response.body:
        raise Failed(f"GET {path} answered {response.status}: {response.body[:300]!r}")
    print(f"GET {path} -> {response.status}")


def _runfcgi_setting() -> dict[str, object]:
    """The page's RUNFCGI, added to the project's settings; {} when it shows none."""
    path = os.environ.get(SETTINGS_VARIABLE)
    if path is None:
        return {}
    text = Path(path).read_text()
    for project in (PROJECT, HOME_PROJECT):
        settings = project / "mysite" / "settings.py"
        settings.write_text(f"{settings.read_text()}\n{text}")
    namespace: dict[str, Any] = {}
    exec(text, namespace)
    setting: dict[str, object] = namespace["RUNFCGI"]
    return setting


ACTIONS = ("config", "check", "stop", "reload", "reopen")
ACTION_FLAGS = ("--json", "--now")
# What each action prints when it worked.
ACTION_OUTPUT = {
    "config": "maxchildren",
    "check": "OK: runfcgi would serve over",
    "stop": "Stopped: PID",
    "reload": "Reloaded: serving the new code",
    "reopen": "Reopened the log files",
}
# Without pidfile=, found by the address: reload and reopen only send their signal.
ADDRESS_OUTPUT = {**ACTION_OUTPUT, "reload": "Sent SIGHUP to PID", "reopen": "Sent SIGUSR1 to PID"}


def _config(words: list[str], setting: dict[str, object]) -> options.Config:
    given, _ = options.parse_words(options.dashed_to_words(words, set(ACTION_FLAGS)))
    raw, _ = options.layer(setting, given)
    return options.resolve(raw, cwd=PROJECT)


def run_action(
    text: str, words: list[str], setting: dict[str, object], env: dict[str, str]
) -> None:
    """An action as the page shows it; stop, reload and reopen to a server started
    first with the command's own options (and a socket if they name none), found by
    its pidfile or, without one, by its address."""
    action = next(word for word in words if word in ACTIONS)
    rest = [word for word in words if word not in (*ACTIONS, *ACTION_FLAGS)]
    config = _config(rest, setting)
    server: subprocess.Popen[bytes] | None = None
    pid = None
    expected = ACTION_OUTPUT if config.pidfile is not None else ADDRESS_OUTPUT
    if action in ("stop", "reload", "reopen"):
        if config.pidfile is None and isinstance(config.bind, options.Inherited):
            raise Failed(f"{action} needs the pidfile or the address of a server")
        # The server the page's command finds; its /run directory is gone after a boot.
        start = ["./manage.py", "runfcgi", *rest, "daemonize=true"]
        if not config.mkdir:
            start.append("mkdir=true")
        if isinstance(config.bind, options.Inherited):
            start += ["socket=/run/doc-sandbox/control.sock"]
        said = PROJECT / "doc-server.out"
        with said.open("wb") as out:
            server = subprocess.Popen(start, cwd=PROJECT, env=env, stdout=out)
        if server.wait(SECONDS) != 0:
            raise Failed(f"the server for {action} did not start: {start}")
        if config.pidfile is not None:
            pid = int(config.pidfile.read_text())
        else:
            found = re.search(r"Serving over .*, PID (\d+)", said.read_text())
            if found is None:
                raise Failed("the daemon did not say its PID")
            pid = int(found.group(1))
    result = subprocess.run(
        ["bash", "-c", text], cwd=PROJECT, env=env, capture_output=True, text=True, check=False
    )
    sys.stdout.write(result.stdout + result.stderr)
    try:
        if result.returncode != 0 or expected[action] not in result.stdout:
            raise Failed(f"{action} exited with status {result.returncode}")
    finally:
        if pid is not None and not _gone(pid):
            os.kill(pid, signal.SIGTERM)
            _wait(lambda: _gone(pid), "stop after TERM", None)
    left = [p for p in (config.pidfile, getattr(config.bind, "path", None)) if p]
    if any(Path(p).exists() for p in left):
        raise Failed(f"left behind: {[str(p) for p in left if Path(p).exists()]}")


def run_command(text: str, env: dict[str, str]) -> None:
    words = shlex.split(text)[2:]
    setting = _runfcgi_setting()
    if any(word in ACTIONS for word in words):
        run_action(text, words, setting, env)
        return
    log = PROJECT / "doc-command.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", text], cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        if words == ["help"]:
            if proc.wait(SECONDS) != 0 or "Options:" not in log.read_text():
                raise Failed(f"help failed with status {proc.returncode}")
            return
        given, _ = options.parse_words(options.dashed_to_words(words, set()))
        raw, _ = options.layer(setting, given)
        config = options.resolve(raw, cwd=PROJECT)
        source = None
        if isinstance(config.bind, options.TCP):
            address, source = _other_machines(config.bind, config.allow)
        elif isinstance(config.bind, options.Unix):
            address = str(config.bind.path)
        else:
            raise Failed("a command without host/port or socket needs its web server")
        if config.daemonize:
            if proc.wait(SECONDS) != 0:
                raise Failed(f"the command exited with status {proc.returncode}")
            found = re.search(r"Serving over .*, PID (\d+)", log.read_text())
            if found is None:
                raise Failed("the daemon did not say its PID")
            pid = int(found.group(1))
        else:
            _wait(lambda: _accepting(address), "listening socket", proc)
            pid = proc.pid
        prefix = (config.scriptname or "").rstrip("/")
        extra = {} if config.secret is None else {"secret": config.secret}
        _ask(CLIENTS[config.protocol], address, prefix + "/", source, **extra)
        os.kill(pid, signal.SIGTERM)
        _wait(lambda: _gone(pid), "stop after TERM", None)
        if proc.poll() is None and proc.wait(SECONDS) != 0:
            raise Failed(f"the server exited with status {proc.returncode} on TERM")
        left = [p for p in (config.pidfile, getattr(config.bind, "path", None)) if p]
        if any(Path(p).exists() for p in left):
            raise Failed(f"left behind: {[str(p) for p in left if Path(p).exists()]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sys.stdout.write(log.read_text())


def run_call(text: str, env: dict[str, str]) -> None:
    """The call in the documented mysite.fcgi, started as mod_fcgid starts it."""
    script = (ROOT / "docs" / "configs" / "mysite.fcgi").read_text()
    script, count = re.subn(r"^runfastcgi\(.*\)$", lambda _: text, script, flags=re.MULTILINE)
    if count != 1:
        raise Failed("docs/configs/mysite.fcgi no longer has one runfastcgi() line")
    path = HOME_PROJECT.parent / "mysite.fcgi"
    path.write_text(script)
    address = str(HOME_PROJECT.parent / "fcgi.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(address)
        listener.listen()
        proc = subprocess.Popen(
            [sys.executable, str(path)], stdin=listener, cwd=path.parent, env=env
        )
    try:
        _ask(fcgi_request, address, "/")
        proc.send_signal(signal.SIGTERM)
        if proc.wait(SECONDS) != 0:
            raise Failed(f"the script exited with status {proc.returncode} on TERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main(site: str, text: str, *setup: str) -> int:
    _sandbox(Path(site))
    env = _environment()
    for command in setup:
        subprocess.run(["bash", "-c", command], check=True, env=env)
    try:
        if text.startswith("runfastcgi("):
            run_call(text, env)
        else:
            run_command(text, env)
    except (Failed, OSError, options.OptionError) as err:
        print(f"FAILED: {text}: {err}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
