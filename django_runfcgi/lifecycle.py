"""One run of the server, in the order that keeps errors on the user's terminal.

load the application -> check the pidfile -> bind -> detach -> write the pidfile ->
serve -> clean up. Everything that can fail because of the user's input fails before
the process detaches; what fails after is passed back through the readiness pipe.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.servers.basehttp import get_internal_wsgi_application
from django.db import connections

from django_runfcgi import daemon, pidfile, sockets
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


def serve(config: Config, announce: Callable[[str], None]) -> bool:
    """Run until stopped; True if stopped by SIGHUP."""
    application = load_application()
    try:
        if config.pidfile is not None:
            pidfile.check(config.pidfile)
        logs = (
            daemon.open_logs(config.outlog, config.errlog)
            if config.daemonize or config.outlog or config.errlog
            else None
        )
        listener = sockets.listen(config.bind, config.umask)
    except (pidfile.PidfileError, daemon.LogError, sockets.BindError) as err:
        raise StartupError(str(err)) from err

    readiness = daemon.Readiness()
    owner = os.getpid()
    try:
        if config.daemonize:
            assert config.workdir is not None, "resolve() sets workdir when daemonizing"
            assert logs is not None
            readiness = daemon.detach(
                workdir=config.workdir,
                umask=config.umask,
                logs=logs,
                keep={listener.sock.fileno()},
            )
            owner = os.getpid()
        else:
            if logs is not None:
                daemon.use_logs(logs)
            if config.workdir is not None:
                os.chdir(config.workdir)
        signal.pthread_sigmask(signal.SIG_BLOCK, SERVER_SIGNALS)
        if config.pidfile is not None:
            pidfile.write(config.pidfile, owner)
        server = make_server(config, application)
        if not isinstance(config.bind, Inherited):
            announce(
                f"Serving over {PROTOCOL_NAMES[config.protocol]} ({config.method}) on "
                f"{config.bind}, PID {owner}."
            )
        readiness.ready()
        return server.run(listener.sock)
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
