"""A FastCGI connection: records read from a buffer, requests run one at a time.

flup's Connection read a record with several recv() calls, ignored the end of its
streams and waited forever for the front end to close; this one is ours and reads what
arrived in large pieces. The C accelerator (``_speedups``, optional) reads a whole
common request in one call; the records are otherwise read one by one in Python.
"""

from __future__ import annotations

import os
import select
import socket
import time
from typing import TYPE_CHECKING, ClassVar

from flup.server import fcgi_base

from django_runfcgi.protocols.base import (
    IDLE_POLL_SECONDS,
    ProtocolConnection,
    ProtocolError,
    recv_exactly,
)
from django_runfcgi.protocols.clients import ClientAddress
from django_runfcgi.protocols.fastcgi.records import (
    BEGIN_REQUEST_BODY,
    END_REQUEST_BODY,
    HEADER,
    HEADER_LEN,
    RECORD_SIZE,
    UNKNOWN_TYPE_BODY,
    decode_pairs,
    encode_pairs,
    record,
)
from django_runfcgi.protocols.fastcgi.request import FCGIRequest, Input

if TYPE_CHECKING:
    from django_runfcgi.protocols.fastcgi import FastCGI

try:
    from django_runfcgi.protocols.fastcgi import _speedups
except ImportError:  # Installed without a compiler: Python reads every record.
    _speedups = None  # type: ignore[assignment]

_read_request = (
    None
    if _speedups is None or os.environ.get("RUNFCGI_PURE_PYTHON", "0") != "0"
    else _speedups.read_request
)
"""The C accelerator's reader of a whole request, if built and not turned off."""

_RECV_SIZE = 65536


