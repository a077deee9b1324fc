"""AJP request bodies as the two front ends really frame them, byte for byte.

Apache's mod_proxy_ajp (and Tomcat, mod_jk, the AJP 1.3 specification) put a 2-byte data
length before the bytes of each body packet; a chunked request body comes with no
Content-Length, only when the container asks for it with GET_BODY_CHUNK, and ends with a
packet holding no data. lighttpd 1.4's mod_ajp13 always sends Content-Length, but its body
packets carry the bytes alone, without the 2-byte length. The container here plays the
front end's part over a real socket, exactly as each of them was seen to on the wire.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from django_runfcgi import protocols
from tests.support.clients import ajp_request, connect
from tests.support.harness import Harness

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

SPEC_MAX = 8186  # data bytes in an 8192-byte packet: header 4, data length 2
LIGHTTPD_MAX = 8188  # mod_ajp13 leaves out the data length
GET_BODY_CHUNK = 6
SEND_HEADERS = 4
SEND_BODY_CHUNK = 3
END_RESPONSE = 5


def body_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Reads the body the way Django does: CONTENT_LENGTH bytes, no more."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    rest = environ["wsgi.input"].read()
    data = {
        "content_length": environ.get("CONTENT_LENGTH"),
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "rest": len(rest),
    }
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(data).encode()]


def ignoring_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def packet(data: bytes) -> bytes:
    return b"\x12\x34" + struct.pack(">H", len(data)) + data


def spec(chunk: bytes) -> bytes:
    """A body packet as Apache sends it; an empty chunk is Apache's end of a chunked body."""
    return packet(struct.pack(">H", len(chunk)) + chunk)


def raw(chunk: bytes) -> bytes:
    """A body packet as lighttpd's mod_ajp13 sends it; empty, it is lighttpd's empty packet."""
    return packet(chunk)


def string(value: str) -> bytes:
    data = value.encode("latin-1")
    return struct.pack(">H", len(data)) + data + b"\0"


def forward(headers: dict[str, str], method: int = 4) -> bytes:
    """FORWARD_REQUEST for /echo/ (method 4 is POST), headers sent by name."""
    return packet(
        bytes([2, method])
        + string("HTTP/1.1")
        + string("/echo/")
        + string("127.0.0.1")
        + b"\xff\xff"
        + string("localhost")
        + struct.pack(">HBH", 80, 0, len(headers) + 1)
        + string("Host")
        + string("localhost")
        + b"".join(string(name) + string(value) for name, value in headers.items())
        + b"\xff"
    )


@dataclass
class Answer:
    status: int = 0
    body: bytes = b""
    asks: list[int] = field(default_factory=list)
    reuse: bool | None = None
    closed: bool = False

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


def recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    """None once the server closed the connection (a reset too: it may close with our
    bytes unread)."""
    data = b""
    while len(data) < size:
        try:
            piece = sock.recv(size - len(data))
        except ConnectionResetError:
            return None
        if not piece:
            return None
        data += piece
    return data


def exchange(
    sock: socket.socket,
    first: list[bytes],
    reply: Callable[[int], list[bytes]],
    *,
    hang_up: bool = False,
) -> Answer:
    """Send `first` (then stop sending if `hang_up`); answer each GET_BODY_CHUNK with
    reply(requested length) until END_RESPONSE or until the server closes the connection."""
    sock.sendall(b"".join(first))
    if hang_up:
        sock.shutdown(socket.SHUT_WR)
    answer = Answer()
    while True:
        header = recv_exactly(sock, 4)
        if header is None:
            answer.closed = True
            return answer
        assert header[:2] == b"AB", header
        (length,) = struct.unpack(">H", header[2:])
        data = recv_exactly(sock, length)
        assert data is not None
        if data[0] == GET_BODY_CHUNK:
            (wanted,) = struct.unpack(">H", data[1:3])
            answer.asks.append(wanted)
            sock.sendall(b"".join(reply(wanted)))
        elif data[0] == SEND_HEADERS:
            (answer.status,) = struct.unpack(">H", data[1:3])
        elif data[0] == SEND_BODY_CHUNK:
            (size,) = struct.unpack(">H", data[1:3])
            answer.body += data[3 : 3 + size]
        elif data[0] == END_RESPONSE:
            answer.reuse = data[1:2] == b"\x01"
            return answer


