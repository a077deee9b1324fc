"""AJP 1.3: the gateway that runs the application for AJP requests.

flup's WSGI handler (ajp_base.BaseAJPServer.handler) runs the application, called
openly as ``respond``. Decoding the request (forward.py), who may connect, the path,
the 500 status and the connection are ours (docs/flup.rst).
"""

from __future__ import annotations

import socket
from typing import Any

from flup.server import ajp_base

from django_runfcgi.protocols.ajp.connection import AJPConnection
from django_runfcgi.protocols.clients import ClientAddress
from django_runfcgi.protocols.wsgi import Gateway, error_page

__all__ = ["AJP", "AJPConnection"]


class AJP(Gateway):
    """AJP 1.3 requests from loopback and unix-socket clients."""

    name = "AJP"
    respond = ajp_base.BaseAJPServer.handler

    def connection(self, sock: socket.socket, addr: ClientAddress) -> AJPConnection:
        return AJPConnection(sock, addr, self)

    def error(self, request: Any) -> None:
        """500, not flup's 200 (flup.rst#ajp-error-status)."""
        content_type, body = error_page(self.debug)
        request.startResponse(
            500,
            b"Internal Server Error",
            [(b"Content-Type", content_type), (b"Content-Length", str(len(body)).encode())],
        )
        request.write(body)
