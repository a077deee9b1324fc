"""One run of the server, in the order that keeps errors on the user's terminal.

load the application -> check the pidfile -> bind -> detach -> write the pidfile ->
serve -> clean up. With user= (started as root), the WSGI application is loaded only
after the pidfile is written and root is dropped. Everything that can fail because of
the user's input fails before the process detaches; what fails after is passed back
through the readiness pipe.
A reload (HUP) re-executes the command, which then takes over the socket, the pidfile
and the running workers instead of binding and detaching again.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.core.servers.basehttp import get_internal_wsgi_application
from django.db import connections

from django_runfcgi import (
    accesslog,
    control,
    daemon,
    directories,
    handover,
    log,
    memory,
    pidfile,
    privileges,
    reload,
    sockets,
    systemd,
)
from django_runfcgi.accessformat import compile_format
from django_runfcgi.addresses import TCP, Inherited, Unix
from django_runfcgi.options import DEFAULT_LOG, Config
from django_runfcgi.prefix import forget_prefixed_urls
from django_runfcgi.protocols import NAMES as PROTOCOL_NAMES
from django_runfcgi.protocols.ajp import open_without_secret
from django_runfcgi.protocols.base import peer
from django_runfcgi.protocols.clients import ip_address_of
from django_runfcgi.server import make_protocol, make_server, make_status
from django_runfcgi.workers import ProcessModel
from django_runfcgi.workers.hooks import Hooks
from django_runfcgi.workers.signals import SERVER_SIGNALS

if TYPE_CHECKING:
    from django_runfcgi.slowlog import SlowLog
    from django_runfcgi.status.page import Status

# From the moment the pidfile or the announcement can be seen until run() has its
# handlers in place, the signals the servers handle (SERVER_SIGNALS) wait instead of
# killing the process.

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """runfcgi cannot start; the message is one sentence for the terminal."""


def load_application() -> Any:
    try:
        application = get_internal_wsgi_application()
    except ImproperlyConfigured as err:
        cause = f" ({err.__cause__})" if err.__cause__ else ""
        raise StartupError(f"{err}{cause}") from err
    # Connections opened while loading must not be shared by forked workers.
    connections.close_all()
    # The checks ran before any request set the mount prefix.
    forget_prefixed_urls()
    return application


@dataclass
class Handed:
    """A socket this process was given instead of binding one: by systemd, or on fd 0."""

    sock: socket.socket
    fd: int
    by_systemd: bool


def _handed(config: Config) -> Handed | None:
    """The socket systemd passed (socket activation), else the one on fd 0 if no bind
    option is given, else None: runfcgi binds."""
    try:
        fd = systemd.listen_fd()
        if fd is not None:
            try:
                return Handed(sockets.handed_over(fd, "systemd"), fd, by_systemd=True)
            finally:
                os.close(fd)
        if isinstance(config.bind, Inherited):
            sock = sockets.handed_over(config.bind.fd, "the web server")
            return Handed(sock, config.bind.fd, by_systemd=False)
    except (systemd.ActivationError, sockets.BindError) as err:
        raise StartupError(str(err)) from err
    return None


def _listener(config: Config, handed: Handed | None) -> sockets.Listener:
    if handed is None:
        assert not isinstance(config.bind, Inherited), "_handed() takes fd 0"
        return sockets.listen(
            config.bind, config.umask, config.socketmode, config.socketowner, config.socketgroup
        )
    if handed.by_systemd:
        return sockets.activated(handed.sock, handed.fd, config.bind)
    return sockets.Listener(handed.sock, config.bind)


@dataclass(frozen=True)
class LogPaths:
    """Where stdout and stderr go; None leaves a stream where it is (the terminal)."""

    outlog: Path | None
    errlog: Path | None


def log_paths(config: Config, daemonize: bool, start_dir: Path) -> LogPaths:
    """A daemon with no errlog= writes to runfcgi.log in the directory it was started
    in, and its stdout goes with stderr unless outlog= says otherwise: a detached server
    must not lose a failed reload, a killed worker or a crash to /dev/null."""
    if not daemonize:
        return LogPaths(config.outlog, config.errlog)
    errlog = config.errlog if config.errlog is not None else start_dir / DEFAULT_LOG
    return LogPaths(config.outlog if config.outlog is not None else errlog, errlog)


def _open_logs(config: Config, paths: LogPaths, dry: bool = False) -> daemon.Logs:
    """The log files, opened (or, ``dry``, checked) before detaching."""
    try:
        if dry:
            daemon.check_logs(paths.outlog, paths.errlog)
            return {}
        return daemon.open_logs(paths.outlog, paths.errlog)
    except daemon.LogError as err:
        if config.errlog is not None or config.outlog is not None:
            raise
        # The default log, in a directory this user cannot write: old init scripts
        # started from / must keep working, so say it and detach without a log.
        message = f"{err} The server's messages are lost; pass errlog=FILE to keep them."
        sys.stderr.write(log.stamp(message, "WARNING") + "\n")
        return {}


def _open_access_log(config: Config) -> accesslog.AccessLog | None:
    """The access log accesslog= names, opened in this process; None without it."""
    if config.accesslog is None:
        return None
    return accesslog.AccessLog(config.accesslog, compile_format(config.accessformat))


def open_slowlog(config: Config) -> SlowLog | None:
    """The slow log slowlog= asks for, its file open; None, and nothing imported, without.
    Raises daemon.LogError when slowlogfile= cannot be opened."""
    if config.slowlog <= 0:
        return None
    from django_runfcgi import slowlog  # noqa: PLC0415 - slowlog= only

    return slowlog.open_slowlog(config.slowlog, config.slowlogfile)


def _prepare(
    config: Config,
    handed: Handed | None,
    paths: LogPaths,
) -> tuple[sockets.Listener, daemon.Logs, accesslog.AccessLog | None, SlowLog | None]:
    """Everything that can fail on the user's input, done before detaching.

    A server still stopping on the same address (TERM, then this start: the restart
    script) hands its socket over, with the connections waiting on it.
    """
    trusted = config.user.uid if config.user is not None else None
    taken = handover.take(config.bind, trusted) if handed is None else None
    logs: daemon.Logs = {}
    access = None
    slow: SlowLog | None = None
    try:
        _ensure_directories(config, binds=handed is None and taken is None)
        if config.pidfile is not None:
            pidfile.check(config.pidfile, successor_of=taken.pid if taken else None)
        logs = _open_logs(config, paths)
        access = _open_access_log(config)
        slow = open_slowlog(config)
        listener = sockets.from_stopping_server(taken.sock, config.bind) if taken else None
        if listener is None:
            listener = _listener(config, handed)
    except (
        pidfile.PidfileError,
        daemon.LogError,
        sockets.BindError,
        directories.DirectoryError,
    ) as err:
        daemon.close_logs(logs)
        if access is not None:
            access.close()
        if slow is not None:
            slow.file.close()
        if taken is not None:
            taken.decline()
        raise StartupError(str(err)) from err
    if taken is not None:
        if listener.sock is taken.sock:
            taken.confirm()
        else:
            taken.decline()
    return listener, logs, access, slow


def _directories(config: Config, binds: bool) -> list[tuple[str, Path]]:
    """The pidfile, and the socket when this server binds it: whose directories must
    exist (mkdir=true creates them)."""
    found = [("pidfile", config.pidfile)] if config.pidfile is not None else []
    if binds and isinstance(config.bind, Unix):
        found.append(("socket", config.bind.path))
    return found


def _ensure_directories(config: Config, binds: bool) -> None:
    for option, path in _directories(config, binds):
        directories.ensure(option, path, create=config.mkdir, owner=config.user)


def _warn_if_root(config: Config) -> None:
    if config.user is None and privileges.running_as_root():
        logger.warning(privileges.ROOT_WARNING)


def warn_if_open(config: Config, sock: socket.socket) -> None:
    """A server that lets in more than this machine without a guard says so; before
    detaching, so that it reaches the terminal."""
    if config.protocol == "ajp" and config.secret is None:
        warning = open_without_secret(sock)
        if warning is not None:
            logger.warning(warning)
    if config.protocol != "fcgi" or config.allow is not None or not isinstance(config.bind, TCP):
        return
    # FastCGI lets every client in by default, as Django 1.8 did.
    if "FCGI_WEB_SERVER_ADDRS" in os.environ:
        return
    ip = ip_address_of(config.bind.host)
    if config.bind.host == "localhost" or (ip is not None and ip.is_loopback):
        return
    logger.warning(
        "FastCGI on %s lets in every client that can reach it; "
        "allow= names the web servers that may connect.",
        config.bind,
    )


def _become_user(config: Config) -> None:
    """Drop root for the account user= names; before it, only root's work is done."""
    if config.user is None:
        return
    try:
        privileges.drop(config.user)
    except OSError as err:
        raise StartupError(
            f"Cannot switch to user={config.user.describe()!r}: {err.strerror}."
        ) from err


