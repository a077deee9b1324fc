"""FastCGI, SCGI and AJP 1.3 clients that play the web server's part in tests.

flup's own clients do not run on Python 3. These send what a well-configured front end
sends (nginx for FastCGI and SCGI, Apache mod_proxy_ajp for AJP), send and receive at the
same time so a large body and a large response cannot deadlock, stream request bodies
without copying them, and give up at a deadline instead of hanging.
"""

from __future__ import annotations

import http
import json
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote_to_bytes

from tests.support.net import Address

Headers = Mapping[str, str] | Iterable[tuple[str, str]]
Params = Mapping[str, str | bytes | None]
Body = bytes | Iterable[bytes]

FCGI_BEGIN_REQUEST = 1
FCGI_END_REQUEST = 3
FCGI_PARAMS = 4
FCGI_STDIN = 5
FCGI_STDOUT = 6
FCGI_STDERR = 7
FCGI_GET_VALUES = 9
FCGI_GET_VALUES_RESULT = 10
FCGI_RESPONDER = 1
FCGI_KEEP_CONN = 1
FCGI_MAX_CONTENT = 65535
FCGI_HEADER = struct.Struct("!BBHHBx")

AJP_MAX_BODY_CHUNK = 8186  # 8192-byte packet minus the 4-byte header and the 2-byte length
AJP_SEND_BODY_CHUNK = 3
AJP_SEND_HEADERS = 4
AJP_END_RESPONSE = 5
AJP_GET_BODY_CHUNK = 6
AJP_METHODS = {
    name: code
    for code, name in enumerate(
        [
            "OPTIONS",
            "GET",
            "HEAD",
            "POST",
            "PUT",
            "DELETE",
            "TRACE",
            "PROPFIND",
            "PROPPATCH",
            "MKCOL",
            "COPY",
            "MOVE",
            "LOCK",
            "UNLOCK",
            "ACL",
            "REPORT",
            "VERSION-CONTROL",
            "CHECKIN",
            "CHECKOUT",
            "UNCHECKOUT",
            "SEARCH",
            "MKWORKSPACE",
            "UPDATE",
            "LABEL",
            "MERGE",
            "BASELINE-CONTROL",
            "MKACTIVITY",
        ],
        start=1,
    )
}
AJP_STORED_METHOD = 0xFF
"""The method code Apache sends for a method outside the table, such as PATCH."""
AJP_ATTRIBUTE_SECRET = 0x0C
AJP_ATTRIBUTE_STORED_METHOD = 0x0D
AJP_REQUEST_HEADERS = {
    name: 0xA000 + code
    for code, name in enumerate(
        [
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "authorization",
            "connection",
            "content-type",
            "content-length",
            "cookie",
            "cookie2",
            "host",
            "pragma",
            "referer",
            "user-agent",
        ],
        start=1,
    )
}
AJP_RESPONSE_HEADERS = {
    0xA000 + code: name
    for code, name in enumerate(
        [
            "Content-Type",
            "Content-Language",
            "Content-Length",
            "Date",
            "Last-Modified",
            "Location",
            "Set-Cookie",
            "Set-Cookie2",
            "Servlet-Engine",
            "Status",
            "WWW-Authenticate",
        ],
        start=1,
    )
}


class ProtocolError(Exception):
    """The server broke the protocol or closed the connection before the response was complete."""


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    chunk_times: list[tuple[float, int]]
    """When each piece of the body arrived (time.monotonic()) and its size: shows streaming."""
    stderr: bytes = b""
    """FastCGI FCGI_STDERR output."""
    reuse: bool = False
    """AJP END_RESPONSE: the server will take another request on this connection."""
    app_status: int = 0
    protocol_status: int = 0
    """FastCGI END_REQUEST application and protocol status."""

    def header(self, name: str) -> str | None:
        """The first header called `name` (any case), or None."""
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), None)

    def json(self) -> Any:
        return json.loads(self.body)


