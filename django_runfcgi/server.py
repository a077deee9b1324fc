"""Pair a protocol (fcgi, scgi, ajp) with a process model (prefork, threaded).

flup ships one class per pair, each binding its own socket and each with its own
bugs; ours combine the fixed protocol halves from :mod:`django_runfcgi.compat` with
the fixed process halves, and serve a socket that is already bound.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any, Protocol, cast

from django_runfcgi import compat, prefork, threaded
from django_runfcgi.options import Config

PROTOCOL_CLASSES: dict[str, type[Any]] = {
    "fcgi": compat.FCGIServer,
    "scgi": compat.SCGIServer,
    "ajp": compat.AJPServer,
}
PROCESS_CLASSES: dict[str, type[Any]] = {
    "prefork": prefork.PreforkServer,
    "threaded": threaded.ThreadedServer,
}
PROTOCOL_NAMES = {"fcgi": "FastCGI", "scgi": "SCGI", "ajp": "AJP 1.3"}


class Server(Protocol):
    reload_check: Callable[[], str | None] | None
    retiring: Sequence[int]
    on_usr1: Callable[[], None] | None
    on_stop: Callable[[bool], None] | None

    def run(self, sock: socket.socket) -> bool: ...

    def adopt_workers(self, pids: Iterable[int]) -> None: ...


@cache
def server_class(protocol: str, method: str, *, timed: bool = False) -> type[Any]:
    """The combined class; the protocol half comes first so it decides who may connect.

    `timed` puts the prefork master's request timing in front of the protocol half.
    """
    name = f"{protocol.capitalize()}{method.capitalize()}Server"
    bases = (PROTOCOL_CLASSES[protocol], PROCESS_CLASSES[method])
    if timed:
        return type(f"Timed{name}", (prefork.TimedRequests, *bases), {})
    return type(name, bases, {})


def make_server(config: Config, application: Any) -> Server:
    """Build the server; threads start only in run(), so this is safe before a fork."""
    prefork_method = config.method == "prefork"
    timed = prefork_method and config.requesttimeout > 0
    cls = server_class(config.protocol, config.method, timed=timed)
    server = object.__new__(cls)
    PROTOCOL_CLASSES[config.protocol].__init__(
        server,
        application,
        multithreaded=not prefork_method,
        multiprocess=prefork_method,
        debug=config.debug,
        scriptname=config.scriptname,
    )
    job = {"jobClass": server.connection_class, "jobArgs": (server, None)}
    if prefork_method:
        prefork.PreforkServer.__init__(
            server,
            minSpare=config.minspare,
            maxSpare=config.maxspare,
            maxChildren=config.maxchildren,
            maxRequests=config.maxrequests,
            shutdownTimeout=config.shutdowntimeout,
            requestTimeout=config.requesttimeout,
            **job,
        )
    else:
        threaded.ThreadedServer.__init__(
            server,
            minSpare=config.minspare,
            maxSpare=config.maxspare,
            maxThreads=config.maxchildren,
            shutdownTimeout=config.shutdowntimeout,
            **job,
        )
    return cast(Server, server)
