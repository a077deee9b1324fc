"""Connections on descriptors numbered 1024 and more, as a threaded server with many
connections (and a raised ``ulimit -n``) has: select() refuses them, so every wait on
a connection polls instead."""

from __future__ import annotations

import os
import resource
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from django_runfcgi import protocols
from tests.support.clients import Response, ajp_request, fcgi_request, scgi_request

HIGH = 1500


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Room for descriptor HIGH: the soft limit raised, and put back after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= HIGH:
        # Root may raise the hard limit as well; anyone may raise the soft one to it.
        wanted_hard = hard if hard == resource.RLIM_INFINITY or hard > HIGH else HIGH + 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (HIGH + 1, wanted_hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Reads the body, or with ?ignore leaves it for the server to drain before closing."""
    read = 0 if environ["QUERY_STRING"] == "ignore" else len(environ["wsgi.input"].read())
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"read %d" % read]


REQUESTS: dict[str, Callable[..., Response]] = {
    "fcgi": fcgi_request,
    "scgi": scgi_request,
    "ajp": ajp_request,
}


@pytest.mark.parametrize("query", ["", "ignore"])
@pytest.mark.parametrize("protocol", sorted(REQUESTS))
def test_a_connection_on_a_high_descriptor_is_served(
    descriptors: None, protocol: str, query: str
) -> None:
    gateway = protocols.build(protocol, application, multiprocess=False)
    server_end, client = socket.socketpair()
    os.dup2(server_end.fileno(), HIGH)
    server_end.close()
    served = socket.socket(fileno=HIGH)
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            with served:
                gateway.connection(served, "").run()
        except BaseException as err:
            failures.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client:
            client.settimeout(10)
            response = REQUESTS[protocol](
                "socketpair", "POST", "/", query=query, body=b"x" * 70_000, sock=client, timeout=10
            )
    finally:
        thread.join(15)
    assert not thread.is_alive()
    assert failures == []
    read = b"read 0" if query else b"read 70000"
    assert (response.status, response.body) == (200, read)
