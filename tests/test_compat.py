"""One test per fix in django_runfcgi.protocols, each run in-process (tests/support/harness.py)
through the clients in tests/support/clients.py.

Where the scenario shows flup code that runfcgi still calls (the SCGI and AJP WSGI
handlers and request classes, AJP's request decoder), or flup behaviour that docs/flup.rst
documents, the test is also run against flup's own class as a strict xfail: that is the
evidence the fix is needed, and the xfail turns into a failure if a flup release stops
misbehaving.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import struct
import threading
import time
import types
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flup.server import ajp_base, fcgi_base, fcgi_fork, scgi_base

from django_runfcgi import options, protocols
from django_runfcgi import server as runfcgi_server
from django_runfcgi.protocols.base import FIRST_REQUEST_SECONDS
from django_runfcgi.protocols.fastcgi import FCGIConnection
from django_runfcgi.workers.prefork.worker import REQUEST_BEGINS, REQUEST_ENDS, RequestTimer
from tests.support.clients import (
    Response,
    ajp_request,
    connect,
    fcgi_get_values,
    fcgi_request,
    raw_exchange,
    scgi_request,
)
from tests.support.harness import Harness
from tests.support.net import Address

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
REQUESTS: dict[str, Callable[..., Response]] = {
    "fcgi": fcgi_request,
    "scgi": scgi_request,
    "ajp": ajp_request,
}
OURS: dict[str, type[Any]] = protocols.GATEWAYS
PROTOCOLS = list(OURS)
CONNECTIONS: dict[str, type[Any]] = {
    "fcgi": FCGIConnection,
    "scgi": protocols.scgi.SCGIConnection,
    "ajp": protocols.ajp.AJPConnection,
}


def ours(*protocols: str) -> list[Any]:
    """Parameters (protocol, impl) for runfcgi's own protocol classes."""
    return [pytest.param(protocol, "ours", id=f"{protocol}-ours") for protocol in protocols]


def flup_fails(bug: str, *protocols: str, strict: bool = True) -> list[Any]:
    """Parameters (protocol, impl): ours for each protocol, plus plain flup as an xfail.

    ``strict=False`` where plain flup was seen to pass now and then on a loaded machine.
    """
    params = ours(*protocols)
    params += [
        pytest.param(
            protocol,
            "flup",
            id=f"{protocol}-flup",
            marks=pytest.mark.xfail(strict=strict, reason=f"plain flup: {bug}"),
        )
        for protocol in protocols
    ]
    return params


def wsgi(text: str) -> str:
    """How WSGI shows the UTF-8 bytes of `text` in environ: one character per byte."""
    return text.encode().decode("latin-1")


def environ_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    names = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING")
    data = {name: environ.get(name) for name in names}
    data.update(length=len(body), crc=zlib.crc32(body))
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(data).encode()]


def failing_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    raise RuntimeError("boom")


def ignoring_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


