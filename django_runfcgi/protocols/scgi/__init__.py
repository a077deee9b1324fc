"""SCGI: the gateway that runs the application for SCGI requests.

flup gives the SCGI logger's name (scgi_base), used by name. Its WSGI handler
(scgi_base.BaseSCGIServer.handler) ran the application until 1.x: it wrote the response
through a buffered file made per request, flushing after every piece, and its Request
and StdoutWrapper classes wrapped that file twice more: work on every request that
made SCGI slower than uWSGI's. The handler here is ours, for speed, modelled on
FastCGI's: a response returned whole goes out with its headers in one send, a one-item
list gets a Content-Length, a streaming response is sent as it is yielded, and HEAD
gets the header block only. Who may connect, the path, the 500 page and the
connection are ours too (docs/flup.rst).
"""

from __future__ import annotations

import sys

from django_runfcgi.protocols.clients import ClientAddress
from django_runfcgi.protocols.scgi.connection import SCGIConnection
from django_runfcgi.protocols.scgi.request import SCGIRequest
from django_runfcgi.protocols.wsgi import Gateway, has_body, write_cgi_error
from django_runfcgi.sockets import Stream

__all__ = ["SCGI", "SCGIConnection"]


class SCGI(Gateway):
    """SCGI requests from loopback and unix-socket clients."""

    name = "SCGI"

    def connection(self, sock: Stream, addr: ClientAddress) -> SCGIConnection:
        return SCGIConnection(sock, addr, self)

    def respond(self, req: SCGIRequest) -> None:
        """Run the application for one request and write its response.

        The environ is flup's: wsgi.errors is the process's stderr, and the path comes
        from the URI under the mount prefix (Gateway._sanitizeEnv).
        """
        environ = req.environ
        if self.environ:
            environ.update(self.environ)
        environ["wsgi.version"] = (1, 0)
        environ["wsgi.input"] = req.stdin
        environ["wsgi.errors"] = sys.stderr
        environ["wsgi.multithread"] = self.multithreaded
        environ["wsgi.multiprocess"] = self.multiprocess
        environ["wsgi.run_once"] = False
        environ["wsgi.url_scheme"] = (
            "https" if environ.get("HTTPS", "off") in ("on", "1") else "http"
        )
        self._sanitizeEnv(environ)
        req._head = not has_body(environ)
        lock = None if self.multithreaded else self._appLock
        if lock is not None:
            lock.acquire()
        try:
            result = self.application(environ, req.start_response)
            try:
                # A one-item list or tuple gets a Content-Length; Django's responses have
                # no len().
                if isinstance(result, (list, tuple)):
                    whole = True
                    req._add_length = len(result) == 1
                else:
                    whole = getattr(result, "streaming", None) is False
                for data in result:
                    if data:
                        req.write(data, flush=not whole)
                req.end()
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            if lock is not None:
                lock.release()

    def outcome_of(self, request: SCGIRequest, *, failed: bool) -> tuple[int, int]:
        if failed and not request.dataWritten:
            return self.failed_outcome(request.environ)
        return request.status, request.sent

    def error(self, request: SCGIRequest) -> None:
        write_cgi_error(request.stdout, self.debug)
