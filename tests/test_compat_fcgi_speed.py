"""What the faster FastCGI path must keep: whole responses, no resets, persistent connections.

runfcgi closes a connection as soon as its response is out, instead of waiting for the
web server to close first; these run the real command and check what a web server gets.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from django_runfcgi.protocols.fastcgi import FastCGI, request
from django_runfcgi.protocols.wsgi import Bounds
from testproject.bigfile import payload
from tests.support.clients import connect, fcgi_request
from tests.support.net import Address, free_port
from tests.support.runner import runner_in_tmp

MB = 1024 * 1024
RESPONSE_SECONDS = 30.0


@dataclass
class Served:
    method: str
    transport: str
    address: Address


COMBINATIONS = [(m, t) for m in ("prefork", "threaded") for t in ("unix", "tcp")]


@pytest.fixture(scope="module", params=COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    """One worker process or thread: a connection it does not let go of stalls the next."""
    method, transport = request.param
    words = [
        "protocol=fcgi",
        f"method={method}",
        "daemonize=false",
        "minspare=1",
        "maxspare=1",
        "maxchildren=1",
    ]
    with runner_in_tmp() as runner:
        if transport == "tcp":
            port = free_port()
            address: Address = ("127.0.0.1", port)
            runner.serve(*words, "host=127.0.0.1", f"port={port}", address=address)
        else:
            address = str(runner.tmp / "app.sock")
            runner.serve(*words, f"socket={address}", address=address)
        yield Served(method, transport, address)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes its side while ours stays open (within a bound)."""
    sock.settimeout(5.0)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


def test_worker_is_free_while_the_web_server_keeps_a_finished_connection(
    served: Served,
) -> None:
    """After a request without FCGI_KEEP_CONN the worker lets go of the connection at
    once: it no longer waits (up to 10 s) for the web server to close its side first."""
    with connect(served.address, RESPONSE_SECONDS) as held:
        response = fcgi_request(served.address, "GET", "/", sock=held)
        assert (response.status, response.protocol_status) == (200, 0)
        assert closed_by_server(held)
        # The one worker serves the next connection while `held` is still open.
        following = fcgi_request(served.address, "GET", "/", timeout=5.0)
        assert b"Served by runfcgi" in following.body


def test_long_names_and_values_reach_django_whole(served: Served) -> None:
    """Names and values of 128 bytes or more have four-byte lengths in FCGI_PARAMS; a
    request mixing them with short ones arrives as sent."""
    query = "q=" + "v" * 10_000
    cookie = "c" * 127 + "=" + "d" * 300
    response = fcgi_request(
        served.address,
        "GET",
        "/echo/",
        query=query,
        headers={"Cookie": cookie, "X-" + "N" * 200: "short"},
    )
    seen = response.json()
    assert seen["get"] == {"q": ["v" * 10_000]}
    assert seen["cookies"] == {"c" * 127: "d" * 300}
    assert seen["path"] == "/echo/"


def test_twenty_megabyte_download_arrives_whole(served: Served) -> None:
    """Closing right after the last send must not cut what the kernel still holds."""
    size = 20 * MB
    with connect(served.address, RESPONSE_SECONDS) as sock:
        response = fcgi_request(
            served.address, "GET", "/download/", query=f"size={size}", sock=sock
        )
        assert response.status == 200
        assert len(response.body) == size
        assert hashlib.sha256(response.body).digest() == hashlib.sha256(payload(size)).digest()
        assert closed_by_server(sock)


def test_small_download_read_late_arrives_whole(served: Served) -> None:
    """The server has closed before the web server reads a byte: the answer is all there."""
    size = 300_000
    with connect(served.address, RESPONSE_SECONDS) as sock:
        stream = fcgi_stream(1, "GET", "/download/", f"size={size}", b"", keep_conn=False)
        sock.sendall(stream)
        time.sleep(0.5)
        records = read_records(sock)
    stdout = b"".join(content for kind, content in records if kind == STDOUT)
    assert records[-1][0] == END_REQUEST
    assert stdout.endswith(payload(size))


@pytest.mark.parametrize("size", [0, 10, 5 * MB])
def test_unread_request_body_does_not_reset_the_response(served: Served, size: int) -> None:
    """A view that ignores a body: the rest is read and dropped before closing, so the
    web server still gets the whole response (closing over unread input resets it)."""
    with connect(served.address, RESPONSE_SECONDS) as sock:
        response = fcgi_request(
            served.address, "POST", "/ignore-body/", body=b"x" * size, sock=sock
        )
        assert (response.status, response.body) == (200, b"ignored\n")
        assert closed_by_server(sock)