class Apache:
    """mod_proxy_ajp: a body with a length starts right after the request, the rest and
    a chunked body go one packet per GET_BODY_CHUNK, whatever length was asked."""

    def __init__(self, body: bytes, *, chunked: bool = False, pieces: int = SPEC_MAX) -> None:
        self.body = body
        self.chunked = chunked
        self.pieces = pieces
        self.sent = 0

    def request(self, headers: dict[str, str] | None = None) -> list[bytes]:
        headers = dict(headers or {})
        if self.chunked:
            return [forward({"Transfer-Encoding": "chunked", **headers})]
        first = [forward({"Content-Length": str(len(self.body)), **headers})]
        if self.body:
            first += self.reply(SPEC_MAX)
        return first

    def reply(self, wanted: int) -> list[bytes]:
        chunk = self.body[self.sent : self.sent + self.pieces]
        self.sent += len(chunk)
        return [spec(chunk)]


class Lighttpd:
    """mod_ajp13: Content-Length always, the first packet unasked (an empty one for an
    empty body), then packets of up to 8188 bytes adding up to the length asked for."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.sent = 0

    def request(self) -> list[bytes]:
        return [forward({"Content-Length": str(len(self.body))}), *self.reply(LIGHTTPD_MAX)]

    def reply(self, wanted: int) -> list[bytes]:
        if not self.body:
            return [raw(b"")]
        packets = []
        end = min(self.sent + wanted, len(self.body))
        while self.sent < end:
            chunk = self.body[self.sent : min(end, self.sent + LIGHTTPD_MAX)]
            self.sent += len(chunk)
            packets.append(raw(chunk))
        return packets


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.fixture
def serve() -> Iterator[Callable[..., Harness]]:
    """serve(app) -> runfcgi's AJP server, in this process, on a loopback port."""
    harnesses: list[Harness] = []

    def start(app: Any = body_app) -> Harness:
        server = protocols.AJP(app, multithreaded=True, multiprocess=False)
        harness = Harness(server, server.connection, tcp=True)
        harnesses.append(harness)
        return harness

    yield start
    for harness in harnesses:
        assert harness.close(), "a connection was still running at the end of the test"
        assert harness.errors == []


def problems(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.WARNING]


# Apache: chunked request bodies