class FCGIConnection(ProtocolConnection):
    """One FastCGI connection from the web server; one request at a time.

    Input is read in large pieces and split into records from a buffer: a request
    with its parameters and empty body usually arrives in one recv().
    """

    close_wait_seconds: ClassVar[float] = 10.0
    """With input left unread after the last request, how long to wait for the front end
    to close its side. flup waited forever, pinning a worker to a front end that never
    closed (flup.rst#stop-signals)."""

    server: FastCGI

    def __init__(self, sock: socket.socket, addr: ClientAddress, server: FastCGI) -> None:
        super().__init__(sock, addr, server)
        self._requests: dict[int, FCGIRequest] = {}
        self._keepGoing = True
        self._closed = False
        self._input_ended = False
        self._drained = False
        self._buffer = b""
        self._pos = 0
        self.record_size = RECORD_SIZE

    def run(self) -> None:
        self._keepGoing = True
        try:
            with self._logging_failures():
                while self._keepGoing:
                    if not self._requests:
                        if not self._wait_for_request():
                            break
                        if self._start_request():
                            continue
                    self.process_input()
        finally:
            self._cleanupSocket()

    def _wait_for_request(self) -> bool:
        """A request already read, or one the front end sent before we looked, starts at
        once; otherwise wait as every protocol does."""
        if self._pos < len(self._buffer) or self._fill(block=False):
            self._first = False
            return True
        if not super()._wait_for_request():
            return False
        # Read what came, so that a request that arrived whole is read in one step.
        self._fill(block=True, at_start=True)
        return True

    def _start_request(self) -> bool:
        """Run a request whose records have all arrived, read in one step (in C); False
        if the accelerator is off or the records are anything but the common case, which
        are then read one by one."""
        if _read_request is None:
            return False
        found = _read_request(self._buffer, self._pos)
        if found is None:
            return False
        self._pos, request_id, role, flags, params, body_ended = found
        req = FCGIRequest(self, request_id, role, flags)
        req.params = params
        if body_ended:
            req.stdin.add_data(b"")
        self._requests[request_id] = req
        req.run()
        return True

    def _fill(self, *, block: bool, at_start: bool = False) -> bool:
        """Read more input into the buffer; without `block`, False if none has come."""
        try:
            data = self._sock.recv(_RECV_SIZE, 0 if block else socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        # A short read took all the kernel held: nothing is left unread (see _cleanupSocket).
        self._drained = len(data) < _RECV_SIZE
        if not data:
            if not block:
                self._input_ended = True
                return False
            if at_start:
                raise EOFError
            raise ProtocolError("connection closed inside a record")
        if self._pos < len(self._buffer):
            self._buffer = self._buffer[self._pos :] + data
        else:
            self._buffer = data
        self._pos = 0
        return True

    def _next_record(self, *, block: bool = True) -> tuple[int, int, bytes] | None:
        """The next record's type, request id and content; without `block`, None if it
        has not fully arrived."""
        while len(self._buffer) - self._pos < HEADER_LEN:
            if not self._fill(block=block, at_start=self._pos == len(self._buffer)):
                return None
        version, kind, request_id, length, padding = HEADER.unpack_from(self._buffer, self._pos)
        if version != fcgi_base.FCGI_VERSION_1:
            header = self._buffer[self._pos : self._pos + HEADER_LEN]
            raise ProtocolError(f"record header {header!r} is not FastCGI version 1")
        total = HEADER_LEN + length + padding
        missing = total - (len(self._buffer) - self._pos)
        if block and missing > _RECV_SIZE:
            # Most of a large record is still to come: read it straight, not via the buffer.
            rest = recv_exactly(self._sock, missing, f"a type {kind} record")
            self._drained = False
            content = (self._buffer[self._pos + HEADER_LEN :] + rest)[:length]
            self._buffer, self._pos = b"", 0
            return kind, request_id, content
        while len(self._buffer) - self._pos < total:
            if not self._fill(block=block):
                return None
        start = self._pos + HEADER_LEN
        self._pos += total
        return kind, request_id, self._buffer[start : start + length]

    def process_input(self) -> None:
        """Read one record and act on it; also called by a request reading its body."""
        record = self._next_record()
        assert record is not None, "a blocking read returns a record"
        self._dispatch(*record)

    def _dispatch(self, kind: int, request_id: int, content: bytes) -> None:
        if kind == fcgi_base.FCGI_STDIN:
            req = self._requests.get(request_id)
            if req is not None:
                req.stdin.add_data(content)
        elif kind == fcgi_base.FCGI_PARAMS:
            req = self._requests.get(request_id)
            if req is None:
                return
            if content:
                req.params.update(decode_pairs(content))
            else:
                req.run()
        elif kind == fcgi_base.FCGI_BEGIN_REQUEST:
            if len(content) != BEGIN_REQUEST_BODY.size:
                raise ProtocolError(f"FCGI_BEGIN_REQUEST body of {len(content)} bytes, not 8")
            role, flags = BEGIN_REQUEST_BODY.unpack(content)
            req = FCGIRequest(self, request_id, role, flags)
            if self._requests:
                self.end_request(req, 0, fcgi_base.FCGI_CANT_MPX_CONN, remove=False)
            else:
                self._requests[request_id] = req
        elif kind == fcgi_base.FCGI_GET_VALUES:
            self._do_get_values(content)
        elif kind == fcgi_base.FCGI_ABORT_REQUEST:
            req = self._requests.get(request_id)
            if req is not None:
                req.aborted = True
        elif kind == fcgi_base.FCGI_DATA:
            req = self._requests.get(request_id)
            if req is not None:
                if req.data is None:
                    req.data = Input(self)
                req.data.add_data(content)
        elif request_id == fcgi_base.FCGI_NULL_REQUEST_ID:
            body = UNKNOWN_TYPE_BODY.pack(kind)
            self.send_bytes(record(fcgi_base.FCGI_UNKNOWN_TYPE, 0, body))

    def _do_get_values(self, content: bytes) -> None:
        values = {}
        for name in decode_pairs(content):
            value = self.server.capability.get(name)
            if value is not None:
                values[name] = str(value)
        reply = encode_pairs(values)
        self.send_bytes(record(fcgi_base.FCGI_GET_VALUES_RESULT, 0, reply))

    def send_bytes(self, data: bytes) -> None:
        self._sock.sendall(data)

    def end_request(
        self,
        req: FCGIRequest,
        appStatus: int = 0,
        protocolStatus: int = fcgi_base.FCGI_REQUEST_COMPLETE,
        remove: bool = True,
        end: bytes = b"",
    ) -> None:
        # Eight bytes of body: a whole record with no padding.
        record = HEADER.pack(1, fcgi_base.FCGI_END_REQUEST, req.requestId, 8, 0)
        self.send_bytes(end + record + END_REQUEST_BODY.pack(appStatus, protocolStatus))
        if remove:
            self._requests.pop(req.requestId, None)
        if not (req.flags & fcgi_base.FCGI_KEEP_CONN) and not self._requests:
            self._cleanupSocket(req)
            self._keepGoing = False

    def _rest_of_input(self, req: FCGIRequest) -> bool | None:
        """Whether the front end has sent all it will for `req`, reading what has come;
        None if something other than its body came, which ends the reading.

        The end of a request's body (an empty FCGI_STDIN record) usually arrives with its
        parameters, or was read by the application; body records it left unread are read
        and dropped here, as far as they have arrived.
        """
        if req.stdin._eof:
            return True
        while True:
            record = self._next_record(block=False)
            if record is None:
                return False
            kind, request_id, content = record
            if kind != fcgi_base.FCGI_STDIN or request_id != req.requestId:
                return None
            if not content:
                return True

    def _nothing_unread(self) -> bool:
        """Whether no input waits in the kernel, so that closing resets nothing.

        The front end sends nothing after a request's body without FCGI_KEEP_CONN: when
        the last read took all there was, there is no need to ask again.
        """
        return self._drained or not select.select([self._sock], [], [], 0)[0]

    def _cleanupSocket(self, req: FCGIRequest | None = None) -> None:
        """Close at once if the front end has sent all its input for `req`, else drain it
        first.

        Closing over unread input (e.g. a body the application ignored) would reset the
        connection and could cut the response short, so then the input is read until the
        rest of the body has come (or, if anything else comes, the front end closes its
        side), for a bounded time; when stopping, only what has arrived is read. When all
        input has been read the response is already queued in full, and a plain close
        delivers it, then the end of the stream: waiting for the front end to close first
        cost every request a round trip to it, and pinned the worker to a front end that
        kept its side open.
        """
        if self._closed:
            return
        self._closed = True
        try:
            pending = None if req is None else self._rest_of_input(req)
            if pending and self._nothing_unread():
                return
            self._sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + self.close_wait_seconds
            while True:
                remaining = 0.0 if self._stopping else deadline - time.monotonic()
                wait = min(max(remaining, 0.0), IDLE_POLL_SECONDS)
                if select.select([self._sock], [], [], wait)[0]:
                    if pending is False and req is not None:
                        # The body's end may come after the response: read records to it.
                        pending = self._rest_of_input(req)
                        if self._input_ended:
                            break
                        if pending and self._nothing_unread():
                            break
                    elif not self._sock.recv(65536):
                        break
                elif remaining <= 0:
                    break
        except OSError:
            pass
        finally:
            self._sock.close()
