"""AJP 1.3: the gateway that runs the application for AJP requests.

flup's WSGI handler (ajp_base.BaseAJPServer.handler) runs the application, called
openly as ``respond``. Decoding the request (forward.py), the secret, who may connect,
the path, the 500 status and the connection are ours (docs/flup.rst).
"""

from __future__ import annotations

import hmac
import socket
from typing import Any

from flup.server import ajp_base

from django_runfcgi.protocols.ajp.connection import AJPConnection
from django_runfcgi.protocols.clients import ClientAddress, ip_address_of
from django_runfcgi.protocols.wsgi import Gateway, error_page
from django_runfcgi.sockets import Stream

__all__ = ["AJP", "AJPConnection", "open_without_secret"]


class AJP(Gateway):
    """AJP 1.3 requests from loopback and unix-socket clients."""

    name = "AJP"
    respond = ajp_base.BaseAJPServer.handler
    _secret: bytes | None = None

    def require_secret(self, secret: str) -> None:
        """Answer 403 to every request that does not carry `secret` (Apache's
        ``ProxyPass ... secret=``, Tomcat's ``secret``)."""
        self._secret = secret.encode("ascii")

    def secret_matches(self, sent: bytes | None) -> bool:
        """Whether a request carrying `sent` may run: always when no secret is required."""
        if self._secret is None:
            return True
        return sent is not None and hmac.compare_digest(sent, self._secret)

    def connection(self, sock: Stream, addr: ClientAddress) -> AJPConnection:
        return AJPConnection(sock, addr, self)

    def outcome_of(self, request: Any, *, failed: bool) -> tuple[int, int]:
        if failed and not request._headersSent:
            return self.failed_outcome(request.environ)
        return request.status, request.sent

    def error(self, request: Any) -> None:
        """500, not flup's 200 (flup.rst#ajp-error-status)."""
        content_type, body = error_page(self.debug)
        request.startResponse(
            500,
            b"Internal Server Error",
            [(b"Content-Type", content_type), (b"Content-Length", str(len(body)).encode())],
        )
        request.write(body)


def open_without_secret(sock: socket.socket) -> str | None:
    """The start-up warning for an AJP socket bound beyond loopback with no secret=."""
    host = sock.getsockname()[0]
    ip = ip_address_of(host)
    if ip is not None and ip.is_loopback:
        return None
    shown = f"[{host}]" if ":" in host else host
    return (
        f"AJP listens on {shown}:{sock.getsockname()[1]}, beyond loopback, without "
        "secret=: whoever may connect can send requests as if they came through the web "
        "server. Set secret= here and the same secret= in Apache's ProxyPass or "
        "BalancerMember."
    )