class RecordingSocket:
    """A server-side socket that records the size of every send."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sends: list[int] = []

    def send(self, data: bytes) -> int:
        sent = self._sock.send(data)
        self.sends.append(sent)
        return sent

    def sendall(self, data: bytes) -> None:
        self.sends.append(len(data))
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


Connect = Callable[[Any, Any], Any]
"""Makes the connection object that serves an accepted socket (and its address)."""


def make_server(
    protocol: str, impl: str, app: Any, debug: bool, scriptname: str | None = None
) -> tuple[Any, Connect]:
    """A protocol's server side and how it makes a connection: ours, or plain flup's."""
    if impl == "ours":
        server = OURS[protocol](
            app, multithreaded=True, multiprocess=False, debug=debug, scriptname=scriptname
        )
        return server, server.connection
    if protocol == "fcgi":
        flup_server: Any = fcgi_base.BaseFCGIServer(app, multithreaded=True, debug=debug)
        connection_class = flup_server._connectionClass
    elif protocol == "scgi":
        flup_server = scgi_base.BaseSCGIServer(app, multithreaded=True, debug=debug)
        connection_class = scgi_base.Connection
    else:
        flup_server = ajp_base.BaseAJPServer(app, multithreaded=True, debug=debug)
        connection_class = ajp_base.Connection
    return flup_server, lambda sock, addr: connection_class(sock, addr, flup_server, None)


def make_prefork_protocol(protocol: str, app: Any) -> Any:
    """The protocol runfcgi builds for method=prefork; the harness serves its connections
    and binds its own socket, whatever the address in the options."""
    values = {"protocol": protocol, "requesttimeout": 30}
    values |= {"host": "127.0.0.1", "port": 8009}
    config = options.resolve(options.merge(values), cwd=Path("/"))
    return runfcgi_server.make_protocol(config, app)


@pytest.fixture
def serve() -> Iterator[Callable[..., Harness]]:
    """serve(protocol, app, impl="ours", ...) -> a running Harness; AJP always over TCP.

    With ``timed_to``, the protocol is the one runfcgi builds for method=prefork, and
    tells that socket when each request begins and ends, as a worker timing its
    requests (requesttimeout) tells its master.
    """
    harnesses: list[tuple[str, Harness]] = []

    def start(
        protocol: str,
        app: Any,
        impl: str = "ours",
        *,
        debug: bool = False,
        tcp: bool = False,
        connection_class: type[Any] | None = None,
        wrap: Callable[[socket.socket], Any] | None = None,
        scriptname: str | None = None,
        timed_to: socket.socket | None = None,
    ) -> Harness:
        if timed_to is None:
            server, connect = make_server(protocol, impl, app, debug, scriptname)
        else:
            server = make_prefork_protocol(protocol, app)
            server.watch_requests(RequestTimer(timed_to))
            connect = server.connection
        if connection_class is not None:
            connect = functools.partial(connection_class, server=server)
        harness = Harness(
            server,
            connect,
            tcp=tcp or protocol == "ajp",
            wrap=wrap,
        )
        harnesses.append((impl, harness))
        return harness

    yield start
    for impl, harness in harnesses:
        done = harness.close()
        if impl == "ours":
            assert done, "a connection was still running at the end of the test"
            assert harness.errors == []


def problems(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("protocol", "impl"), flup_fails("flup.rst#debug-cgitb, debug imports cgitb", *PROTOCOLS)
)
def test_debug_error_page_is_a_plain_text_traceback(
    serve: Callable[..., Harness], protocol: str, impl: str
) -> None:
    """With debug, an exception from the application gives a 500 with its traceback.

    flup imported cgitb (gone in 3.13; deprecated before): FastCGI never ended the request,
    SCGI sent nothing (502), AJP sent headers but never END_RESPONSE (503).
    """
    harness = serve(protocol, failing_app, impl, debug=True)
    response = REQUESTS[protocol](harness.address, timeout=5)
    assert response.status == 500
    assert response.header("Content-Type") == "text/plain; charset=utf-8"
    assert b"Traceback (most recent call last)" in response.body
    assert b"RuntimeError: boom" in response.body
    if protocol == "fcgi":
        assert b"RuntimeError: boom" in response.stderr
    assert REQUESTS[protocol](harness.address, timeout=5).status == 500


@pytest.mark.parametrize(
    ("protocol", "impl"),
    [
        ("fcgi", "ours"),
        ("scgi", "ours"),
        *flup_fails("flup.rst#ajp-error-status, error page sent as 200", "ajp"),
    ],
)
def test_error_page_without_debug_is_a_generic_500(
    serve: Callable[..., Harness], protocol: str, impl: str
) -> None:
    """AJP sent its error page with status 200; every protocol must say 500."""
    harness = serve(protocol, failing_app, impl)
    response = REQUESTS[protocol](harness.address, timeout=5)
    assert response.status == 500
    assert response.header("Content-Type") in ("text/html", "text/html; charset=utf-8")
    assert b"Internal Server Error" in response.body
    assert b"boom" not in response.body


@pytest.mark.parametrize(
    ("protocol", "impl"), flup_fails("flup.rst#ajp-path-info, PATH_INFO not decoded", "ajp")
)
@pytest.mark.parametrize(
    ("path", "attributes", "script_name", "path_info"),
    [
        ("/caf%C3%A9/%C3%BCn%C3%AFcode/", {}, "", "/café/ünïcode/"),
        # A mount prefix comes from scriptname= (an attribute named WSGI_SCRIPT_NAME
        # stays AJP_WSGI_SCRIPT_NAME: tests/test_ajp_request.py).
        ("/app/caf%C3%A9/", {"WSGI_SCRIPT_NAME": "/app"}, "", "/app/café/"),
    ],
)
def test_ajp_path_info_is_percent_decoded(
    *,
    serve: Callable[..., Harness],
    protocol: str,
    impl: str,
    path: str,
    attributes: dict[str, str],
    script_name: str,
    path_info: str,
) -> None:
    """PATH_INFO is the decoded req_uri (WSGI style), so non-ASCII routes match."""
    harness = serve(protocol, environ_app, impl)
    response = ajp_request(harness.address, path=path, query="q=%C3%A9&a=1", params=attributes)
    assert response.json() == {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": script_name,
        "PATH_INFO": wsgi(path_info),
        "QUERY_STRING": "q=%C3%A9&a=1",
        "length": 0,
        "crc": 0,
    }


@pytest.mark.parametrize(
    ("protocol", "impl"), flup_fails("flup.rst#ajp-nagle, two sends per packet", "ajp")
)
def test_ajp_packets_go_out_whole_without_nagle(
    serve: Callable[..., Harness], protocol: str, impl: str
) -> None:
    """flup wrote each packet in two sends with Nagle on: 40 ms per body chunk.

    Now TCP_NODELAY is set and a small response takes two sends: SEND_HEADERS with the
    body, then END_RESPONSE.
    """
    harness = serve(protocol, ignoring_app, impl, wrap=RecordingSocket)
    with connect(harness.address) as client:
        assert ajp_request(harness.address, sock=client).body == b"ok"
        server_side = harness.sockets[0]
        assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert len(server_side.sends) == 2


@pytest.mark.parametrize(
    ("protocol", "impl", "size", "limit"),
    [
        pytest.param("ajp", "ours", 1 << 20, 1.0, id="1MiB-ours"),
        pytest.param("ajp", "ours", 50_000_000, 20.0, id="50MB-ours"),
        pytest.param(
            "ajp",
            "flup",
            1 << 20,
            1.0,
            id="1MiB-flup",
            marks=pytest.mark.xfail(
                strict=True, raises=TimeoutError, reason="plain flup: flup.rst#ajp-nagle"
            ),
        ),
    ],
)
def test_ajp_large_posts_are_quick(
    serve: Callable[..., Harness], protocol: str, impl: str, size: int, limit: float
) -> None:
    """A 1 MiB POST took 5.7 s through flup's AJP and 50 MB timed out."""
    harness = serve(protocol, environ_app, impl)
    body = os.urandom(1 << 20) * (size >> 20) + os.urandom(size % (1 << 20))
    started = time.monotonic()
    response = ajp_request(harness.address, "POST", body=body, timeout=limit)
    assert time.monotonic() - started < limit
    assert response.json()["length"] == size
    assert response.json()["crc"] == zlib.crc32(body)