def test_body_end_sent_after_a_pause(served: Served) -> None:
    """A web server may send the end of an empty body later than the parameters."""
    with connect(served.address, RESPONSE_SECONDS) as sock:
        stream = fcgi_stream(1, "GET", "/", "", b"", keep_conn=False)
        sock.sendall(stream[: -HEADER.size])
        time.sleep(0.3)
        sock.sendall(stream[-HEADER.size :])
        records = read_records(sock)
    assert records[-1][0] == END_REQUEST
    assert b"Served by runfcgi" in b"".join(c for k, c in records if k == STDOUT)


def test_worker_is_free_when_the_body_end_comes_after_the_response(served: Served) -> None:
    """The end of an empty body may reach the worker only after it has answered; once it
    has come the worker closes and serves the next connection, even if the web server
    keeps its side open (it waited 10 s for the web server to close first)."""
    stream = fcgi_stream(1, "GET", "/", "", b"", keep_conn=False)
    with connect(served.address, RESPONSE_SECONDS) as held:
        held.sendall(stream[: -HEADER.size])
        data = bytearray()
        while END_REQUEST not in [kind for kind, _ in parse_records(data)[0]]:
            chunk = held.recv(65536)
            assert chunk, "the connection closed before FCGI_END_REQUEST"
            data += chunk
        held.sendall(stream[-HEADER.size :])
        assert closed_by_server(held)
        following = fcgi_request(served.address, "GET", "/", timeout=5.0)
        assert b"Served by runfcgi" in following.body


def test_keep_conn_serves_requests_with_and_without_bodies(served: Served) -> None:
    """FCGI_KEEP_CONN: the connection stays open across requests, bodies read or not."""
    with connect(served.address, RESPONSE_SECONDS) as sock:
        for _ in range(2):
            echo = fcgi_request(
                served.address, "POST", "/echo/", body=b"y" * 100_000, sock=sock, keep_conn=True
            )
            assert echo.json()["body_length"] == 100_000
            ignored = fcgi_request(
                served.address,
                "POST",
                "/ignore-body/",
                body=b"z" * 70_000,
                sock=sock,
                keep_conn=True,
            )
            assert ignored.body == b"ignored\n"
            page = fcgi_request(served.address, "GET", "/", sock=sock, keep_conn=True)
            assert b"Served by runfcgi" in page.body
        last = fcgi_request(served.address, "GET", "/", sock=sock)
        assert last.status == 200
        assert closed_by_server(sock)


# Raw records, for exchanges the client in tests/support/clients.py does not make.

HEADER = struct.Struct("!BBHHBx")
BEGIN_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR = 1, 3, 4, 5, 6, 7


def record(kind: int, content: bytes, request_id: int = 1) -> bytes:
    padding = -len(content) % 8
    return HEADER.pack(1, kind, request_id, len(content), padding) + content + bytes(padding)


def pair(name: str, value: str) -> bytes:
    name_bytes, value_bytes = name.encode(), value.encode()
    assert max(len(name_bytes), len(value_bytes)) < 128
    return bytes([len(name_bytes), len(value_bytes)]) + name_bytes + value_bytes


def fcgi_stream(
    request_id: int, method: str, path: str, query: str, body: bytes, *, keep_conn: bool
) -> bytes:
    params = {
        "REQUEST_METHOD": method,
        "REQUEST_URI": f"{path}?{query}" if query else path,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "localhost",
        "CONTENT_LENGTH": str(len(body)),
    }
    begin = struct.pack("!HB5x", 1, 1 if keep_conn else 0)
    return b"".join(
        [
            record(BEGIN_REQUEST, begin, request_id),
            record(PARAMS, b"".join(pair(n, v) for n, v in params.items()), request_id),
            record(PARAMS, b"", request_id),
            *([record(STDIN, body, request_id)] if body else []),
            record(STDIN, b"", request_id),
        ]
    )


def read_records(sock: socket.socket) -> list[tuple[int, bytes]]:
    """Every record until FCGI_END_REQUEST, then the server's close."""
    data = bytearray()
    deadline = time.monotonic() + RESPONSE_SECONDS
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    records, end = parse_records(data)
    assert end == len(data), "the connection ended inside a record"
    return records