def connect(address: Address, timeout: float = 30.0) -> socket.socket:
    """A connected socket: unix path, or (host, port) for IPv4 or IPv6."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection(address, timeout)


class _BodyReader:
    """Hands out a request body in pieces, from bytes (without copying it) or an iterable."""

    def __init__(self, body: Body) -> None:
        if isinstance(body, (bytes, bytearray, memoryview)):
            self._view = memoryview(body).cast("B")
            self._pieces: Iterator[bytes] = iter(())
        else:
            self._view = memoryview(b"")
            self._pieces = iter(body)

    def read(self, size: int) -> bytes:
        """Up to `size` bytes; b"" once the body is exhausted."""
        while not self._view:
            piece = next(self._pieces, None)
            if piece is None:
                return b""
            self._view = memoryview(piece).cast("B")
        data = bytes(self._view[:size])
        self._view = self._view[size:]
        return data


def _content_length(body: Body, content_length: int | None) -> int:
    if content_length is not None:
        return content_length
    if isinstance(body, (bytes, bytearray, memoryview)):
        return len(body)
    raise ValueError("pass content_length= with an iterable body")


class _Exchange:
    """One socket until a deadline: sends queued request bytes while reading the response."""

    def __init__(self, sock: socket.socket, address: Address, timeout: float) -> None:
        self._sock = sock
        self._address = address
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._sources: deque[Iterator[bytes]] = deque()
        self._pending = memoryview(b"")
        self.send_error: OSError | None = None
        self._saved_timeout = sock.gettimeout()
        sock.setblocking(False)

    def __enter__(self) -> _Exchange:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sock.fileno() != -1:
            self._sock.settimeout(self._saved_timeout)

    def send(self, chunks: Iterable[bytes]) -> None:
        """Queue bytes to send; an iterator is drawn from only as the socket takes data."""
        self._sources.append(iter(chunks))

    def _has_pending(self) -> bool:
        while not self._pending and self._sources and self.send_error is None:
            chunk = next(self._sources[0], None)
            if chunk is None:
                self._sources.popleft()
            else:
                self._pending = memoryview(chunk).cast("B")
        return bool(self._pending) and self.send_error is None

    def _remaining(self) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete answer from {self._address!r} in {self._timeout} s")
        return remaining

    def _send_some(self) -> None:
        try:
            sent = self._sock.send(self._pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self.send_error = exc
            self._pending = memoryview(b"")
            return
        self._pending = self._pending[sent:]

    def receive(self) -> bytes:
        """The next bytes from the server (b"" at EOF); queued bytes go out meanwhile."""
        while True:
            writing = self._has_pending()
            readable, writable, _ = select.select(
                [self._sock], [self._sock] if writing else [], [], self._remaining()
            )
            if writable:
                self._send_some()
            if readable:
                try:
                    return self._sock.recv(262144)
                except BlockingIOError:
                    continue
                except ConnectionResetError as exc:
                    raise ProtocolError(f"{self._address!r} reset the connection") from exc

    def flush(self) -> None:
        """Send everything still queued, e.g. the part of a body the application did not read."""
        while self._has_pending():
            _, writable, _ = select.select([], [self._sock], [], self._remaining())
            if writable:
                self._send_some()
        if self.send_error is not None:
            raise ProtocolError(f"sending to {self._address!r} failed: {self.send_error}")


class _CgiResponse:
    """Parses a CGI response (FastCGI FCGI_STDOUT, SCGI) as it arrives."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._header_done = False
        self.status = 200
        self.reason = "OK"
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.chunk_times: list[tuple[float, int]] = []

    def feed(self, data: bytes) -> None:
        if self._header_done:
            self._add_body(data)
            return
        self._head += data
        ends = [
            (index, len(sep))
            for sep in (b"\r\n\r\n", b"\n\n")
            if (index := self._head.find(sep)) != -1
        ]
        if not ends:
            return
        end, sep_len = min(ends)
        self._parse_head(bytes(self._head[:end]))
        self._header_done = True
        self._add_body(bytes(self._head[end + sep_len :]))
        self._head.clear()

    def _add_body(self, data: bytes) -> None:
        if data:
            self.body.append(data)
            self.chunk_times.append((time.monotonic(), len(data)))

    def _parse_head(self, head: bytes) -> None:
        for raw_line in head.split(b"\n"):
            line = raw_line.rstrip(b"\r").decode("latin-1")
            name, colon, value = line.partition(":")
            if not colon:
                raise ProtocolError(f"response header line without a colon: {line!r}")
            name, value = name.strip(), value.strip()
            if name.lower() == "status":
                code, _, reason = value.partition(" ")
                self.status = int(code)
                self.reason = reason or _reason(self.status)
            else:
                self.headers.append((name, value))

    def response(self, **extra: Any) -> Response:
        if not self._header_done:
            raise ProtocolError(f"response ended inside its headers: {bytes(self._head)[:200]!r}")
        return Response(
            self.status, self.reason, self.headers, b"".join(self.body), self.chunk_times, **extra
        )


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _header_items(headers: Headers) -> list[tuple[str, str]]:
    return list(headers.items() if isinstance(headers, Mapping) else headers)


