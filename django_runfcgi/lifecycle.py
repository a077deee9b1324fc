"""One run of the server, in the order that keeps errors on the user's terminal.

load the application -> check the pidfile -> bind -> detach -> write the pidfile ->
serve -> clean up. Everything that can fail because of the user's input fails before
the process detaches; what fails after is passed back through the readiness pipe.
A reload (HUP) re-executes the command, which then takes over the socket, the pidfile
and the running workers instead of binding and detaching again.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.servers.basehttp import get_internal_wsgi_application
from django.db import connections

from django_runfcgi import daemon, pidfile, reload, sockets
from django_runfcgi.options import Config, Inherited
from django_runfcgi.server import PROTOCOL_NAMES, make_server

# Signals the servers handle. From the moment the pidfile or the announcement can be
# seen until run() has its handlers in place, they wait instead of killing the process.
SERVER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


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
    return application


def _prepare(config: Config) -> tuple[sockets.Listener, tuple[int, int] | None]:
    """Everything that can fail on the user's input, done before detaching."""
    try:
        if config.pidfile is not None:
            pidfile.check(config.pidfile)
        logs = (
            daemon.open_logs(config.outlog, config.errlog)
            if config.daemonize or config.outlog or config.errlog
            else None
        )
        return sockets.listen(config.bind, config.umask), logs
    except (pidfile.PidfileError, daemon.LogError, sockets.BindError) as err:
        raise StartupError(str(err)) from err


def serve(config: Config, announce: Callable[[str], None]) -> None:
    """Run until stopped by TERM or INT; HUP reloads the code in place (see reload)."""
    if reload.checking():
        load_application()
        return
    start_dir = os.getcwd()
    state = reload.take_state()
    if state is None:
        application = load_application()
        listener, logs = _prepare(config)
    else:
        listener = sockets.take_over(state.fd, config.bind, state.created)

    readiness = daemon.Readiness()
    owner = os.getpid()
    try:
        if state is not None:
            # Reloaded: already detached, logging, and named in the pidfile.
            application = load_application()
        elif config.daemonize:
            assert config.workdir is not None, "resolve() sets workdir when daemonizing"
            assert logs is not None
            readiness = daemon.detach(
                workdir=config.workdir,
                umask=config.umask,
                logs=logs,
                keep={listener.sock.fileno()},
            )
            owner = os.getpid()
        elif logs is not None:
            daemon.use_logs(logs)
        if config.workdir is not None:
            os.chdir(config.workdir)
        signal.pthread_sigmask(signal.SIG_BLOCK, SERVER_SIGNALS)
        if config.pidfile is not None and state is None:
            pidfile.write(config.pidfile, owner)
        server = make_server(config, application)
        server.reload_check = functools.partial(reload.check_new_code, start_dir)
        server.on_usr1 = functools.partial(daemon.reopen_logs, config.outlog, config.errlog)
        server.on_stop = listener.remove_socket_file
        if state is not None:
            server.adopt_workers(state.retiring)
        if not isinstance(config.bind, Inherited):
            what = "Reloaded; serving" if state is not None else "Serving"
            announce(
                f"{what} over {PROTOCOL_NAMES[config.protocol]} ({config.method}) on "
                f"{config.bind}, PID {owner}."
            )
        readiness.ready()
        if server.run(listener.sock):
            handover = reload.State(
                fd=listener.sock.fileno(),
                created=listener.created,
                retiring=tuple(server.retiring),
                start_dir=start_dir,
            )
            reload.reexec(handover, SERVER_SIGNALS)
    except BaseException as err:
        readiness.failed(str(err) or type(err).__name__)
        raise
    finally:
        # A forked worker that got here must not remove what belongs to the master.
        if os.getpid() == owner:
            listener.close()
            listener.remove_socket_file()
            if config.pidfile is not None:
                with suppress(OSError):
                    pidfile.remove_if_ours(config.pidfile, owner)
            sys.stdout.flush()