RESTART_SIGNS_SECONDS = 1.0
"""How long after TERM a stopping server looks for signs that a restart is under way."""


def _restart_under_way(path: Path, owner: int) -> bool:
    """The restart script removes the pidfile right after its kill; the new server then
    writes its own pid there. A plain stop leaves this server's pid in place."""
    try:
        return pidfile.read_pid(path) != owner
    except pidfile.PidfileError:
        return True


def _linger(offer: handover.Offer, restarting: Callable[[], bool] | None) -> bool:
    """After a graceful stop, keep offering the socket while a restart is under way.

    Without signs of a restart the offer ends (at most RESTART_SIGNS_SECONDS after TERM;
    at once without a pidfile, which holds the signs), and so does the wait when INT or
    TERM arrives. Returns whether the socket was taken.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, SERVER_SIGNALS)
    while not offer.done():
        if restarting is None:
            offer.close()
            break
        interrupted = signal.sigtimedwait([signal.SIGINT, signal.SIGTERM], 0.1) is not None
        if interrupted or (
            time.monotonic() > offer.started + RESTART_SIGNS_SECONDS and not restarting()
        ):
            offer.close()
    return offer.wait()


def _serve_connection(config: Config, handed: Handed, notifier: systemd.Notifier) -> None:
    """inetd style: serve the one connection already accepted, then return (exit 0).

    Each connection is a process of its own, so there is nothing to detach, no pidfile
    and no workers; TERM ends the process at once.
    """
    sock = handed.sock
    with sock:
        sockets.free_standard_streams(sock)
        # Only now: standard error may have been the connection itself.
        _warn_if_root(config)
        if config.pidfile is not None:
            raise StartupError(
                f"pidfile={str(config.pidfile)!r} does not apply to a connection passed by "
                "a super-server (inetd, systemd Accept=yes): each connection is its own "
                "process; leave pidfile= out."
            )
        if handed.by_systemd and not isinstance(config.bind, Inherited):
            try:
                sockets.activated(sock, handed.fd, config.bind)
            except sockets.BindError as err:
                raise StartupError(str(err)) from err
        try:
            access = _open_access_log(config)
        except daemon.LogError as err:
            raise StartupError(str(err)) from err
        _become_user(config)
        application = load_application()
        # ping= answers; status= says it has no figures: a process that serves one
        # connection has no pool to show.
        status = make_status(config)
        if status is not None:
            application = status.around(application)
        protocol = make_protocol(config, application)
        if access is not None:
            protocol.watch_requests(access)
        try:
            slow = open_slowlog(config)
        except daemon.LogError as err:
            raise StartupError(str(err)) from err
        if slow is not None:
            protocol.watch_requests(slow.watch(None))
        addr = sock.getpeername()
        if not protocol.allows(addr):
            raise StartupError(f"Refused the connection from {peer(addr)}.")
        connection = protocol.connection(sock, addr)
        notifier.ready(
            f"Serving one {PROTOCOL_NAMES[config.protocol]} connection, PID {os.getpid()}."
        )
        connection.run()


def _notifying_reload_check(
    check: Callable[[], str | None],
    notifier: systemd.Notifier,
    status: str,
    state: control.StateFile | None,
) -> Callable[[], str | None]:
    """HUP tells systemd the reload has begun; a cancelled one, that the old code serves.
    The state file tells ``runfcgi reload`` why it was cancelled."""

    def run() -> str | None:
        notifier.reloading()
        try:
            error = check()
        except BaseException as err:
            notifier.ready(f"Reload cancelled; {status}")
            if state is not None:
                state.record(control.CANCELLED, f"the check failed: {err!r}")
            raise
        if error is not None:
            notifier.ready(f"Reload cancelled, still serving the old code: {error}")
            if state is not None:
                state.record(control.CANCELLED, error)
        return error

    return run


@dataclass
class Start:
    """What serving begins with, fresh or after a reload: the listening socket, where the
    logs go, whether to detach, and the application when it was loaded before detaching."""

    listener: sockets.Listener
    paths: LogPaths
    logs: daemon.Logs
    daemonize: bool
    by_systemd: bool
    start_dir: str
    application: Any | None
    reloaded: reload.State | None = None
    state: control.StateFile | None = None
    """Beside the pidfile: what the server did last, for the control commands."""
    access: accesslog.AccessLog | None = None
    """accesslog=, opened before detaching; USR1 reopens it."""
    slowlog: SlowLog | None = None


def _fresh_start(config: Config, notifier: systemd.Notifier) -> Start | None:
    """Everything before detaching, for a server started by its command. None when the
    process was given one accepted connection (inetd) and has served it."""
    start_dir = os.getcwd()
    handed = _handed(config)
    if handed is not None and not sockets.is_listening(handed.sock):
        _serve_connection(config, handed, notifier)
        return None
    _warn_if_root(config)
    # systemd supervises the process it started: detaching would lose it.
    by_systemd = handed is not None and handed.by_systemd
    daemonize = config.daemonize and not by_systemd
    paths = log_paths(config, daemonize, Path(start_dir))
    try:
        # With user=, the project is loaded once root is dropped, in _settle().
        application = load_application() if config.user is None else None
        listener, logs, access, slow = _prepare(config, handed, paths)
    except BaseException:
        if handed is not None:
            handed.sock.close()
        raise
    warn_if_open(config, listener.sock)
    return Start(
        listener,
        paths,
        logs,
        daemonize,
        by_systemd,
        start_dir,
        application,
        access=access,
        slowlog=slow,
    )


def _reloaded_start(config: Config, state: reload.State) -> Start:
    """The socket and workers of the server this process replaced, which had detached and
    written the pidfile already."""
    by_systemd = systemd.was_activated()
    listener = sockets.take_over(state.fd, config.bind, state.created)
    daemonize = config.daemonize and not by_systemd
    paths = log_paths(config, daemonize, Path(state.start_dir))
    try:
        access = _open_access_log(config)
        slow = open_slowlog(config)
    except daemon.LogError as err:
        listener.close()
        raise StartupError(str(err)) from err
    return Start(
        listener,
        paths,
        {},
        daemonize,
        by_systemd,
        state.start_dir,
        None,
        reloaded=state,
        access=access,
        slowlog=slow,
    )


def _detach(config: Config, start: Start) -> daemon.Readiness:
    """Detach, or keep the terminal and take the logs; the readiness pipe tells the
    terminal how the start ended."""
    if start.reloaded is None and start.daemonize:
        assert config.workdir is not None, "resolve() sets workdir when daemonizing"
        return daemon.detach(
            workdir=config.workdir,
            umask=config.umask,
            logs=start.logs,
            keep={start.listener.sock.fileno()},
        )
    if start.reloaded is None:
        daemon.use_logs(start.logs)
    return daemon.Readiness()


def _settle(config: Config, start: Start, owner: int) -> Any:
    """In the process that serves: the working directory, the pidfile, the account, and
    the application, loaded last when user= drops root. A reloaded server is already
    detached, named in the pidfile and running as user=: it loads the new code first."""
    application = load_application() if start.reloaded is not None else start.application
    if config.workdir is not None:
        os.chdir(config.workdir)
    signal.pthread_sigmask(signal.SIG_BLOCK, SERVER_SIGNALS)
    if config.pidfile is not None and start.reloaded is None:
        pidfile.write(config.pidfile, owner)
        if start.state is not None:
            start.state.create(config.user)
    if application is None:
        _become_user(config)
        application = load_application()
    return application


def _status(config: Config, start: Start, owner: int) -> str:
    """The line the terminal, the log and systemd show once the server serves."""
    if start.by_systemd:
        where = f"{sockets.address_of(start.listener.sock)} (passed by systemd)"
    elif isinstance(config.bind, Inherited):
        where = sockets.address_of(start.listener.sock)
    else:
        where = str(config.bind)
    what = "Reloaded; serving" if start.reloaded is not None else "Serving"
    status = (
        f"{what} over {PROTOCOL_NAMES[config.protocol]} ({config.method}) on {where}, PID {owner}"
    )
    errlog = start.paths.errlog
    return status + (f"; logging to {errlog}." if start.daemonize and errlog else ".")


class _Stop:
    """What stopping does to what the server owns: the socket, offered to a restarting
    successor or removed, and the pidfile; cleaned up by the owner only, never by a
    forked worker that unwinds through the same code."""

    def __init__(self, config: Config, start: Start) -> None:
        self._config = config
        self._listener = start.listener
        # A socket passed by systemd or by a web server stays theirs across restarts.
        self._ours = not start.by_systemd and not isinstance(config.bind, Inherited)
        self._offer: handover.Offer | None = None
        self._state = start.state
        self.owner = os.getpid()

    def begins(self, graceful: bool) -> None:
        if graceful and self._ours and self._config.handover > 0:
            self._offer = handover.Offer(
                self._listener.sock, self._config.bind, self._config.handover
            )
        else:
            self._listener.remove_socket_file()

    def clean_up(self) -> None:
        if os.getpid() != self.owner:
            return
        path = self._config.pidfile
        restarting = (
            functools.partial(_restart_under_way, path, self.owner) if path is not None else None
        )
        if self._offer is not None and _linger(self._offer, restarting):
            self._listener.created = None  # The socket file is the new server's now.
        self._listener.close()
        self._listener.remove_socket_file()
        if path is not None:
            with suppress(OSError):
                pidfile.remove_if_ours(path, self.owner)
        if self._state is not None:
            self._state.remove_if_ours()
        logger.info("Stopped, PID %d.", self.owner)
        sys.stdout.flush()


def _hooks(
    config: Config, start: Start, notifier: systemd.Notifier, status: str, stop: _Stop
) -> Hooks:
    """What the process model calls back: the reload check (HUP), reopening the logs
    (USR1), the beginning of a stop, and each turn of its main loop (systemd's status
    and watchdog)."""

    def stop_begins(graceful: bool) -> None:
        notifier.stopping()
        stop.begins(graceful)

    def reopen_logs() -> None:
        daemon.reopen_logs(start.paths.outlog, start.paths.errlog)
        if start.access is not None:
            start.access.reopen()
        if start.slowlog is not None:
            start.slowlog.file.reopen()
        # Workers reopen theirs too; the master alone speaks for the server.
        if start.state is not None and os.getpid() == stop.owner:
            start.state.record(control.REOPENED)

    return Hooks(
        reload_check=_notifying_reload_check(
            functools.partial(reload.check_new_code, start.start_dir, kept_by_reload(config)),
            notifier,
            status,
            start.state,
        ),
        on_usr1=reopen_logs,
        on_stop=stop_begins,
        on_turn=notifier.turn,
    )


def _status_page(config: Config, start: Start) -> Status | None:
    """The status page and ping, with the figures a reload carried over."""
    carried = start.reloaded.figures if start.reloaded is not None else None
    if not carried:
        return make_status(config)
    from django_runfcgi.status.figures import History  # noqa: PLC0415 - status= only

    return make_status(config, History.from_dict(carried))


def _reexec(
    start: Start, server: ProcessModel, notifier: systemd.Notifier, status: Status | None
) -> None:
    """Reload: run the command again in this process, handing it the socket, the
    workers that are still finishing their requests and the status page's figures."""
    successor = reload.State(
        fd=start.listener.sock.fileno(),
        created=start.listener.created,
        retiring=tuple(server.retiring),
        start_dir=start.start_dir,
        figures=status.history_after_reload().to_dict() if status is not None else None,
    )
    notifier.ping()
    notifier.restore_environment()
    if start.by_systemd:
        systemd.keep_activated()
    reload.reexec(successor, SERVER_SIGNALS)