def _cgi_params(
    *,
    method: str,
    path: str,
    query: str,
    headers: Headers,
    script_name: str,
    content_length: int,
    params: Params | None,
    protocol_params: Mapping[str, bytes] | None = None,
) -> dict[str, bytes]:
    """CGI params as nginx sends them: PATH_INFO decoded, REQUEST_URI as on the wire."""
    decoded = unquote_to_bytes(path)
    prefix = script_name.encode()
    if not decoded.startswith(prefix):
        raise ValueError(f"path {path!r} is not under script_name {script_name!r}")
    env: dict[str, bytes] = {
        "GATEWAY_INTERFACE": b"CGI/1.1",
        "REQUEST_METHOD": method.encode(),
        "SCRIPT_NAME": prefix,
        "PATH_INFO": decoded[len(prefix) :],
        "REQUEST_URI": (path + ("?" + query if query else "")).encode(),
        "QUERY_STRING": query.encode(),
        "SERVER_NAME": b"localhost",
        "SERVER_PORT": b"80",
        "SERVER_PROTOCOL": b"HTTP/1.1",
        "REMOTE_ADDR": b"127.0.0.1",
        "REMOTE_PORT": b"50000",
        "CONTENT_LENGTH": str(content_length).encode(),
        "HTTP_HOST": b"localhost",
    }
    joined: dict[str, list[str]] = {}
    for name, value in _header_items(headers):
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        joined.setdefault(key, []).append(value)
    for key, values in joined.items():
        env[key] = ("; " if key == "HTTP_COOKIE" else ", ").join(values).encode()
    env.update(protocol_params or {})
    for key, override in (params or {}).items():
        if override is None:
            env.pop(key, None)
        else:
            env[key] = _as_bytes(override)
    return env


def _fcgi_record(kind: int, request_id: int, content: bytes = b"") -> bytes:
    padding = -len(content) % 8
    header = FCGI_HEADER.pack(1, kind, request_id, len(content), padding)
    return header + content + bytes(padding)


def _fcgi_length(length: int) -> bytes:
    return bytes([length]) if length < 128 else struct.pack("!L", length | 0x80000000)


def _fcgi_pair(name: bytes, value: bytes) -> bytes:
    return _fcgi_length(len(name)) + _fcgi_length(len(value)) + name + value