@pytest.mark.parametrize("protocol", ["fcgi", "scgi"])
def test_small_response_goes_out_in_one_send(serve: Callable[..., Harness], protocol: str) -> None:
    """A whole response goes out in one send, one wake-up of the web server: FastCGI's
    with FCGI_END_REQUEST, where flup sent each record's header, content and padding
    apart; SCGI's headers with the body, where flup wrote them through a file."""
    harness = serve(protocol, ignoring_app, wrap=RecordingSocket)
    response = REQUESTS[protocol](harness.address)
    assert (response.status, response.body) == (200, b"ok")
    assert len(harness.sockets[0].sends) == 1


def hello_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """A plain WSGI application, not Django: its response is a list."""
    if environ["PATH_INFO"] == "/fail/":
        raise RuntimeError("boom")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


@pytest.mark.parametrize("timed", [False, True], ids=["untimed", "requesttimeout"])
@pytest.mark.parametrize(("protocol", "sends"), [("fcgi", 1), ("scgi", 1), ("ajp", 2)])
def test_a_listed_response_gets_its_length_and_few_sends_with_or_without_requesttimeout(
    serve: Callable[..., Harness], protocol: str, sends: int | None, timed: bool
) -> None:
    """A one-item list is a whole response: it gets a Content-Length and goes out in as
    few sends as the protocol allows, whether the prefork master times requests or not.

    The timing used to wrap the application, which hid the list from the protocol:
    FastCGI sent the response without Content-Length, in two sends.
    """
    worker_end, master_end = socket.socketpair()
    with worker_end, master_end:
        harness = serve(
            protocol, hello_app, timed_to=worker_end if timed else None, wrap=RecordingSocket
        )
        with connect(harness.address) as sock:
            response = persistent_requests(protocol, harness.address, sock)
        assert (response.status, response.body) == (200, b"hello")
        assert response.header("Content-Length") == "5"
        if sends is not None:
            assert len(harness.sockets[0].sends) == sends


