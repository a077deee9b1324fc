"""AJP 1.3: flup's ajp_base classes, fixed (B-numbers: the project's notes on flup)."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import tempfile
from typing import IO, Any, ClassVar

from flup.server import ajp_base

from django_runfcgi.compat.common import (
    ClientAddress,
    LoopbackServer,
    ProtocolConnection,
    ProtocolError,
    error_page,
    recv_exactly,
)

_AJP_MAX_BODY_CHUNK = 8184
"""Data per SEND_BODY_CHUNK: 8192 minus the packet header, type, length and NUL."""

_AJP_MAX_REQUEST_CHUNK = 8186
"""Request body bytes asked for per GET_BODY_CHUNK, as Tomcat asks: what one 8192-byte
body packet holds after its header and data length."""

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only

_BODY_IN_MEMORY = 2621440
"""Request bodies up to this size stay in memory, larger ones go to a temporary file
(Django's FILE_UPLOAD_MAX_MEMORY_SIZE default)."""


def _container_packet(data: bytes | memoryview) -> bytes:
    return b"".join((ajp_base.CONTAINER_PREFIX, struct.pack(">H", len(data)), data))


def _body_chunk(chunk: memoryview) -> bytes:
    # flup ends the chunk with a NUL the AJP spec does not mention; front ends accept it.
    return _container_packet(
        b"".join((ajp_base.PKTTYPE_SEND_BODY, struct.pack(">H", len(chunk)), chunk, b"\0"))
    )


class _AJPRequest(ajp_base.Request):  # type: ignore[misc]
    _headersSent: bool

    def addHeader(self, name: bytes, value: bytes) -> None:
        """Headers into environ; unlike flup's, the body is left to run()."""
        key = name.replace(b"-", b"_").upper().decode("latin-1")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        self.environ[key] = value.decode("latin-1")

    def run(self) -> None:
        """The whole request body first, so a broken body costs its connection, not a 500.

        Django reads no more than CONTENT_LENGTH, which a chunked body does not have until
        it has been read to its end; and a body packet left unread would be taken for the
        next request on the connection.
        """
        self.input = self._conn.read_body(self.environ)
        self.environ["wsgi.input_terminated"] = True
        try:
            try:
                self._conn.server.handler(self)
            except Exception:
                self.logger.exception("Exception caught from handler")
                if not self._headersSent:
                    self._conn.server.error(self)
        finally:
            self.input.close()
        self._conn.end_response()

    def startResponse(
        self, statusCode: int, statusMsg: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Hold SEND_HEADERS back so it goes out with the first body chunk."""
        assert not self._headersSent, "Headers already sent!"
        self._conn.hold(
            _container_packet(
                ajp_base.PKTTYPE_SEND_HEADERS
                + struct.pack(">H", statusCode)
                + ajp_base.encodeString(statusMsg)
                + struct.pack(">H", len(headers))
                + b"".join(ajp_base.encodeResponseHeader(name, value) for name, value in headers)
            )
        )
        self._headersSent = True

    def write(self, data: bytes) -> None:
        """SEND_BODY_CHUNK packets; none for HEAD (flup sent the body)."""
        if self.environ["REQUEST_METHOD"] != "HEAD":
            self._conn.send_body(data)


def _acknowledge_at_once(sock: socket.socket) -> None:
    """Acknowledge the next bytes without Linux's delay of up to 40 ms.

    lighttpd's mod_ajp13 sends a body packet's 4-byte header and its data in two writes
    without TCP_NODELAY: the data waits until the header is acknowledged, and a delayed
    acknowledgement made each packet take 44 ms (50 MB in four and a half minutes).
    The kernel leaves quick-ack mode by itself, so it is set again for every packet.
    """
    if _TCP_QUICKACK is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise ProtocolError(f"Content-Length {value!r} is not a number of bytes")
    return int(value)


class AJPConnection(ProtocolConnection, ajp_base.Connection):  # type: ignore[misc]
    """One AJP connection; the front end may send many requests over it."""

    protocol_name = "AJP"
    # flup parses FORWARD_REQUEST by indexing: garbage raises IndexError and co.
    protocol_errors = (ProtocolError, ajp_base.ProtocolError, IndexError, ValueError, struct.error)

    def __init__(
        self, sock: socket.socket, addr: ClientAddress, server: Any, timeout: Any
    ) -> None:
        super().__init__(sock, addr, server, timeout)
        self._held: list[bytes] = []
        self._framing: str | None = None
        """How this request's body packets are framed: "spec" or "bare" (lighttpd)."""

    def run(self) -> None:
        """Requests until the front end closes; once stopping, the last answer says no reuse."""
        try:
            with self._logging_failures():
                while self._wait_for_request():
                    self.processInput()
        finally:
            self._sock.close()

    def processInput(self) -> None:
        """Read one packet and act on it; also called by a request reading its body."""
        header = recv_exactly(self._sock, 4, "a packet header", first=True)
        if header[:2] != ajp_base.SERVER_PREFIX:
            raise ProtocolError(f"packet header {header!r} does not start with 0x1234")
        pkt = ajp_base.Packet()
        (pkt.length,) = struct.unpack(">H", header[2:])
        pkt.data = recv_exactly(self._sock, pkt.length, "a packet") if pkt.length else b""
        # lighttpd's mod_ajp13 follows a request without a body with an empty packet;
        # flup took it for an error (flup.rst#ajp-empty-packet).
        if not pkt.length:
            return
        elif pkt.data[0] == ajp_base.PKTTYPE_FWD_REQ:
            self._forwardRequest(pkt)
        elif pkt.data[0] == ajp_base.PKTTYPE_CPING:
            self._cping(pkt)
        elif pkt.data[0] not in (ajp_base.PKTTYPE_SHUTDOWN, ajp_base.PKTTYPE_PING):
            raise ProtocolError(f"unknown packet type {pkt.data[0]:#04x}")

    def read_body(self, environ: dict[str, Any]) -> IO[bytes]:
        """The request body, read to its end; CONTENT_LENGTH is set for a chunked one.

        With a Content-Length the front end sends the first packet unasked. A chunked
        body (Apache forwards Transfer-Encoding and no length) comes only when asked
        for, one packet per GET_BODY_CHUNK, until a packet without data, as Tomcat reads it.
        """
        length = _content_length(environ.get("CONTENT_LENGTH"))
        if length is None and "HTTP_TRANSFER_ENCODING" not in environ:
            length = 0
        if length == 0:
            return io.BytesIO()
        with contextlib.ExitStack() as on_error:
            body = on_error.enter_context(tempfile.SpooledTemporaryFile(_BODY_IN_MEMORY))
            received = 0
            self._framing = None
            ask = length is None  # the first packet of a body with a length comes unasked
            while length is None or received < length:
                if ask:
                    wanted = _AJP_MAX_REQUEST_CHUNK
                    if length is not None:
                        wanted = min(wanted, length - received)
                    self._send(
                        _container_packet(ajp_base.PKTTYPE_GET_BODY + struct.pack(">H", wanted))
                    )
                ask = True
                data = self._body_packet(None if length is None else length - received)
                if not data:
                    if length is None:
                        break
                    raise ProtocolError(
                        f"request body ended after {received} of its {length} bytes"
                    )
                if length is not None and received + len(data) > length:
                    raise ProtocolError(
                        f"request body longer than its Content-Length of {length} bytes"
                    )
                body.write(data)
                received += len(data)
            on_error.pop_all()
        if length is None:
            environ["CONTENT_LENGTH"] = str(received)
        body.seek(0)
        return body

    def _body_packet(self, left: int | None) -> bytes:
        """One request body packet's data; empty at the end of a chunked body.

        AJP 1.3 puts a 2-byte data length before the bytes, as Apache and Tomcat do;
        lighttpd 1.4's mod_ajp13 sends the bytes alone. The first packet of each body
        tells which: its data length is its size minus those 2 bytes (and at most what
        is `left`, the rest of a body with a known length), which lighttpd's bytes match
        only if the body happens to start so. Such a body is then misread, as its own
        request's body and no other: lighttpd opens a new connection for every request.
        """
        _acknowledge_at_once(self._sock)
        header = recv_exactly(self._sock, 4, "a request body packet header")
        if header[:2] != ajp_base.SERVER_PREFIX:
            raise ProtocolError(
                f"request body packet header {header!r} does not start with 0x1234"
            )
        (size,) = struct.unpack(">H", header[2:])
        payload = recv_exactly(self._sock, size, "a request body packet") if size else b""
        if not size:
            return b""  # a packet without even a data length also ends a chunked body
        stated = struct.unpack(">H", payload[:2])[0] if size >= 2 else -1
        if self._framing is None:
            fits = stated == size - 2 and (left is None or 0 < stated <= left)
            self._framing = "spec" if fits else "bare"
        if self._framing == "bare":
            return payload
        if stated != size - 2:
            raise ProtocolError(
                f"request body packet of {size} bytes says it holds {stated} bytes of data"
            )
        return payload[2:]

    def hold(self, packet: bytes) -> None:
        """Keep a packet to send with the next one."""
        self._held.append(packet)

    def _send(self, data: bytes) -> None:
        if self._held:
            data = b"".join([*self._held, data])
            self._held.clear()
        self._sock.sendall(data)

    def writePacket(self, pkt: Any) -> None:
        """Header and data in one send: two sends plus Nagle cost 40 ms a packet.

        flup.rst#ajp-nagle.
        """
        self._send(_container_packet(pkt.data))

    def send_body(self, data: bytes) -> None:
        """SEND_BODY_CHUNK packets, a batch per send."""
        view = memoryview(data)
        step = _AJP_MAX_BODY_CHUNK
        for start in range(0, len(view), 32 * step):
            piece = view[start : start + 32 * step]
            self._send(
                b"".join(_body_chunk(piece[i : i + step]) for i in range(0, len(piece), step))
            )

    def end_response(self) -> None:
        """END_RESPONSE; reuse is off once the connection is stopping."""
        reuse = b"\x00" if self._stopping else b"\x01"
        self._send(_container_packet(ajp_base.PKTTYPE_END_RESPONSE + reuse))


class AJPServer(LoopbackServer, ajp_base.BaseAJPServer):  # type: ignore[misc]
    """AJP 1.3 protocol half; combine it with a process class."""

    connection_class: ClassVar[type[AJPConnection]] = AJPConnection
    requestClass = _AJPRequest
    protocol_name = "AJP"

    def error(self, request: Any) -> None:
        """500, not flup's 200 (flup.rst#ajp-error-status)."""
        content_type, body = error_page(self.debug)
        request.startResponse(
            500,
            b"Internal Server Error",
            [(b"Content-Type", content_type), (b"Content-Length", str(len(body)).encode())],
        )
        request.write(body)