@pytest.mark.parametrize(
    "size", [0, 1, SPEC_MAX, SPEC_MAX + 1, 3 * 1024 * 1024 + 5], ids=lambda n: f"{n}B"
)
def test_apache_chunked_body_is_read_until_its_empty_packet(
    serve: Callable[..., Harness], size: int
) -> None:
    """The body is asked for packet by packet until Apache's empty one, then Django gets
    it whole with its length in CONTENT_LENGTH (it reads no further than that)."""
    harness = serve()
    body = os.urandom(size)
    apache = Apache(body, chunked=True)
    with connect(harness.address, timeout=10) as sock:
        answer = exchange(sock, apache.request(), apache.reply)
        assert answer.status == 200, answer
        assert answer.json() == {
            "content_length": str(size),
            "length": size,
            "sha256": digest(body),
            "rest": 0,
        }
        # One ask per packet and none after the empty one: Apache fails a request
        # whose container asks for more after the end.
        assert len(answer.asks) == -(-size // SPEC_MAX) + 1
        assert all(0 < wanted <= SPEC_MAX for wanted in answer.asks)
        assert answer.reuse
        assert ajp_request(harness.address, sock=sock, timeout=5).status == 200


def test_apache_chunked_body_in_small_pieces(serve: Callable[..., Harness]) -> None:
    """Apache passes on each piece as the client's chunks arrive: packets of any size."""
    harness = serve()
    body = os.urandom(100_000)
    apache = Apache(body, chunked=True, pieces=777)
    with connect(harness.address, timeout=10) as sock:
        answer = exchange(sock, apache.request(), apache.reply)
    assert answer.json()["sha256"] == digest(body)


def test_chunked_body_ended_by_a_bare_empty_packet(serve: Callable[..., Harness]) -> None:
    """A packet with no data at all ends a chunked body too (tests/support/clients.py sends it)."""
    harness = serve()
    body = b"hello, chunks"
    with connect(harness.address, timeout=10) as sock:
        pieces = iter([spec(body), raw(b"")])
        answer = exchange(
            sock, [forward({"Transfer-Encoding": "chunked"})], lambda n: [next(pieces)]
        )
    assert answer.json()["sha256"] == digest(body)


def test_chunked_body_ignored_by_the_app_still_leaves_the_connection_usable(
    serve: Callable[..., Harness],
) -> None:
    harness = serve(ignoring_app)
    apache = Apache(os.urandom(50_000), chunked=True)
    with connect(harness.address, timeout=10) as sock:
        assert exchange(sock, apache.request(), apache.reply).body == b"ok"
        assert ajp_request(harness.address, sock=sock, timeout=5).body == b"ok"


@pytest.mark.parametrize("size", [1, SPEC_MAX, 100_000])
def test_apache_body_with_a_length(serve: Callable[..., Harness], size: int) -> None:
    harness = serve()
    body = os.urandom(size)
    apache = Apache(body)
    with connect(harness.address, timeout=10) as sock:
        answer = exchange(sock, apache.request(), apache.reply)
        assert answer.json()["sha256"] == digest(body)
        assert all(0 < wanted <= SPEC_MAX for wanted in answer.asks)
        assert ajp_request(harness.address, sock=sock, timeout=5).status == 200


def test_unread_body_with_a_length_is_drained(serve: Callable[..., Harness]) -> None:
    """A view that ignores the body leaves no body packet for the next request to trip on."""
    harness = serve(ignoring_app)
    apache = Apache(os.urandom(50_000))
    with connect(harness.address, timeout=10) as sock:
        assert exchange(sock, apache.request(), apache.reply).body == b"ok"
        assert ajp_request(harness.address, sock=sock, timeout=5).body == b"ok"


# lighttpd: body packets without the data length


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\0\0ab", id="starts-with-a-zero-length"),
        pytest.param(b"\xff\xffab", id="starts-with-a-huge-length"),
        pytest.param(b"x", id="1B"),
        pytest.param(b"\0\0", id="two-zero-bytes"),
        pytest.param(bytes(range(256)) * 32, id="8192B"),
        pytest.param(os.urandom(LIGHTTPD_MAX), id="one-full-packet"),
        pytest.param(os.urandom(1024 * 1024 + 3), id="1MB"),
    ],
)
def test_lighttpd_body_packets_without_data_length(
    serve: Callable[..., Harness], body: bytes
) -> None:
    harness = serve()
    lighttpd = Lighttpd(body)
    with connect(harness.address, timeout=10) as sock:
        answer = exchange(sock, lighttpd.request(), lighttpd.reply)
    assert answer.status == 200, answer
    assert answer.json()["sha256"] == digest(body)
    # Never more than was left: lighttpd does not answer an ask past the body's end.
    assert sum(answer.asks) == max(0, len(body) - LIGHTTPD_MAX)


