"""The test clients against scripted servers: what they send, parse, and when they give up."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from flup.server import fcgi_base

from tests.support.clients import (
    ProtocolError,
    ajp_request,
    fcgi_request,
    raw_exchange,
    scgi_request,
)


@contextlib.contextmanager
def scripted_server(handler: Callable[[socket.socket], None]) -> Iterator[str]:
    """A unix socket whose first connection is handed to `handler`, then closed."""
    tempdir = tempfile.mkdtemp(dir="/tmp")
    path = os.path.join(tempdir, "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    failures: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            try:
                handler(conn)
            except BaseException as exc:
                failures.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        thread.join(5)
        listener.close()
        shutil.rmtree(tempdir)
    assert not thread.is_alive()
    assert failures == []


def fcgi_out(kind: int, content: bytes) -> bytes:
    return struct.pack("!BBHHBx", 1, kind, 1, len(content), 0) + content


def test_fcgi_request_records_and_response_parsing() -> None:
    """Records as flup reads them: long name-value lengths, STDIN of at most 65535 bytes."""
    received: dict[str, object] = {}

    def handler(conn: socket.socket) -> None:
        params = {}
        stdin_sizes = []
        while True:
            record = fcgi_base.Record()
            record.read(conn)
            if record.type == fcgi_base.FCGI_PARAMS and record.contentLength:
                pos = 0
                while pos < record.contentLength:
                    pos, (name, value) = fcgi_base.decode_pair(record.contentData, pos)
                    params[name.decode()] = value
            elif record.type == fcgi_base.FCGI_STDIN:
                stdin_sizes.append(record.contentLength)
                if not record.contentLength:
                    break
        received.update(params=params, stdin_sizes=stdin_sizes)
        head = b"Status: 302 Found\r\nLocation: /x\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
        conn.sendall(
            fcgi_out(6, head[:10])
            + fcgi_out(6, head[10:] + b"bo")
            + fcgi_out(7, b"warning\n")
            + fcgi_out(6, b"dy")
            + fcgi_out(6, b"")
            + fcgi_out(3, struct.pack("!LB3x", 0, 0))
        )

    with scripted_server(handler) as address:
        response = fcgi_request(
            address,
            "POST",
            "/caf%C3%A9/x",
            query="a=%20",
            body=b"z" * 150_000,
            headers=[("Cookie", "a=1"), ("Cookie", "b=2"), ("X-Long", "v" * 300)],
        )
    params = received["params"]
    assert isinstance(params, dict)
    assert params["PATH_INFO"] == "/café/x".encode()
    assert params["REQUEST_URI"] == b"/caf%C3%A9/x?a=%20"
    assert params["HTTP_COOKIE"] == b"a=1; b=2"
    assert params["HTTP_X_LONG"] == b"v" * 300
    assert params["CONTENT_LENGTH"] == b"150000"
    assert received["stdin_sizes"] == [65535, 65535, 150_000 - 2 * 65535, 0]
    assert (response.status, response.reason, response.body) == (302, "Found", b"body")
    assert response.headers == [("Location", "/x"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    assert response.stderr == b"warning\n"
    assert [size for _, size in response.chunk_times] == [2, 2]


def test_scgi_netstring_starts_with_content_length() -> None:
    received = []

    def handler(conn: socket.socket) -> None:
        with conn.makefile("rb") as rfile:
            size = b""
            while (char := rfile.read(1)) != b":":
                size += char
            received.append(rfile.read(int(size) + 1))
        conn.sendall(b"Content-Type: text/plain\n\nhello")

    with scripted_server(handler) as address:
        response = scgi_request(address)
    strings = received[0][:-1].split(b"\0")
    assert strings[:2] == [b"CONTENT_LENGTH", b"0"]
    assert dict(zip(strings[:-1:2], strings[1::2], strict=True))[b"SCGI"] == b"1"
    assert (response.status, response.body) == (200, b"hello")


@pytest.mark.parametrize("request_function", [fcgi_request, scgi_request, ajp_request])
def test_silent_server_is_a_timeout(request_function: Callable[..., object]) -> None:
    def handler(conn: socket.socket) -> None:
        time.sleep(0.6)

    with scripted_server(handler) as address:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            request_function(address, timeout=0.3)
        assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("request_function", [fcgi_request, scgi_request, ajp_request])
def test_early_close_is_a_protocol_error(request_function: Callable[..., object]) -> None:
    def handler(conn: socket.socket) -> None:
        conn.recv(10)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1 << 20)

    with scripted_server(handler) as address, pytest.raises(ProtocolError):
        request_function(address, timeout=5)


def test_raw_exchange_returns_everything_until_eof() -> None:
    def handler(conn: socket.socket) -> None:
        assert conn.recv(100) == b"hello"
        assert conn.recv(100) == b""
        conn.sendall(b"bye")

    with scripted_server(handler) as address:
        assert raw_exchange(address, b"hello") == b"bye"