def _fcgi_pairs(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = 0
    while pos < len(data):
        lengths = []
        for _ in range(2):
            if data[pos] < 128:
                lengths.append(data[pos])
                pos += 1
            else:
                lengths.append(struct.unpack_from("!L", data, pos)[0] & 0x7FFFFFFF)
                pos += 4
        name_len, value_len = lengths
        yield data[pos : pos + name_len], data[pos + name_len : pos + name_len + value_len]
        pos += name_len + value_len


def _fcgi_params_records(request_id: int, params: Mapping[str, bytes]) -> Iterator[bytes]:
    """PARAMS records holding whole pairs (flup decodes each record on its own)."""
    content = b""
    for name, value in params.items():
        pair = _fcgi_pair(name.encode(), value)
        if len(pair) > FCGI_MAX_CONTENT:
            raise ValueError(f"param {name} does not fit in one FastCGI record")
        if len(content) + len(pair) > FCGI_MAX_CONTENT:
            yield _fcgi_record(FCGI_PARAMS, request_id, content)
            content = b""
        content += pair
    if content:
        yield _fcgi_record(FCGI_PARAMS, request_id, content)
    yield _fcgi_record(FCGI_PARAMS, request_id)


def _fcgi_stream(
    request_id: int, keep_conn: bool, params: Mapping[str, bytes], body: _BodyReader
) -> Iterator[bytes]:
    flags = FCGI_KEEP_CONN if keep_conn else 0
    yield _fcgi_record(FCGI_BEGIN_REQUEST, request_id, struct.pack("!HB5x", FCGI_RESPONDER, flags))
    yield from _fcgi_params_records(request_id, params)
    while chunk := body.read(FCGI_MAX_CONTENT):
        yield _fcgi_record(FCGI_STDIN, request_id, chunk)
    yield _fcgi_record(FCGI_STDIN, request_id)


def _fcgi_records(exchange: _Exchange, buffer: bytearray) -> Iterator[tuple[int, int, bytes]]:
    """(type, request id, content) of each record the server sends, until EOF."""
    while True:
        while len(buffer) >= FCGI_HEADER.size:
            version, kind, request_id, length, padding = FCGI_HEADER.unpack_from(buffer)
            if version != 1:
                raise ProtocolError(
                    f"FastCGI record with version {version}: {bytes(buffer[:16])!r}"
                )
            end = FCGI_HEADER.size + length + padding
            if len(buffer) < end:
                break
            content = bytes(buffer[FCGI_HEADER.size : FCGI_HEADER.size + length])
            del buffer[:end]
            yield kind, request_id, content
        data = exchange.receive()
        if not data:
            return
        buffer += data


@contextmanager
def _exchange_on(
    address: Address, timeout: float, sock: socket.socket | None
) -> Iterator[_Exchange]:
    """An exchange over `sock`, left open for the caller, or over a new connection."""
    conn = connect(address, timeout) if sock is None else sock
    try:
        with _Exchange(conn, address, timeout) as exchange:
            yield exchange
    finally:
        if sock is None:
            conn.close()


def fcgi_request(
    address: Address,
    method: str = "GET",
    path: str = "/",
    *,
    query: str = "",
    body: Body = b"",
    content_length: int | None = None,
    headers: Headers = (),
    params: Params | None = None,
    script_name: str = "",
    timeout: float = 30.0,
    keep_conn: bool = False,
    sock: socket.socket | None = None,
) -> Response:
    """One FastCGI responder request. `path` is percent-encoded, as in the request line.

    With `sock` the request goes over that connection and leaves it open; pass
    keep_conn=True to ask the server to keep it open too.
    """
    length = _content_length(body, content_length)
    env = _cgi_params(
        method=method,
        path=path,
        query=query,
        headers=headers,
        script_name=script_name,
        content_length=length,
        params=params,
    )
    with _exchange_on(address, timeout, sock) as exchange:
        exchange.send(_fcgi_stream(1, keep_conn, env, _BodyReader(body)))
        cgi = _CgiResponse()
        stderr = bytearray()
        for kind, request_id, content in _fcgi_records(exchange, bytearray()):
            if request_id != 1:
                raise ProtocolError(f"record type {kind} for request id {request_id}")
            if kind == FCGI_STDOUT:
                cgi.feed(content)
            elif kind == FCGI_STDERR:
                stderr += content
            elif kind == FCGI_END_REQUEST:
                app_status, protocol_status = struct.unpack("!LB3x", content)
                if keep_conn:
                    exchange.flush()
                return cgi.response(
                    stderr=bytes(stderr),
                    app_status=app_status,
                    protocol_status=protocol_status,
                )
            else:
                raise ProtocolError(f"unexpected FastCGI record type {kind}")
        raise ProtocolError(f"{address!r} closed the connection before FCGI_END_REQUEST")


def fcgi_get_values(
    address: Address, names: Iterable[str], *, timeout: float = 30.0
) -> dict[str, str]:
    """FCGI_GET_VALUES: what the server says about e.g. FCGI_MPXS_CONNS."""
    content = b"".join(_fcgi_pair(name.encode(), b"") for name in names)
    with connect(address, timeout) as conn, _Exchange(conn, address, timeout) as exchange:
        exchange.send([_fcgi_record(FCGI_GET_VALUES, 0, content)])
        for kind, _, reply in _fcgi_records(exchange, bytearray()):
            if kind != FCGI_GET_VALUES_RESULT:
                raise ProtocolError(f"unexpected FastCGI record type {kind}")
            return {name.decode(): value.decode() for name, value in _fcgi_pairs(reply)}
    raise ProtocolError(f"{address!r} closed the connection before FCGI_GET_VALUES_RESULT")


def _scgi_stream(env: Mapping[str, bytes], body: _BodyReader) -> Iterator[bytes]:
    """The headers netstring, CONTENT_LENGTH first as the SCGI spec wants, then the body."""
    names = sorted(env, key=lambda name: name != "CONTENT_LENGTH")
    headers = b"".join(name.encode() + b"\0" + env[name] + b"\0" for name in names)
    yield b"%d:%s," % (len(headers), headers)
    while chunk := body.read(65536):
        yield chunk


def scgi_request(
    address: Address,
    method: str = "GET",
    path: str = "/",
    *,
    query: str = "",
    body: Body = b"",
    content_length: int | None = None,
    headers: Headers = (),
    params: Params | None = None,
    script_name: str = "",
    timeout: float = 30.0,
    sock: socket.socket | None = None,
) -> Response:
    """One SCGI request; the response ends when the server closes the connection.

    With `sock` the request goes over that connection, which the caller closes.
    """
    length = _content_length(body, content_length)
    env = _cgi_params(
        method=method,
        path=path,
        query=query,
        headers=headers,
        script_name=script_name,
        content_length=length,
        params=params,
        protocol_params={"SCGI": b"1"},
    )
    with _exchange_on(address, timeout, sock) as exchange:
        exchange.send(_scgi_stream(env, _BodyReader(body)))
        cgi = _CgiResponse()
        # EOF ends the response, even with part of the body unsent: it has answered.
        while data := exchange.receive():
            cgi.feed(data)
        return cgi.response()


def _ajp_string(value: str | bytes | None) -> bytes:
    if value is None:
        return b"\xff\xff"
    data = _as_bytes(value)
    return struct.pack(">H", len(data)) + data + b"\0"


def ajp_attribute(code: int, value: str | bytes | int | None) -> tuple[int, bytes]:
    """A coded request attribute for ajp_request(attributes=...): an int (the SSL key
    size) as 2 bytes, as Apache sends it, anything else as an AJP string."""
    if isinstance(value, int):
        return code, struct.pack(">H", value)
    return code, _ajp_string(value)


def _ajp_packet(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"AJP packet of {len(data)} bytes is too long")
    return b"\x12\x34" + struct.pack(">H", len(data)) + data


def _ajp_body_packet(chunk: bytes) -> bytes:
    """A body chunk; an empty chunk is the empty packet that ends a body."""
    return _ajp_packet(struct.pack(">H", len(chunk)) + chunk if chunk else b"")


def _ajp_forward_request(
    *,
    method: str,
    path: str,
    query: str,
    headers: Headers,
    content_length: int,
    params: Params | None,
    is_ssl: bool,
    secret: str | None = None,
    attributes: Iterable[tuple[int, bytes]] = (),
) -> bytes:
    """FORWARD_REQUEST as Apache mod_proxy_ajp builds it: a method outside AJP's table
    (PATCH) as code 0xFF and a stored_method attribute; `attributes` are (code, encoded
    value) pairs sent as they are, before the named ones."""
    method_code = AJP_METHODS.get(method, AJP_STORED_METHOD)
    items = _header_items(headers)
    names = {name.lower() for name, _ in items}
    if "host" not in names:
        items.insert(0, ("Host", "localhost"))
    if "content-length" not in names and (content_length or method in ("POST", "PUT")):
        items.append(("Content-Length", str(content_length)))
    encoded_headers = b"".join(
        (
            struct.pack(">H", AJP_REQUEST_HEADERS[name.lower()])
            if name.lower() in AJP_REQUEST_HEADERS
            else _ajp_string(name)
        )
        + _ajp_string(value)
        for name, value in items
    )
    encoded = b"".join(bytes([code]) + value for code, value in attributes)
    if query:
        encoded += b"\x05" + _ajp_string(query)
    if secret is not None:
        encoded += bytes([AJP_ATTRIBUTE_SECRET]) + _ajp_string(secret)
    if method_code == AJP_STORED_METHOD:
        encoded += bytes([AJP_ATTRIBUTE_STORED_METHOD]) + _ajp_string(method)
    extra: dict[str, str | bytes | None] = {"AJP_REMOTE_PORT": "50000", **(params or {})}
    for name, value in extra.items():
        if value is not None:
            encoded += b"\x0a" + _ajp_string(name) + _ajp_string(value)
    return _ajp_packet(
        bytes([2, method_code])
        + _ajp_string("HTTP/1.1")
        + _ajp_string(path)
        + _ajp_string("127.0.0.1")
        + _ajp_string(None)
        + _ajp_string("localhost")
        + struct.pack(">HBH", 80, is_ssl, len(items))
        + encoded_headers
        + encoded
        + b"\xff"
    )


class _AjpReader:
    """Reads AJP strings and integers from one container packet."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 1

    def short(self) -> int:
        (value,) = struct.unpack_from(">H", self.data, self.pos)
        self.pos += 2
        return int(value)

    def string(self) -> str:
        length = self.short()
        if length == 0xFFFF:
            return ""
        value = self.data[self.pos : self.pos + length].decode("latin-1")
        self.pos += length + 1
        return value


def _ajp_packets(exchange: _Exchange, buffer: bytearray) -> Iterator[bytes]:
    while True:
        while len(buffer) >= 4:
            if buffer[:2] != b"AB":
                raise ProtocolError(f"AJP packet without the 'AB' prefix: {bytes(buffer[:16])!r}")
            (length,) = struct.unpack_from(">H", buffer, 2)
            if len(buffer) < 4 + length:
                break
            packet = bytes(buffer[4 : 4 + length])
            del buffer[: 4 + length]
            if not packet:
                raise ProtocolError("empty AJP packet from the server")
            yield packet
        data = exchange.receive()
        if not data:
            return
        buffer += data


def ajp_request(
    address: Address,
    method: str = "GET",
    path: str = "/",
    *,
    query: str = "",
    body: Body = b"",
    content_length: int | None = None,
    headers: Headers = (),
    params: Params | None = None,
    is_ssl: bool = False,
    secret: str | None = None,
    attributes: Iterable[tuple[int, bytes]] = (),
    timeout: float = 30.0,
    sock: socket.socket | None = None,
) -> Response:
    """One AJP 1.3 request, sent like Apache does; `params` become named request
    attributes, `attributes` are coded ones, `secret` is ProxyPass's secret=.

    The first body chunk follows the request at once; later chunks go when the server
    asks (GET_BODY_CHUNK). With `sock` the connection is reused and left open.
    """
    length = _content_length(body, content_length)
    reader = _BodyReader(body)
    with _exchange_on(address, timeout, sock) as exchange:
        request = _ajp_forward_request(
            method=method,
            path=path,
            query=query,
            headers=headers,
            content_length=length,
            params=params,
            is_ssl=is_ssl,
            secret=secret,
            attributes=attributes,
        )
        first = [request]
        if length:
            first.append(_ajp_body_packet(reader.read(AJP_MAX_BODY_CHUNK)))
        exchange.send(first)
        status, reason = 0, ""
        response_headers: list[tuple[str, str]] = []
        body_parts: list[bytes] = []
        chunk_times: list[tuple[float, int]] = []
        for packet in _ajp_packets(exchange, bytearray()):
            kind = packet[0]
            fields = _AjpReader(packet)
            if kind == AJP_GET_BODY_CHUNK:
                wanted = min(fields.short(), AJP_MAX_BODY_CHUNK)
                exchange.send([_ajp_body_packet(reader.read(wanted))])
            elif kind == AJP_SEND_HEADERS:
                status, reason = fields.short(), fields.string()
                for _ in range(fields.short()):
                    if packet[fields.pos] == 0xA0:
                        code = fields.short()
                        if code not in AJP_RESPONSE_HEADERS:
                            raise ProtocolError(f"unknown AJP response header code {code:#x}")
                        name = AJP_RESPONSE_HEADERS[code]
                    else:
                        name = fields.string()
                    response_headers.append((name, fields.string()))
            elif kind == AJP_SEND_BODY_CHUNK:
                chunk = packet[3 : 3 + fields.short()]
                body_parts.append(chunk)
                chunk_times.append((time.monotonic(), len(chunk)))
            elif kind == AJP_END_RESPONSE:
                if not status:
                    raise ProtocolError("END_RESPONSE before SEND_HEADERS")
                return Response(
                    status,
                    reason,
                    response_headers,
                    b"".join(body_parts),
                    chunk_times,
                    reuse=packet[1:2] == b"\x01",
                )
            else:
                raise ProtocolError(f"unexpected AJP packet type {kind}")
        raise ProtocolError(f"{address!r} closed the connection before END_RESPONSE")


def raw_exchange(address: Address, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data`, close the sending side, and return what comes back until EOF.

    A reset from the server ends the reply like EOF does: malformed input may well be
    answered that way.
    """
    with connect(address, timeout) as conn, _Exchange(conn, address, timeout) as exchange:
        exchange.send([data])
        reply = bytearray()
        try:
            exchange.flush()
            conn.shutdown(socket.SHUT_WR)
            while chunk := exchange.receive():
                reply += chunk
        except TimeoutError:
            raise
        except (ProtocolError, OSError):
            pass
        return bytes(reply)
