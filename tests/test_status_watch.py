"""The per-request observation (protocols.wsgi.RequestWatch) on each protocol's real
connection code: a watch is told each request's environ when it begins, and its status
code and body bytes when it ends, whatever the application did."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from django_runfcgi import protocols
from django_runfcgi.protocols.wsgi import Environ, error_page
from tests.support.clients import ajp_request, fcgi_request, scgi_request
from tests.support.net import Address

REQUESTS = {"fcgi": fcgi_request, "scgi": scgi_request, "ajp": ajp_request}
PAGE = b"twelve bytes"


class Watch:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def request_begins(self, environ: Environ) -> None:
        self.calls.append(("begins", (environ["REQUEST_METHOD"], environ.get("REQUEST_URI"))))

    def request_ends(self, status: int, sent: int) -> None:
        self.calls.append(("ends", (status, sent)))


def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
    if environ["PATH_INFO"] == "/fail":
        raise RuntimeError("boom")
    if environ["PATH_INFO"] == "/late":
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError("boom after start_response")
    status = "404 Not Found" if environ["PATH_INFO"] == "/missing" else "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return [PAGE]


class Served:
    """One protocol's gateway serving its connections in threads, on a real socket."""

    def __init__(self, gateway: protocols.Gateway, tcp: bool) -> None:
        self._dir = tempfile.mkdtemp(dir="/tmp")
        if tcp:
            self._listener = socket.socket()
            self._listener.bind(("127.0.0.1", 0))
            self.address: Address = self._listener.getsockname()[:2]
        else:
            self.address = os.path.join(self._dir, "s")
            self._listener = socket.socket(socket.AF_UNIX)
            self._listener.bind(self.address)
        self._listener.listen(8)
        self.gateway = gateway
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, addr = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock, addr), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket, addr: Any) -> None:
        with sock:
            self.gateway.connection(sock, addr or "").run()

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)
        if isinstance(self.address, str):
            os.unlink(self.address)
        os.rmdir(self._dir)


@pytest.fixture
def served() -> Iterator[Callable[[str, Any], Served]]:
    started: list[Served] = []

    def serve(protocol: str, application: Any) -> Served:
        gateway = protocols.build(protocol, application, multiprocess=True)
        served = Served(gateway, tcp=protocol == "ajp")
        started.append(served)
        return served

    yield serve
    for served in started:
        served.close()


@pytest.mark.parametrize("protocol", ["fcgi", "scgi", "ajp"])
def test_a_watch_sees_environ_status_and_bytes(
    served: Callable[[str, Any], Served], protocol: str
) -> None:
    server = served(protocol, app)
    first, second = Watch(), Watch()
    server.gateway.watch_requests(first)
    server.gateway.watch_requests(second)
    request = REQUESTS[protocol]
    error_body = len(error_page(False)[1])
    expected = [
        ("GET", "/page", 200, (200, len(PAGE))),
        ("HEAD", "/page", 200, (200, 0)),
        ("GET", "/missing", 404, (404, len(PAGE))),
        ("GET", "/fail", 500, (500, error_body)),
        ("HEAD", "/fail", 500, (500, 0)),
    ]
    for method, path, status, _ in expected:
        assert request(server.address, method, path, timeout=10).status == status
    calls = []
    for method, path, _, outcome in expected:
        calls += [("begins", (method, path)), ("ends", outcome)]
    assert first.calls == calls
    assert second.calls == calls


@pytest.mark.parametrize("protocol", ["fcgi", "scgi", "ajp"])
def test_a_response_begun_before_the_failure_keeps_its_status(
    served: Callable[[str, Any], Served], protocol: str
) -> None:
    """The application called start_response, then raised before any body: the protocol
    answers 500 (nothing was sent yet) for FastCGI and SCGI, as the watch says."""
    server = served(protocol, app)
    watch = Watch()
    server.gateway.watch_requests(watch)
    response = REQUESTS[protocol](server.address, "GET", "/late", timeout=10)
    assert watch.calls[-1] == ("ends", (response.status, len(response.body)))
