"""FastCGI: the gateway that runs the application for FastCGI requests.

flup gives the record constants and pair encoding (fcgi_base), used by name; its
server, connection and request classes are not used: their WSGI handler sent a record
per write and raised on a cut record (docs/flup.rst). The connection, the request and
the handler here are ours.
"""

from __future__ import annotations

import resource
from typing import Any

from flup.server import fcgi_base

from django_runfcgi.protocols.clients import ClientAddress, WebServerAddrs
from django_runfcgi.protocols.fastcgi.connection import FCGIConnection
from django_runfcgi.protocols.fastcgi.request import FCGIRequest
from django_runfcgi.protocols.wsgi import (
    Environ,
    Gateway,
    WSGIApplication,
    fill_script_and_path,
    has_body,
    write_cgi_error,
)
from django_runfcgi.sockets import Stream

__all__ = ["FCGIConnection", "FastCGI"]


def _capability() -> dict[str, int]:
    """What FCGI_GET_VALUES answers, as flup answered: one request per connection, and as
    many connections as this process may have files open."""
    max_conns = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return {
        fcgi_base.FCGI_MAX_CONNS: max_conns,
        fcgi_base.FCGI_MAX_REQS: max_conns,
        fcgi_base.FCGI_MPXS_CONNS: 0,
    }


class FastCGI(Gateway):
    """FastCGI responder requests, from the web servers FCGI_WEB_SERVER_ADDRS allows."""

    name = "FastCGI"
    roles = (fcgi_base.FCGI_RESPONDER,)

    def __init__(self, application: WSGIApplication, **settings: Any) -> None:
        super().__init__(application, **settings)
        self.capability = _capability()
        self.allows = WebServerAddrs()

    def connection(self, sock: Stream, addr: ClientAddress) -> FCGIConnection:
        return FCGIConnection(sock, addr, self)

    def _sanitizeEnv(self, environ: Environ) -> None:
        """The path under scriptname=, and the parameters a front end must send: a missing
        one is named on wsgi.errors and given flup's default."""
        fill_script_and_path(environ, self._scriptname)
        for name, default in (
            ("REQUEST_METHOD", "GET"),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("SERVER_PROTOCOL", "HTTP/1.0"),
        ):
            if name not in environ:
                environ["wsgi.errors"].write(
                    f"FastCGI param {name} is missing; using {default!r}\n"
                )
                environ[name] = default

    def respond(self, req: FCGIRequest) -> None:
        """Run the application for one request and write its response.

        The application and its response are seen as they are: a one-item list gets a
        Content-Length and goes out with the end of the request in one send.
        """
        environ = req.params
        if self.environ:
            environ.update(self.environ)
        environ["wsgi.version"] = (1, 0)
        environ["wsgi.input"] = req.stdin
        environ["wsgi.errors"] = req.stderr
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
                # no len(), and trying it raised an exception per request.
                if isinstance(result, (list, tuple)):
                    whole = True
                    req._add_length = len(result) == 1
                else:
                    whole = getattr(result, "streaming", None) is False
                for data in result:
                    if data:
                        req.write(data, flush=not whole)
                if not req._headers_sent:
                    req.write(b"")
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            if lock is not None:
                lock.release()

    def environ_of(self, req: FCGIRequest) -> Environ:
        return req.params

    def outcome_of(self, req: FCGIRequest, *, failed: bool) -> tuple[int, int]:
        if failed and not req._headers_sent:
            return self.failed_outcome(req.params)
        headers = req._headers
        return (int(headers[0][:3]) if headers is not None else 0), req.sent

    def error(self, req: FCGIRequest) -> None:
        write_cgi_error(req.stdout, self.debug)
