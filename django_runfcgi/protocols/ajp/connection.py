"""An AJP 1.3 connection: requests one after another until the front end closes; a
prefork worker watches it between requests (``serve_ready()``), with its other
connections, rather than wait on it alone.

flup's CPING answer (ajp_base.Connection._cping) runs here, called openly; reading
packets, decoding the request head (forward.py), the secret, the request body, the
response framing and HEAD are ours.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import struct
import tempfile
from typing import IO, TYPE_CHECKING, Any

from flup.server import ajp_base

from django_runfcgi.protocols.ajp import forward
from django_runfcgi.protocols.ajp.packets import (
    BODY_IN_MEMORY,
    MAX_BODY_CHUNK,
    MAX_REQUEST_CHUNK,
    body_chunk,
    container_packet,
    content_length,
)
from django_runfcgi.protocols.base import (
    ProtocolConnection,
    ProtocolError,
    logger,
    peer,
    readable,
    recv_exactly,
)
from django_runfcgi.protocols.clients import ClientAddress
from django_runfcgi.protocols.wsgi import has_body
from django_runfcgi.sockets import Stream

if TYPE_CHECKING:
    from django_runfcgi.protocols.ajp import AJP

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class _AJPRequest:
    """One request for flup's WSGI handler: its environ and input, and the response
    framed into AJP packets (headers held for the first body chunk, no body for HEAD)."""

    def __init__(self, conn: AJPConnection, environ: dict[str, Any]) -> None:
        self._conn = conn
        self.environ: dict[str, Any] = environ
        self.input: IO[bytes] = io.BytesIO()
        self._headersSent = False
        self.logger = conn.logger
        self.status = 0
        self.sent = 0
        """The response's status code and body bytes written, for the request watches."""

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
        self.status = statusCode
        self._conn.hold(
            container_packet(
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
        if has_body(self.environ):
            self.sent += len(data)
            self._conn.send_body(data)


def _acknowledge_at_once(sock: Stream) -> None:
    """Acknowledge the next bytes without Linux's delay of up to 40 ms.

    lighttpd's mod_ajp13 sends a body packet's 4-byte header and its data in two writes
    without TCP_NODELAY: the data waits until the header is acknowledged, and a delayed
    acknowledgement made each packet take 44 ms (50 MB in four and a half minutes).
    The kernel leaves quick-ack mode by itself, so it is set again for every packet.
    """
    if _TCP_QUICKACK is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


class AJPConnection(ProtocolConnection):
    """One AJP connection; the front end may send many requests over it."""

    server: AJP

    def __init__(self, sock: Stream, addr: ClientAddress, server: AJP) -> None:
        super().__init__(sock, addr, server)
        self.logger = logging.getLogger(ajp_base.LoggerName)
        self._held: list[bytes] = []
        self._framing: str | None = None
        """How this request's body packets are framed: "spec" or "bare" (lighttpd)."""

    def run(self) -> None:
        """Requests until the front end closes; once stopping, the last answer says no reuse."""
        self._serve(until_idle=False)

    def serve_ready(self) -> bool:
        """The requests that have come; then True if the connection is open and idle.

        As FastCGI's: the first request (and one after a CPING) is waited for, one
        that has begun is read whole, and between requests nothing is waited for.
        """
        return self._serve(until_idle=True)

    def _serve(self, *, until_idle: bool) -> bool:
        kept = False
        try:
            with self._logging_failures():
                while True:
                    if until_idle and not self._first and not self._readable():
                        kept = not self._stopping
                        break
                    if not self._wait_for_request():
                        break
                    self.processInput()
        finally:
            if not kept:
                self._sock.close()
        return kept

    def _readable(self) -> bool:
        """Whether a packet, or the end of the connection, has come."""
        return readable(self._sock, 0)

    def processInput(self) -> None:
        """Read one packet and act on it; also called by a request reading its body."""
        deadline = self._head_deadline
        header = recv_exactly(
            self._sock,
            4,
            "a packet header",
            first=True,
            deadline=deadline,
            arm=self._arm_read_timeout,
        )
        if header[:2] != ajp_base.SERVER_PREFIX:
            raise ProtocolError(f"packet header {header!r} does not start with 0x1234")
        pkt = ajp_base.Packet()
        (pkt.length,) = struct.unpack(">H", header[2:])
        pkt.data = (
            recv_exactly(
                self._sock, pkt.length, "a packet", deadline=deadline, arm=self._arm_read_timeout
            )
            if pkt.length
            else b""
        )
        # lighttpd's mod_ajp13 follows a request without a body with an empty packet;
        # flup took it for an error (flup.rst#ajp-empty-packet).
        if not pkt.length:
            return
        elif pkt.data[0] == ajp_base.PKTTYPE_FWD_REQ:
            self._head_complete()
            self._forward(forward.decode(pkt.data))
        elif pkt.data[0] == ajp_base.PKTTYPE_CPING:
            ajp_base.Connection._cping(self, pkt)
            # Apache pings before it sends the request (ProxyPass ping=): during a
            # stop, the request that follows is still the first one to wait for.
            self._first = True
        elif pkt.data[0] not in (ajp_base.PKTTYPE_SHUTDOWN, ajp_base.PKTTYPE_PING):
            raise ProtocolError(f"unknown packet type {pkt.data[0]:#04x}")

    def _forward(self, head: forward.ForwardRequest) -> None:
        """Run the request, or answer 403 if it lacks the secret this server requires."""
        if not self.server.secret_matches(head.secret):
            self._refuse(head)
            return
        _AJPRequest(self, head.environ).run()

    def _refuse(self, head: forward.ForwardRequest) -> None:
        """403, then the connection closes, as Tomcat answers; the application never runs.

        With a Content-Length the front end sent the first body packet unasked: it is
        read, so that closing does not reset the connection under the answer; the rest
        of the body is never asked for.
        """
        logger.warning(
            "AJP request from %s refused with 403: %s, and secret= is set",
            peer(self._addr),
            "its secret does not match" if head.secret is not None else "it carries no secret",
        )
        if content_length(head.environ.get("CONTENT_LENGTH")):
            self._framing = None
            self._body_packet(None)
        # The connection ends after this answer, as after one during a stop.
        self._stopping = True
        body = b"Forbidden\n"
        request = _AJPRequest(self, head.environ)
        request.startResponse(
            403,
            b"Forbidden",
            [(b"Content-Type", b"text/plain"), (b"Content-Length", str(len(body)).encode())],
        )
        request.write(body)
        self.end_response()

    def read_body(self, environ: dict[str, Any]) -> IO[bytes]:
        """The request body, read to its end; CONTENT_LENGTH is set for a chunked one.

        With a Content-Length the front end sends the first packet unasked. A chunked
        body (Apache forwards Transfer-Encoding and no length) comes only when asked
        for, one packet per GET_BODY_CHUNK, until a packet without data, as Tomcat reads it.
        """
        length = content_length(environ.get("CONTENT_LENGTH"))
        if length is None and "HTTP_TRANSFER_ENCODING" not in environ:
            length = 0
        if length == 0:
            return io.BytesIO()
        with contextlib.ExitStack() as on_error:
            body = on_error.enter_context(tempfile.SpooledTemporaryFile(BODY_IN_MEMORY))
            received = 0
            self._framing = None
            ask = length is None  # the first packet of a body with a length comes unasked
            while length is None or received < length:
                if ask:
                    wanted = MAX_REQUEST_CHUNK
                    if length is not None:
                        wanted = min(wanted, length - received)
                    self._send(
                        container_packet(ajp_base.PKTTYPE_GET_BODY + struct.pack(">H", wanted))
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
        header = recv_exactly(
            self._sock, 4, "a request body packet header", arm=self._arm_read_timeout
        )
        if header[:2] != ajp_base.SERVER_PREFIX:
            raise ProtocolError(
                f"request body packet header {header!r} does not start with 0x1234"
            )
        (size,) = struct.unpack(">H", header[2:])
        payload = (
            recv_exactly(self._sock, size, "a request body packet", arm=self._arm_read_timeout)
            if size
            else b""
        )
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
        self._send(container_packet(pkt.data))

    def send_body(self, data: bytes) -> None:
        """SEND_BODY_CHUNK packets, a batch per send."""
        view = memoryview(data)
        step = MAX_BODY_CHUNK
        for start in range(0, len(view), 32 * step):
            piece = view[start : start + 32 * step]
            self._send(
                b"".join(body_chunk(piece[i : i + step]) for i in range(0, len(piece), step))
            )

    def end_response(self) -> None:
        """END_RESPONSE; reuse is off once the connection is stopping."""
        reuse = b"\x00" if self._stopping else b"\x01"
        self._send(container_packet(ajp_base.PKTTYPE_END_RESPONSE + reuse))