def parse_records(data: bytes | bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """(type, content) of each whole record in `data`, and where the last one ends."""
    records = []
    pos = 0
    while pos + HEADER.size <= len(data):
        _, kind, _, length, padding = HEADER.unpack_from(data, pos)
        start = pos + HEADER.size
        if start + length + padding > len(data):
            break
        records.append((kind, bytes(data[start : start + length])))
        pos = start + length + padding
    return records, pos


# wsgi.input reads the body as it arrives: the same answers as a file holding it.

BODY = b"first line\nsecond\n\nno newline at the end" * 3


class FeedingConnection:
    """Hands the request body to the stream in pieces, as records arrive; with `views`,
    as the connection does, views of what it read, some of them several at a time."""

    def __init__(self, pieces: list[bytes], *, views: bool = False) -> None:
        self.pieces = pieces
        self.views = views
        self.stream = request.Input(self)  # type: ignore[arg-type]

    def read_input(self) -> None:
        if not self.pieces:
            self.stream.add_data(b"")
        elif not self.views:
            self.stream.add_data(self.pieces.pop(0))
        else:
            self.stream.add_data(memoryview(b"\0" + self.pieces.pop(0))[1:])
            more = [memoryview(piece) for piece in self.pieces[:2]]
            del self.pieces[:2]
            self.stream.add_pieces(more, sum(map(len, more)))


def pieces_of(size: int) -> list[bytes]:
    return [BODY[i : i + size] for i in range(0, len(BODY), size)]


@pytest.mark.parametrize("piece", [1, 3, 7, 11, 64, len(BODY)])
@pytest.mark.parametrize(
    "calls",
    [
        [("read", -1)],
        [("read", 5), ("read", 0), ("read", 17), ("read", None)],
        [("readline", -1)] * 6,
        [("readline", 4), ("readline", 20), ("readline", 0), ("readline", None), ("read", 3)],
        [("read", 12), ("readline", -1), ("readlines", -1)],
        [("readlines", 15), ("read", -1)],
    ],
)
@pytest.mark.parametrize("views", [False, True], ids=["bytes", "views"])
def test_body_reads_match_a_file(
    piece: int, calls: list[tuple[str, int | None]], views: bool
) -> None:
    conn = FeedingConnection(pieces_of(piece), views=views)
    reference = io.BytesIO(BODY)
    for name, size in calls:
        got = getattr(conn.stream, name)(size)
        assert got == getattr(reference, name)(size), (name, size)
        # bytes, as WSGI asks: never a view of what the connection read.
        assert (
            {type(line) for line in got} <= {bytes} if name == "readlines" else type(got) is bytes
        )


@pytest.mark.parametrize("views", [False, True], ids=["bytes", "views"])
def test_body_lines_by_iteration(views: bool) -> None:
    stream = FeedingConnection(pieces_of(5), views=views).stream
    assert list(stream) == list(io.BytesIO(BODY))
    assert all(type(line) is bytes for line in FeedingConnection(pieces_of(5), views=views).stream)


def missing_file_app(environ: dict[str, object], start_response: object) -> list[bytes]:
    raise FileNotFoundError("/srv/data/report.csv")


def test_an_applications_oserror_gets_the_error_page(short_tmp: Path) -> None:
    """An OSError from the application (a missing file) is the application's failure:
    the web server gets the 500 page and the traceback, not a dropped connection."""
    server = FastCGI(missing_file_app, multithreaded=True, multiprocess=False)
    path = str(short_tmp / "app.sock")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(path)
        listening.listen(1)
        listening.settimeout(RESPONSE_SECONDS)
        with connect(path, RESPONSE_SECONDS) as client:
            client.sendall(fcgi_stream(1, "GET", "/", "", b"", keep_conn=False))
            accepted, addr = listening.accept()
            with accepted:
                server.connection(accepted, addr).run()
            records = read_records(client)
    stdout = b"".join(content for kind, content in records if kind == STDOUT)
    stderr = b"".join(content for kind, content in records if kind == STDERR)
    assert stdout.startswith(b"Status: 500 Internal Server Error\r\n")
    assert b"FileNotFoundError: /srv/data/report.csv" in stderr
    assert records[-1][0] == END_REQUEST


# A body record that runs past what one read brings is handed to wsgi.input in pieces.

ODD_BODY = b"".join(b"line %d of the body\n" % n + b"." * (n % 37) for n in range(60_000))
"""About 2.5 MB of lines of many lengths, a newline in most records."""
ODD_RECORDS = [1, 7, 13, 8, 1000, 4095, 32768, 65_529, 65_535, 9, 32_767]
"""Record content sizes, with padding, from one byte to more than one read holds."""
CALLS = [("readline", -1), ("read", 5), ("readline", 100), ("read", 70_000), ("readline", 3)]


def odd_records(body: bytes) -> list[bytes]:
    """`body` as FCGI_STDIN records of the ODD_RECORDS sizes in turn, then its end."""
    records = []
    pos = 0
    for size in itertools.cycle(ODD_RECORDS):
        if pos >= len(body):
            break
        records.append(record(STDIN, body[pos : pos + size]))
        pos += size
    return [*records, record(STDIN, b"")]


def serve_one(
    app: Callable[..., list[bytes]],
    stream: bytes,
    piece: int,
    bounds: Bounds | None = None,
    *,
    close: bool = False,
) -> list[tuple[int, bytes]]:
    """Serve one request on a real connection whose web server sends `stream` in pieces
    of `piece` bytes, each on its own, so that reads end inside records and headers
    (then, with `close`, closes its side); the records it got back."""
    server = FastCGI(app, multithreaded=False, multiprocess=True, bounds=bounds)
    ours, theirs = socket.socketpair()
    got: list[list[tuple[int, bytes]]] = []

    def web_server() -> None:
        with theirs:
            theirs.settimeout(RESPONSE_SECONDS)
            for start in range(0, len(stream), piece):
                theirs.sendall(stream[start : start + piece])
                time.sleep(0.0002)
            if close:
                theirs.shutdown(socket.SHUT_WR)
            got.append(read_records(theirs))

    sender = threading.Thread(target=web_server)
    sender.start()
    try:
        with ours:
            server.connection(ours, "").run()
    finally:
        sender.join(RESPONSE_SECONDS)
    return got[0] if got else []


@pytest.mark.parametrize("piece", [4093, 65_536 + 5, 300_000])
def test_a_body_in_odd_records_and_reads_reaches_the_application_whole(piece: int) -> None:
    """Records of odd sizes (with padding) cut anywhere by the reads: readline() and
    read(n) see the body as a file holding it would give it, then all the rest."""
    seen: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        stream = environ["wsgi.input"]
        for name, size in CALLS * 40:
            seen.append(getattr(stream, name)(size))
        seen.append(stream.read())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"read"]

    head = fcgi_stream(1, "POST", "/", "", b"", keep_conn=False)[: -HEADER.size]
    records = serve_one(app, head + b"".join(odd_records(ODD_BODY)), piece)
    assert records[-1][0] == END_REQUEST
    reference = io.BytesIO(ODD_BODY)
    expected = [getattr(reference, name)(size) for name, size in CALLS * 40]
    assert seen[:-1] == expected
    assert seen[-1] == reference.read()
    assert b"".join(seen) == ODD_BODY