def _load_problem() -> str | None:
    """Why the application does not load, in one line; None when it does."""
    try:
        load_application()
    except StartupError as err:
        return str(err)
    except Exception as err:  # Whatever the project raises.
        return f"Cannot load the application: {type(err).__name__}: {err}"
    return None


def _load_as_user(config: Config) -> str | None:
    """Load the application as the server would: as user= when root would drop to it,
    in a child process that drops, so that this process stays what it is. Returns why
    it does not load."""
    user = config.user
    if user is None or privileges.is_current(user):
        return _load_problem()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read_fd)
        problem: str | None = "Cannot switch to user= to load the application."
        try:
            privileges.drop(user)
            if config.workdir is not None:
                os.chdir(config.workdir)
            problem = _load_problem()
        finally:
            os.write(write_fd, (problem or "").encode(errors="replace"))
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    os.waitpid(pid, 0)
    return message or None


def verify(config: Config, running: int | None = None) -> list[str]:
    """``runfcgi check``: the steps a fresh start takes before it detaches, none of them
    done (nothing is bound, created or removed). Returns one line per problem.

    ``running`` is the server the pidfile names: its pidfile and address are taken
    over when it stops (a restart), so they are not counted against this start.
    """
    log.configure()
    problems: list[str] = []
    _warn_if_root(config)
    loading = _load_as_user(config)
    if loading is not None:
        problems.append(loading)
    binds = not isinstance(config.bind, Inherited)
    checks: list[Callable[[], object]] = [
        functools.partial(directories.check, option, path, create=config.mkdir, owner=config.user)
        for option, path in _directories(config, binds)
    ]
    checks.append(
        functools.partial(
            _open_logs, config, log_paths(config, config.daemonize, Path.cwd()), True
        )
    )
    checks.append(functools.partial(accesslog.check, config.accesslog))
    if config.slowlog > 0 and config.slowlogfile is not None:
        checks.append(functools.partial(daemon.check_log, "slowlogfile", config.slowlogfile))
    if config.pidfile is not None and config.pidfile.parent.is_dir():
        checks.append(functools.partial(pidfile.check, config.pidfile, successor_of=running))
    for check in checks:
        try:
            check()
        except (directories.DirectoryError, daemon.LogError, pidfile.PidfileError) as err:
            problems.append(str(err))
    if isinstance(config.bind, (TCP, Unix)):
        try:
            sockets.check_listen(config.bind, config.socketowner, config.socketgroup)
        except sockets.InUse as err:
            if running is None:
                problems.append(str(err))
        except sockets.BindError as err:
            problems.append(str(err))
    return problems