def told_master(link: socket.socket, size: int) -> bytes:
    """What a worker's connections told the master, once `size` bytes of it have come."""
    told = b""
    link.settimeout(5)
    while len(told) < size:
        told += link.recv(size - len(told))
    return told


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_requesttimeout_times_each_request_of_a_persistent_connection(
    serve: Callable[..., Harness], protocol: str
) -> None:
    """Each request tells the master when it begins and ends, also one that fails: the
    time between requests on a kept connection is not time in a request. (SCGI has one
    request per connection.)"""
    worker_end, master_end = socket.socketpair()
    harness = serve(protocol, hello_app, timed_to=worker_end)
    paths = ["/", "/fail/", "/"]
    with worker_end, master_end:
        if protocol == "scgi":
            statuses = [scgi_request(harness.address, path=path).status for path in paths]
        else:
            with connect(harness.address) as sock:
                statuses = [
                    persistent_requests(protocol, harness.address, sock, path).status
                    for path in paths
                ]
        assert statuses == [200, 500, 200]
        told = told_master(master_end, len(paths) * 2)
    assert told == (REQUEST_BEGINS + REQUEST_ENDS) * len(paths)
    assert len(harness.connections) == (len(paths) if protocol == "scgi" else 1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_requesttimeout_counts_a_streamed_response_until_its_end(
    serve: Callable[..., Harness], protocol: str
) -> None:
    """The application returns a stream at once; the request lasts until it is sent."""
    worker_end, master_end = socket.socketpair()
    told_mid_stream: list[bytes] = []

    def stream(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first"
        told_mid_stream.append(master_end.recv(64, socket.MSG_DONTWAIT))
        yield b"last"

    harness = serve(protocol, stream, timed_to=worker_end)
    with worker_end, master_end:
        assert REQUESTS[protocol](harness.address, timeout=5).body == b"firstlast"
        assert told_mid_stream == [REQUEST_BEGINS]
        assert told_master(master_end, 1) == REQUEST_ENDS


@pytest.mark.parametrize(
    ("protocol", "impl"),
    # flup's SCGI and AJP handlers, which runfcgi calls, write the body for HEAD.
    [*ours("fcgi"), *flup_fails("sends the body for HEAD", "scgi", "ajp")],
)
def test_head_response_has_headers_and_no_body(
    serve: Callable[..., Harness], protocol: str, impl: str
) -> None:
    """Django renders HEAD like GET; the body must not go out (front ends drop it anyway)."""
    harness = serve(protocol, environ_app, impl)
    response = REQUESTS[protocol](harness.address, "HEAD")
    assert (response.status, response.body) == (200, b"")
    assert response.header("Content-Type") == "application/json"
    assert int(response.header("Content-Length") or 0) > 0
    failing = serve(protocol, failing_app, impl)
    assert REQUESTS[protocol](failing.address, "HEAD").body == b""


def streaming_app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    yield b"first"
    time.sleep(0.3)
    yield b""
    yield b"x" * 3_000_000
    yield b"last"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_responses_still_stream(serve: Callable[..., Harness], protocol: str) -> None:
    """Holding the headers back for the first body bytes must not delay that piece."""
    harness = serve(protocol, streaming_app)
    response = REQUESTS[protocol](harness.address)
    assert response.body == b"first" + b"x" * 3_000_000 + b"last"
    first_at = response.chunk_times[0][0]
    last_at = response.chunk_times[-1][0]
    assert last_at - first_at > 0.2


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_body_round_trip(serve: Callable[..., Harness], protocol: str) -> None:
    body = os.urandom(3_000_001)
    harness = serve(protocol, environ_app)
    response = REQUESTS[protocol](harness.address, "POST", body=body)
    assert (response.json()["length"], response.json()["crc"]) == (len(body), zlib.crc32(body))


@pytest.mark.parametrize(
    ("protocol", "impl"),
    flup_fails("flup.rst#path-info-encoded, PATH_INFO from encoded URI", "fcgi", "scgi"),
)
@pytest.mark.parametrize(
    ("path", "params", "script_name", "path_info"),
    [
        pytest.param(
            "/caf%C3%A9/",
            {"SCRIPT_NAME": "/café/", "PATH_INFO": None},
            "/café/",
            "",
            id="script-name-is-whole-path",
        ),
        pytest.param(
            "/caf%C3%A9/%C3%BCn%C3%AFcode/",
            {"SCRIPT_NAME": None, "PATH_INFO": None},
            "",
            "/café/ünïcode/",
            id="neither",
        ),
        pytest.param(
            "/app/caf%C3%A9/",
            {"SCRIPT_NAME": "/app", "PATH_INFO": None},
            "/app",
            "/café/",
            id="prefix",
        ),
    ],
)
def test_path_info_derived_from_request_uri_is_decoded(
    *,
    serve: Callable[..., Harness],
    protocol: str,
    impl: str,
    path: str,
    params: dict[str, str | None],
    script_name: str,
    path_info: str,
) -> None:
    """Without PATH_INFO, flup cut the encoded REQUEST_URI by the decoded SCRIPT_NAME's
    length, giving garbage such as '3%A9/'."""
    harness = serve(protocol, environ_app, impl)
    response = REQUESTS[protocol](harness.address, path=path, params=params)
    data = response.json()
    assert (data["SCRIPT_NAME"], data["PATH_INFO"]) == (wsgi(script_name), wsgi(path_info))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("mount", "params", "script_name", "path_info"),
    [
        pytest.param(
            "/app",
            {"SCRIPT_NAME": "/app/café/", "PATH_INFO": None},
            "/app",
            "/café/",
            id="script-name-is-whole-path",
        ),
        pytest.param(
            "/app",
            {"SCRIPT_NAME": "/mysite.fcgi", "PATH_INFO": "/app/café/"},
            "/app",
            "/café/",
            id="rewritten-to-a-script",
        ),
        pytest.param(
            "", {"SCRIPT_NAME": "/mysite.fcgi", "PATH_INFO": None}, "", "/café/", id="root"
        ),
    ],
)
def test_scriptname_option_overrides_the_front_ends_split(
    *,
    serve: Callable[..., Harness],
    protocol: str,
    mount: str,
    params: dict[str, str | None],
    script_name: str,
    path_info: str,
) -> None:
    """With scriptname set, the URI the browser asked for decides, whatever the split."""
    harness = serve(protocol, environ_app, scriptname=mount)
    if protocol == "ajp":
        params = {}  # AJP sends only the URI.
    response = REQUESTS[protocol](
        harness.address, path=f"{mount}/caf%C3%A9/", query="q=1", params=params
    )
    data = response.json()
    assert (data["SCRIPT_NAME"], data["PATH_INFO"]) == (script_name, wsgi(path_info))
    assert data["QUERY_STRING"] == "q=1"


@pytest.mark.parametrize(
    ("protocol", "impl"), flup_fails("flup.rst#scgi-mount-prefix, KeyError and a warning", "scgi")
)
def test_scgi_mount_prefix_without_script_name(
    serve: Callable[..., Harness], protocol: str, impl: str
) -> None:
    """WSGI_SCRIPT_NAME with no SCRIPT_NAME raised KeyError (500) in flup, after a
    DeprecationWarning on every request; tests turn warnings into errors."""
    harness = serve(protocol, environ_app, impl)
    response = scgi_request(
        harness.address,
        path="/app/caf%C3%A9/",
        params={"WSGI_SCRIPT_NAME": "/app", "SCRIPT_NAME": None, "PATH_INFO": None},
    )
    assert response.status == 200
    assert (response.json()["SCRIPT_NAME"], response.json()["PATH_INFO"]) == (
        "/app",
        wsgi("/café/"),
    )


@pytest.mark.parametrize(
    ("protocol", "impl"),
    flup_fails("flup.rst#scgi-unread-body, unread body not drained", "scgi", strict=False),
)
def test_scgi_unread_body_is_drained(
    serve: Callable[..., Harness], protocol: str, impl: str
) -> None:
    """Closing with 50 MB unread reset the connection and the front end lost the
    response; now the rest of the body is read and dropped first."""
    harness = serve(protocol, ignoring_app, impl)
    response = scgi_request(harness.address, "POST", body=bytes(50_000_000), timeout=20)
    assert (response.status, response.body) == (200, b"ok")


def read_all_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(len(body)).encode()]