def test_a_body_that_stalls_inside_a_record_fails_the_read() -> None:
    """The web server stops in the middle of a body record: after readtimeout the
    application's read raises InputError, and no response goes out."""
    errors: list[OSError] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        try:
            environ["wsgi.input"].read(60_000)
        except OSError as exc:
            errors.append(exc)
        start_response("200 OK", [])
        return [b"read"]

    head = fcgi_stream(1, "POST", "/", "", b"", keep_conn=False)[: -HEADER.size]
    started = time.monotonic()
    records = serve_one(
        app, head + record(STDIN, b"x" * 60_000)[:30_000], 4093, Bounds(readtimeout=0.5)
    )
    assert time.monotonic() - started < 5
    assert [str(exc) for exc in errors] == [
        "FastCGI request input failed: the request stalled: nothing more came"
    ]
    assert END_REQUEST not in [kind for kind, _ in records]


def test_a_body_that_ends_inside_a_record_is_a_protocol_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The web server closes in the middle of a body record's padding: the read fails,
    and the connection is logged as broken."""
    errors: list[OSError] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        try:
            environ["wsgi.input"].read()
        except OSError as exc:
            errors.append(exc)
        start_response("200 OK", [])
        return [b"read"]

    head = fcgi_stream(1, "POST", "/", "", b"", keep_conn=False)[: -HEADER.size]
    body = record(STDIN, b"y" * 65_529)  # seven bytes of padding
    serve_one(app, head + body[:-3], 4093, close=True)
    assert [str(exc) for exc in errors] == [
        "FastCGI request input failed: connection closed inside a record"
    ]
    assert "connection closed inside a record" in caplog.text