class SplitWrites:
    """Sends each packet as lighttpd does: header and data in two writes, with Nagle on."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def sendall(self, data: bytes) -> None:
        while data:
            (size,) = struct.unpack(">H", data[2:4])
            self.sock.sendall(data[:4])
            self.sock.sendall(data[4 : 4 + size])
            data = data[4 + size :]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux's TCP_QUICKACK")
def test_lighttpd_body_is_not_slowed_by_delayed_acknowledgements(
    serve: Callable[..., Harness],
) -> None:
    """The data of each packet waits for the header's acknowledgement (Nagle): with the
    kernel delaying it, 2 MB took 11 s."""
    harness = serve()
    body = os.urandom(2 * 1024 * 1024)
    lighttpd = Lighttpd(body)
    with connect(harness.address, timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        started = time.monotonic()
        answer = exchange(SplitWrites(sock), lighttpd.request(), lighttpd.reply)  # type: ignore[arg-type]
        elapsed = time.monotonic() - started
    assert answer.json()["sha256"] == digest(body)
    assert elapsed < 2.0


def test_lighttpd_empty_body(serve: Callable[..., Harness]) -> None:
    """The empty packet after a request without a body is not part of the next request."""
    harness = serve()
    lighttpd = Lighttpd(b"")
    with connect(harness.address, timeout=10) as sock:
        answer = exchange(sock, lighttpd.request(), lighttpd.reply)
        assert answer.json()["length"] == 0
        assert answer.asks == []
        assert ajp_request(harness.address, sock=sock, timeout=5).status == 200


def test_framing_is_found_again_for_each_request(serve: Callable[..., Harness]) -> None:
    harness = serve()
    bodies = [os.urandom(20_000), b"\0\x10" + os.urandom(30_000), os.urandom(5)]
    with connect(harness.address, timeout=10) as sock:
        for index, body in enumerate(bodies * 2):
            front: Apache | Lighttpd = Lighttpd(body) if index % 2 else Apache(body)
            answer = exchange(sock, front.request(), front.reply)
            assert answer.json()["sha256"] == digest(body)


# Malformed body packets: one log line, the connection closed, nothing reaches the app

CUT_SHORT = b"\x12\x34\x00\x0c\x00\x0a01"  # then the front end hangs up

MALFORMED = [
    # (name, the request and its first body packets, answers to GET_BODY_CHUNK)
    (
        "wrong-prefix",
        [forward({"Content-Length": "10"}), b"AB\x00\x0c\x00\x0a0123456789"],
        [],
    ),
    (
        "data-length-overruns-packet",
        [forward({"Content-Length": "20000"}), spec(b"x" * SPEC_MAX)],
        [packet(b"\x01\x00abc")],
    ),
    (
        "data-length-cut-short",
        [forward({"Content-Length": "20000"}), spec(b"x" * SPEC_MAX)],
        [packet(b"\x00")],
    ),
    (
        "data-length-short-of-packet",
        [forward({"Content-Length": "20000"}), spec(b"x" * SPEC_MAX)],
        [packet(b"\x00\x02abcdef")],
    ),
    ("longer-than-content-length", [forward({"Content-Length": "3"}), raw(b"abcd")], []),
    (
        "longer-than-content-length-later",
        [forward({"Content-Length": "9000"}), raw(b"a" * LIGHTTPD_MAX)],
        [raw(b"b" * 900)],
    ),
    ("ends-before-content-length", [forward({"Content-Length": "10"}), raw(b"")], []),
    (
        "ends-before-content-length-later",
        [forward({"Content-Length": "9000"}), spec(b"a" * 100)],
        [spec(b"")],
    ),
    ("content-length-not-a-number", [forward({"Content-Length": "ten"})], []),
    ("content-length-negative", [forward({"Content-Length": "-1"})], []),
    (
        "chunked-overruns-packet",
        [forward({"Transfer-Encoding": "chunked"})],
        [spec(b"abc"), packet(b"\x00\x09abc")],
    ),
    ("closed-mid-body", [forward({"Content-Length": "10"}), CUT_SHORT], []),
]


@pytest.mark.parametrize(
    ("first", "replies"),
    [pytest.param(first, replies, id=name) for name, first, replies in MALFORMED],
)
def test_malformed_body_closes_with_one_log_line(
    serve: Callable[..., Harness],
    caplog: pytest.LogCaptureFixture,
    first: list[bytes],
    replies: list[bytes],
) -> None:
    ran: list[bool] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        ran.append(True)
        return body_app(environ, start_response)

    harness = serve(app)
    answers = iter(replies)
    with connect(harness.address, timeout=10) as sock:
        answer = exchange(
            sock, first, lambda wanted: [next(answers)], hang_up=first[-1] == CUT_SHORT
        )
    assert answer.closed
    assert answer.status == 0
    assert harness.connections_done(5)
    [record] = problems(caplog)
    assert record.exc_info is None
    assert record.getMessage().startswith("AJP protocol error from 127.0.0.1:"), record
    assert ran == []
    assert ajp_request(harness.address, "POST", body=b"fine", timeout=5).status == 200
