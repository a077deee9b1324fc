"""AJP 1.3: flup's ajp_base classes, fixed (B-numbers: the project's notes on flup)."""

from __future__ import annotations

import socket
import struct
from typing import Any, ClassVar

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


def _container_packet(data: bytes | memoryview) -> bytes:
    return b"".join((ajp_base.CONTAINER_PREFIX, struct.pack(">H", len(data)), data))


def _body_chunk(chunk: memoryview) -> bytes:
    # flup ends the chunk with a NUL the AJP spec does not mention; front ends accept it.
    return _container_packet(
        b"".join((ajp_base.PKTTYPE_SEND_BODY, struct.pack(">H", len(chunk)), chunk, b"\0"))
    )


class _AJPRequest(ajp_base.Request):  # type: ignore[misc]
    _headersSent: bool

    def run(self) -> None:
        try:
            self._conn.server.handler(self)
        except Exception:
            self.logger.exception("Exception caught from handler")
            if not self._headersSent:
                self._conn.server.error(self)
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
        if self._request is not None:
            self._processBody(pkt)
        elif not pkt.length:
            return  # lighttpd's mod_ajp13 sends an empty packet between requests (B22)
        elif pkt.data[0] == ajp_base.PKTTYPE_FWD_REQ:
            self._forwardRequest(pkt)
        elif pkt.data[0] == ajp_base.PKTTYPE_CPING:
            self._cping(pkt)
        elif pkt.data[0] not in (ajp_base.PKTTYPE_SHUTDOWN, ajp_base.PKTTYPE_PING):
            raise ProtocolError(f"unknown packet type {pkt.data[0]:#04x}")

    def hold(self, packet: bytes) -> None:
        """Keep a packet to send with the next one."""
        self._held.append(packet)

    def _send(self, data: bytes) -> None:
        if self._held:
            data = b"".join([*self._held, data])
            self._held.clear()
        self._sock.sendall(data)

    def writePacket(self, pkt: Any) -> None:
        """Header and data in one send (B10: two sends plus Nagle cost 40 ms a packet)."""
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
        """500, not flup's 200 (B9)."""
        content_type, body = error_page(self.debug)
        request.startResponse(
            500,
            b"Internal Server Error",
            [(b"Content-Type", content_type), (b"Content-Length", str(len(body)).encode())],
        )
        request.write(body)
