"""The wire protocols: FastCGI, SCGI and AJP 1.3, each a gateway object that a process
model serves.

A process model needs three things of a protocol, and nothing else: ``allows(addr)``
(may this client connect), ``connection(sock, addr)`` (the object that serves an
accepted socket: ``run()`` and ``stop_when_idle()``), and ``watch_requests(watch)`` (a
prefork worker timing its requests). The gateway runs the WSGI application
(:mod:`.wsgi`); where flup's code still does that work it is called openly, and each
protocol's module says which. docs/flup.rst lists what is fixed and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from django_runfcgi.protocols.ajp import AJP
from django_runfcgi.protocols.base import FIRST_REQUEST_SECONDS, ProtocolError
from django_runfcgi.protocols.clients import AllowEntry, ClientAddress, allowed
from django_runfcgi.protocols.fastcgi import FastCGI
from django_runfcgi.protocols.scgi import SCGI
from django_runfcgi.protocols.wsgi import (
    Bounds,
    Connection,
    Gateway,
    RequestWatch,
    WSGIApplication,
)
from django_runfcgi.sockets import Stream

__all__ = [
    "AJP",
    "FIRST_REQUEST_SECONDS",
    "SCGI",
    "Bounds",
    "Connection",
    "FastCGI",
    "Gateway",
    "ProtocolError",
    "RequestWatch",
    "ServedProtocol",
    "build",
]


class ServedProtocol(Protocol):
    """What a process model is handed: who may connect, and a connection per client."""

    @property
    def name(self) -> str:
        """The protocol's name, as log lines show it."""
        ...

    allows: Callable[[ClientAddress], bool]
    """Whether a client may connect."""

    def connection(self, sock: Stream, addr: ClientAddress) -> Connection: ...

    def watch_requests(self, watch: RequestWatch) -> None: ...


GATEWAYS: dict[str, type[Gateway]] = {"fcgi": FastCGI, "scgi": SCGI, "ajp": AJP}
"""The protocol= option's values."""

NAMES = {"fcgi": "FastCGI", "scgi": "SCGI", "ajp": "AJP 1.3"}
"""How messages to the user name each protocol."""


def build(
    protocol: str,
    application: WSGIApplication,
    *,
    multiprocess: bool,
    debug: bool = False,
    scriptname: str | None = None,
    secret: str | None = None,
    allow: tuple[AllowEntry, ...] | None = None,
    bounds: Bounds | None = None,
) -> Gateway:
    """The gateway for protocol= `protocol`; a prefork worker serves one request at a time,
    threads serve many at once. `secret` is AJP's (options.resolve() allows no other);
    `allow` (allow=) replaces the protocol's own client filter."""
    gateway = GATEWAYS[protocol](
        application,
        multithreaded=not multiprocess,
        multiprocess=multiprocess,
        debug=debug,
        scriptname=scriptname,
        bounds=bounds,
    )
    if secret is not None:
        if not isinstance(gateway, AJP):
            raise ValueError(f"secret= applies to AJP, not to protocol={protocol!r}")
        gateway.require_secret(secret)
    if allow is not None:
        gateway.allows = allowed(gateway.name, allow)
    return gateway
