"""SCGI: the gateway that runs the application for SCGI requests.

flup's WSGI handler (scgi_base.BaseSCGIServer.handler) runs the application, called
openly as ``respond``; flup's request class frames the response. Who may connect, the
path, the 500 page and the connection are ours (docs/flup.rst).
"""

from __future__ import annotations

import socket
from typing import Any

from flup.server import scgi_base

from django_runfcgi.protocols.clients import ClientAddress
from django_runfcgi.protocols.scgi.connection import SCGIConnection
from django_runfcgi.protocols.wsgi import Gateway, write_cgi_error

__all__ = ["SCGI", "SCGIConnection"]


class SCGI(Gateway):
    """SCGI requests from loopback and unix-socket clients."""

    name = "SCGI"
    respond = scgi_base.BaseSCGIServer.handler

    def connection(self, sock: socket.socket, addr: ClientAddress) -> SCGIConnection:
        return SCGIConnection(sock, addr, self)

    def outcome_of(self, request: Any, *, failed: bool) -> tuple[int, int]:
        # flup's request wraps the output in a StdoutWrapper; ours is inside.
        output = request.stdout._file
        if failed and not request.stdout.dataWritten:
            return self.failed_outcome(request.environ)
        return output.status, output.sent

    def error(self, request: Any) -> None:
        """Called by flup's request class when the application raised."""
        write_cgi_error(request.stdout, self.debug)