def lines_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    stream = environ["wsgi.input"]
    parts = [stream.readline(), stream.readline(4), stream.readline(), stream.read(3)]
    parts += [stream.readline(), stream.read(), stream.readline()]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps([[len(p), zlib.crc32(p)] for p in parts]).encode()]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_body_lines_and_reads_mixed(serve: Callable[..., Harness], protocol: str) -> None:
    """readline() and read() take the body in order, across what came with the head and
    what came later, and a line longer than one receive comes whole."""
    long_line = b"y" * 300_000 + b"\n"
    body = b"a\n" + b"bbbbbb\n" + b"ccc" + long_line + b"tail"
    harness = serve(protocol, lines_app)
    response = REQUESTS[protocol](harness.address, "POST", body=body)
    expected = [b"a\n", b"bbbb", b"bb\n", b"ccc", long_line, b"tail", b""]
    assert response.json() == [[len(p), zlib.crc32(p)] for p in expected]


def test_scgi_input_stops_at_content_length(serve: Callable[..., Harness]) -> None:
    """wsgi.input.read() with no size returns the body; flup read to EOF, which never comes
    while the front end waits for the response."""
    harness = serve("scgi", read_all_app)
    response = scgi_request(harness.address, "POST", body=b"x" * 1000, timeout=2)
    assert response.body == b"1000"


@pytest.mark.parametrize(
    ("protocol", "impl"),
    # flup's SCGI request class logs every request at INFO.
    [*flup_fails("logs every request at INFO", "scgi"), *ours("ajp")],
)
def test_per_request_log_lines_are_off_errors_stay(
    serve: Callable[..., Harness], caplog: pytest.LogCaptureFixture, protocol: str, impl: str
) -> None:
    """flup logs every SCGI/AJP request at INFO to stderr; only errors remain."""
    caplog.set_level(logging.DEBUG)
    ok = serve(protocol, ignoring_app, impl)
    assert REQUESTS[protocol](ok.address).status == 200
    failing = serve(protocol, failing_app, impl)
    assert REQUESTS[protocol](failing.address).status == 500
    flup_logger = {"scgi": "scgi-wsgi", "ajp": "ajp-wsgi"}[protocol]
    levels = [record.levelno for record in caplog.records if record.name == flup_logger]
    assert levels == [logging.ERROR]


def fcgi_record(kind: int, content: bytes, request_id: int = 1) -> bytes:
    return struct.pack("!BBHHBx", 1, kind, request_id, len(content), 0) + content


def ajp_packet(data: bytes) -> bytes:
    return b"\x12\x34" + struct.pack(">H", len(data)) + data


def ajp_strings(*values: bytes) -> bytes:
    return b"".join(struct.pack(">H", len(value)) + value + b"\0" for value in values)


BEGIN = fcgi_record(1, struct.pack("!HB5x", 1, 0))
PARAMS_END = fcgi_record(4, b"")
FORWARD_WITHOUT_PORT = b"\x02\x02" + ajp_strings(
    b"HTTP/1.1", b"/", b"127.0.0.1", b"", b"localhost"
)