def kept_by_reload(config: Config) -> dict[str, str]:
    """What a reloaded server keeps from the one it replaces, whatever the options say
    now: the socket, the pidfile, the account and whether it detached."""
    user = config.user
    return {
        "address (host=, port=, socket=)": str(config.bind),
        "pidfile=": str(config.pidfile),
        "user= and group=": "unset" if user is None else f"{user.uid}:{user.gid}",
        "daemonize=": str(config.daemonize).lower(),
    }


def _check_reload(config: Config) -> None:
    """In the throwaway process of a reload check: the new code loads, and the options
    (settings.RUNFCGI may have changed with the code) keep what a reload cannot change."""
    running = reload.kept()
    if running is not None:
        for what, new in kept_by_reload(config).items():
            if running.get(what, new) != new:
                raise StartupError(
                    f"A reload keeps the server's {what}: {running[what]}, and the options "
                    f"now give {new}; restart the server to change it."
                )
    try:
        accesslog.check(config.accesslog)
        if config.slowlog > 0 and config.slowlogfile is not None:
            daemon.check_log("slowlogfile", config.slowlogfile)
    except daemon.LogError as err:
        raise StartupError(str(err)) from err
    load_application()


def serve(config: Config, announce: Callable[[str], None]) -> None:
    """Run until stopped by TERM or INT; HUP reloads the code in place (see reload)."""
    if reload.checking():
        _check_reload(config)
        return
    log.configure()
    # Before the workers fork, which inherit it: a request's memory serves the next one.
    memory.keep_freed_memory()
    notifier = systemd.Notifier.from_environment()
    state = reload.take_state()
    start = _fresh_start(config, notifier) if state is None else _reloaded_start(config, state)
    if start is None:
        return
    if config.pidfile is not None:
        start.state = control.StateFile(config.pidfile, config.shutdowntimeout)
    readiness = daemon.Readiness()
    stop = _Stop(config, start)
    serving = False
    try:
        readiness = _detach(config, start)
        stop.owner = notifier.owner = os.getpid()
        application = _settle(config, start, stop.owner)
        status = _status(config, start, stop.owner)
        page = _status_page(config, start)
        server = make_server(
            config,
            application,
            _hooks(config, start, notifier, status, stop),
            page,
            access=start.access,
            slowlog=start.slowlog,
        )
        if start.reloaded is not None:
            server.adopt_workers(start.reloaded.retiring)
        if start.by_systemd or not isinstance(config.bind, Inherited):
            announce(log.stamp(status))
        readiness.ready(log.stamp(status))
        notifier.ready(status)
        serving = True
        if start.reloaded is not None and start.state is not None:
            start.state.record(control.RELOADED)
        if server.run(start.listener.sock):
            _reexec(start, server, notifier, page)
    except BaseException as err:
        readiness.failed(str(err) or type(err).__name__)
        # Workers are forked once serving; before, this is the reloaded master failing.
        if not serving and start.reloaded is not None and start.state is not None:
            start.state.record(control.FAILED, str(err) or type(err).__name__)
        raise
    finally:
        stop.clean_up()