MALFORMED = [
    # (protocol, name, bytes, whether plain flup runs it too: where the AJP request decoder,
    # which runfcgi calls, raises on it)
    ("fcgi", "http-request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
    ("fcgi", "pair-length-cut-short", BEGIN + fcgi_record(4, b"\x80\x00") + PARAMS_END, False),
    ("fcgi", "pair-overruns-record", BEGIN + fcgi_record(4, b"\x05\x7fabc") + PARAMS_END, False),
    ("fcgi", "closed-inside-the-params", BEGIN + fcgi_record(4, b"\x01\x01ab"), False),
    ("fcgi", "short-begin-request", fcgi_record(1, b"\x00\x01"), False),
    ("fcgi", "truncated-record", struct.pack("!BBHHBx", 1, 4, 1, 100, 0) + b"x" * 10, False),
    ("scgi", "http-request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
    ("scgi", "length-without-colon", b"12345", False),
    ("scgi", "truncated-netstring", b"100:abc", False),
    ("scgi", "bad-trailer", b"5:abcde;", False),
    ("scgi", "no-content-length", b"19:REQUEST_METHOD\0GET\0,", False),
    ("ajp", "http-request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
    ("ajp", "bad-method-code", ajp_packet(b"\x02\xee"), True),
    ("ajp", "forward-request-cut-short", ajp_packet(FORWARD_WITHOUT_PORT), True),
    ("ajp", "truncated-packet", b"\x12\x34\x00\x64" + b"x" * 10, False),
    ("ajp", "unknown-packet-type", b"\x12\x34\x00\x01\x99", False),
]


@pytest.mark.parametrize(
    ("protocol", "impl", "data"),
    [
        param
        for protocol, name, data, flup_too in MALFORMED
        for param in [
            pytest.param(protocol, "ours", data, id=f"{protocol}-{name}-ours"),
            *(
                [
                    pytest.param(
                        protocol,
                        "flup",
                        data,
                        id=f"{protocol}-{name}-flup",
                        marks=pytest.mark.xfail(
                            strict=True, reason="plain flup: silent or crashes"
                        ),
                    )
                ]
                if flup_too
                else []
            ),
        ]
    ],
)
def test_malformed_input_closes_with_one_log_line(
    serve: Callable[..., Harness],
    caplog: pytest.LogCaptureFixture,
    protocol: str,
    impl: str,
    data: bytes,
) -> None:
    """Garbage gets one log line naming the problem and a closed connection; the server
    goes on serving. flup was silent for some, and raised out of Connection.run() (IndexError,
    struct.error) or logged a traceback for others; runfcgi still decodes AJP requests with
    flup's code, and catches what it raises."""
    harness = serve(protocol, ignoring_app, impl)
    raw_exchange(harness.address, data, timeout=5)
    assert harness.connections_done(5)
    assert harness.errors == []
    [record] = problems(caplog)
    assert record.exc_info is None
    if impl == "ours":
        assert record.getMessage().startswith(
            {"fcgi": "FastCGI", "scgi": "SCGI", "ajp": "AJP"}[protocol] + " protocol error from "
        )
    assert REQUESTS[protocol](harness.address, timeout=5).status == 200


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("error", "level"),
    [
        (RuntimeError("a bug in the connection code"), logging.ERROR),
        (ConnectionResetError(104, "Connection reset by peer"), logging.INFO),
    ],
    ids=["unexpected", "os-error"],
)
def test_a_failing_connection_costs_one_log_line_not_the_worker(
    serve: Callable[..., Harness],
    caplog: pytest.LogCaptureFixture,
    protocol: str,
    error: Exception,
    level: int,
) -> None:
    """A connection that fails in an unforeseen way is logged (with its traceback if it
    is not an OS error) and closed; the worker goes on serving."""

    class Failing(CONNECTIONS[protocol]):  # type: ignore[valid-type,misc]
        def _wait_for_request(self) -> bool:
            raise error

    harness = serve(protocol, ignoring_app, connection_class=Failing)
    # Open until the connection is done: one the client has closed already may be read
    # to its end (a clean close, not logged) before anything waits.
    with caplog.at_level(logging.INFO, logger="django_runfcgi"), connect(harness.address):
        harness.wait_for_connection()
        assert harness.connections_done(5)
    assert harness.errors == []
    [record] = [r for r in caplog.records if r.name.startswith("django_runfcgi")]
    assert record.levelno == level
    name = {"fcgi": "FastCGI", "scgi": "SCGI", "ajp": "AJP"}[protocol]
    assert record.getMessage().startswith(f"{name} connection from ")
    if level == logging.ERROR:
        assert record.exc_info is not None
        assert record.exc_info[1] is error
    else:
        assert record.exc_info is None
        assert record.getMessage().endswith("failed: [Errno 104] Connection reset by peer")


@pytest.mark.parametrize(
    ("protocol", "impl"), flup_fails("flup.rst#ajp-empty-packet, empty packet is an error", "ajp")
)
def test_ajp_empty_packet_between_requests(
    serve: Callable[..., Harness], protocol: str, impl: str
) -> None:
    """lighttpd's mod_ajp13 sends an empty packet between requests."""
    harness = serve(protocol, ignoring_app, impl)
    with connect(harness.address) as sock:
        assert ajp_request(harness.address, sock=sock).reuse
        sock.sendall(b"\x12\x34\x00\x00")
        assert ajp_request(harness.address, sock=sock, timeout=5).body == b"ok"


def test_fcgi_get_values(serve: Callable[..., Harness]) -> None:
    """FCGI_GET_VALUES: flup looked bytes names up in a dict of str names, so answered nothing."""
    harness = serve("fcgi", ignoring_app)
    values = fcgi_get_values(harness.address, ["FCGI_MPXS_CONNS", "FCGI_MAX_CONNS", "OTHER"])
    assert values["FCGI_MPXS_CONNS"] == "0"
    assert int(values["FCGI_MAX_CONNS"]) > 0
    assert "OTHER" not in values


class QuickCloseConnection(FCGIConnection):
    close_wait_seconds = 0.3


@pytest.mark.parametrize(
    ("protocol", "impl"), flup_fails("waits forever for the front end", "fcgi", strict=False)
)
def test_fcgi_close_wait_is_bounded(
    serve: Callable[..., Harness], protocol: str, impl: str
) -> None:
    """After a request without FCGI_KEEP_CONN, flup waited forever for the front end to
    close its side, pinning the worker (flup.rst#stop-signals)."""
    connection_class = QuickCloseConnection if impl == "ours" else None
    harness = serve(protocol, ignoring_app, impl, connection_class=connection_class)
    with connect(harness.address) as sock:
        assert fcgi_request(harness.address, sock=sock).body == b"ok"
        assert harness.connections_done(2)


def persistent_requests(
    protocol: str, address: Address, sock: socket.socket, path: str = "/"
) -> Response:
    if protocol == "fcgi":
        return fcgi_request(address, path=path, sock=sock, keep_conn=True, timeout=5)
    if protocol == "scgi":
        return scgi_request(address, path=path, sock=sock, timeout=5)
    return ajp_request(address, path=path, sock=sock, timeout=5)


@pytest.mark.parametrize("protocol", ["fcgi", "ajp"])
def test_persistent_connection_serves_several_requests(
    serve: Callable[..., Harness], protocol: str
) -> None:
    harness = serve(protocol, ignoring_app)
    with connect(harness.address) as sock:
        for _ in range(3):
            assert persistent_requests(protocol, harness.address, sock).body == b"ok"
    assert len(harness.connections) == 1


@pytest.mark.parametrize("protocol", ["fcgi", "ajp"])
def test_stop_when_idle_closes_an_idle_persistent_connection(
    serve: Callable[..., Harness], protocol: str
) -> None:
    """A persistent connection waited for requests forever, so shutdown hung
    (flup.rst#persistent-shutdown)."""
    harness = serve(protocol, ignoring_app)
    with connect(harness.address) as sock:
        assert persistent_requests(protocol, harness.address, sock).body == b"ok"
        harness.connections[0].stop_when_idle()
        assert harness.connections_done(1.5)
        sock.settimeout(1)
        assert sock.recv(1) == b""


def test_stop_when_idle_closes_a_silent_scgi_connection(serve: Callable[..., Harness]) -> None:
    """A connection that never sends its first request is given up after a short while."""
    harness = serve("scgi", ignoring_app)
    with connect(harness.address):
        harness.wait_for_connection().stop_when_idle()
        assert harness.connections_done(FIRST_REQUEST_SECONDS + 1.5)


class Gate:
    """An application that signals when it starts and reads its body in small pieces."""

    def __init__(self) -> None:
        self.started = threading.Event()

    def __call__(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        self.started.set()
        time.sleep(0.3)
        received = 0
        while piece := environ["wsgi.input"].read(10_000):
            received += len(piece)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(received).encode()]


def slow_body(pieces: int, size: int, pause: float) -> Iterable[bytes]:
    for _ in range(pieces):
        time.sleep(pause)
        yield b"y" * size


@pytest.mark.parametrize("protocol", ["fcgi", "ajp"])
def test_stop_when_idle_lets_the_request_in_progress_finish(
    serve: Callable[..., Harness], protocol: str
) -> None:
    """The request, its body still arriving, completes; then the connection closes.

    A stop flag shared with flup's _keepGoing would make FastCGI body reads spin.
    """
    gate = Gate()
    harness = serve(protocol, gate)
    results: list[Response] = []
    with connect(harness.address) as sock:

        def client() -> None:
            body = slow_body(5, 50_000, 0.1)
            if protocol == "fcgi":
                results.append(
                    fcgi_request(
                        harness.address,
                        "POST",
                        body=body,
                        content_length=250_000,
                        sock=sock,
                        keep_conn=True,
                        timeout=10,
                    )
                )
            else:
                results.append(
                    ajp_request(
                        harness.address,
                        "POST",
                        body=body,
                        content_length=250_000,
                        sock=sock,
                        timeout=10,
                    )
                )

        thread = threading.Thread(target=client)
        thread.start()
        assert gate.started.wait(5)
        harness.connections[0].stop_when_idle()
        thread.join(15)
        assert not thread.is_alive()
        [response] = results
        assert response.body == b"250000"
        assert harness.connections_done(1.5)
        if protocol == "ajp":
            assert not response.reuse


@pytest.mark.parametrize(
    ("protocol", "addr", "allowed"),
    [
        ("scgi", ("127.0.0.1", 5000), True),
        ("scgi", ("127.1.2.3", 5000), True),
        ("scgi", ("::1", 5000, 0, 0), True),
        ("scgi", ("::ffff:127.0.0.1", 5000, 0, 0), True),
        ("scgi", ("::ffff:10.0.0.1", 5000, 0, 0), False),
        ("scgi", ("2001:db8::1", 5000, 0, 0), False),
        ("scgi", ("10.0.0.1", 5000), False),
        ("scgi", "", True),
        ("ajp", ("127.0.0.1", 8009), True),
        ("ajp", ("::1", 8009, 0, 0), True),
        ("ajp", ("::ffff:127.0.0.1", 8009, 0, 0), True),
        ("ajp", ("10.0.0.1", 8009), False),
        ("ajp", "", True),
    ],
)
def test_scgi_ajp_allow_loopback_and_unix_clients(protocol: str, addr: Any, allowed: bool) -> None:
    """flup allowed only '127.0.0.1' (AJP refused ::1; SCGI let in any IPv6 client)."""
    server, _ = make_server(protocol, "ours", ignoring_app, debug=False)
    assert server.allows(addr) is allowed


def test_refused_client_gets_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    server = protocols.AJP(ignoring_app, multithreaded=True, multiprocess=False)
    assert not server.allows(("192.0.2.7", 40000))
    [record] = problems(caplog)
    assert "192.0.2.7" in record.getMessage()


# (address, whether runfcgi lets it in, whether flup gets it wrong)
WEB_SERVER_ADDRS_CASES = [
    ("", True, True),
    (("10.0.0.2", 5000), True, False),
    (("::ffff:10.0.0.2", 5000, 0, 0), True, True),
    (("10.0.0.3", 5000), False, False),
]


@pytest.mark.parametrize(
    ("impl", "addr", "allowed"),
    [
        pytest.param(
            impl,
            addr,
            allowed,
            id=f"{impl}-{addr[0] if addr else 'unix'}",
            marks=[
                pytest.mark.xfail(strict=True, reason="plain flup: flup.rst#unix-web-server-addrs")
            ]
            if impl == "flup" and flup_wrong
            else [],
        )
        for impl in ("ours", "flup")
        for addr, allowed, flup_wrong in WEB_SERVER_ADDRS_CASES
    ],
)
def test_fcgi_web_server_addrs(
    *,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    impl: str,
    addr: Any,
    allowed: bool,
) -> None:
    """With FCGI_WEB_SERVER_ADDRS set, flup refused every unix-socket client."""
    monkeypatch.setenv("FCGI_WEB_SERVER_ADDRS", "127.0.0.1, 10.0.0.2")
    if impl == "ours":
        server: Any = protocols.FastCGI(ignoring_app, multithreaded=False, multiprocess=True)
        is_allowed = server.allows
    else:
        flup_server = types.SimpleNamespace(_web_server_addrs=["127.0.0.1", "10.0.0.2"])
        is_allowed = types.MethodType(fcgi_fork.WSGIServer._isClientAllowed, flup_server)
    assert is_allowed(addr) is allowed
    if impl == "ours":
        assert len(problems(caplog)) == (0 if allowed else 1)


def test_fcgi_without_web_server_addrs_allows_everyone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FCGI_WEB_SERVER_ADDRS", raising=False)
    server = protocols.FastCGI(ignoring_app, multithreaded=False, multiprocess=True)
    assert server.allows(("192.0.2.7", 40000))


@pytest.mark.parametrize("name", ["scgi-wsgi", "ajp-wsgi"])
def test_flup_loggers_follow_the_projects_logging(name: str) -> None:
    """flup's own stderr handler printed each SCGI/AJP error a second time."""
    import django_runfcgi.protocols  # noqa: F401 - importing it is the fix

    assert logging.getLogger(name).handlers == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_connection_accepted_during_a_stop_serves_its_first_request(protocol: str) -> None:
    """A worker told to stop just after accept() dropped the connection: nginx said 502."""
    _, connection = make_server(protocol, "ours", environ_app, debug=False)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        conn = connection(ours, "")
        conn.stop_when_idle()
        thread = threading.Thread(target=conn.run)
        thread.start()
        time.sleep(0.2)
        response = REQUESTS[protocol]("", "GET", "/late/", sock=theirs, timeout=10)
        thread.join(timeout=10)
    assert response.status == 200
    assert response.json()["PATH_INFO"] == "/late/"
    assert not thread.is_alive()
