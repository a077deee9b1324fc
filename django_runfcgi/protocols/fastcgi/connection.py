"""A FastCGI connection: records read from a buffer, requests run one at a time.

flup's Connection read a record with several recv() calls, ignored the end of its
streams, took any record in any state and waited forever for the front end to close;
this one is ours and reads what arrived in large pieces. The C accelerator
(``_speedups``, optional) reads a whole common request in one call; the records are
otherwise read one by one in Python. An FCGI_STDIN record that runs past the end of
what has arrived is handed to wsgi.input in pieces, each as it comes, instead of waiting
for it whole: what has arrived is not joined to each following read.

Each record is checked against its request's state, as the specification has it: a
request id is active from its FCGI_BEGIN_REQUEST until our FCGI_END_REQUEST, its
parameters come before its body, and each stream ends once. Records for an id that was
active on this connection and has ended are ignored (the rest of a body the
application did not read, a request refused with FCGI_CANT_MPX_CONN); anything else
out of order is a protocol error that closes the connection.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, ClassVar, Final

from flup.server import fcgi_base

from django_runfcgi.protocols.base import (
    IDLE_POLL_SECONDS,
    ProtocolConnection,
    ProtocolError,
    ReadTimeout,
    readable,
    recv_exactly,
)
from django_runfcgi.protocols.clients import ClientAddress
from django_runfcgi.protocols.fastcgi.records import (
    BEGIN_REQUEST_BODY,
    HEADER,
    HEADER_LEN,
    RECORD_SIZE,
    UNKNOWN_TYPE_BODY,
    decode_pairs,
    encode_pairs,
    end_request_record,
    record,
)
from django_runfcgi.protocols.fastcgi.request import FCGIRequest
from django_runfcgi.sockets import Stream

if TYPE_CHECKING:
    from django_runfcgi.protocols.fastcgi import FastCGI

from django_runfcgi.protocols.accelerator import _speedups  # noqa: F401 (tests)
from django_runfcgi.protocols.accelerator import read_request as _read_request

Content = bytes | memoryview
"""A record's content: FCGI_STDIN's is a view of the bytes read (no copy), others bytes."""

_RECV_SIZE = 65536
_LARGE_RECV_SIZE = 262144
"""The largest read of a body record's rest, as recv_exactly() reads."""

_BEGIN_REQUEST: Final = fcgi_base.FCGI_BEGIN_REQUEST
_ABORT_REQUEST: Final = fcgi_base.FCGI_ABORT_REQUEST
_PARAMS: Final = fcgi_base.FCGI_PARAMS
_STDIN: Final = fcgi_base.FCGI_STDIN
_GET_VALUES: Final = fcgi_base.FCGI_GET_VALUES

RECORD_NAMES = {
    fcgi_base.FCGI_BEGIN_REQUEST: "FCGI_BEGIN_REQUEST",
    fcgi_base.FCGI_ABORT_REQUEST: "FCGI_ABORT_REQUEST",
    fcgi_base.FCGI_END_REQUEST: "FCGI_END_REQUEST",
    fcgi_base.FCGI_PARAMS: "FCGI_PARAMS",
    fcgi_base.FCGI_STDIN: "FCGI_STDIN",
    fcgi_base.FCGI_STDOUT: "FCGI_STDOUT",
    fcgi_base.FCGI_STDERR: "FCGI_STDERR",
    fcgi_base.FCGI_DATA: "FCGI_DATA",
    fcgi_base.FCGI_GET_VALUES: "FCGI_GET_VALUES",
    fcgi_base.FCGI_GET_VALUES_RESULT: "FCGI_GET_VALUES_RESULT",
    fcgi_base.FCGI_UNKNOWN_TYPE: "FCGI_UNKNOWN_TYPE",
}
"""The record types the specification defines, by name for log lines."""

ENDED_IDS_KEPT = 16
"""How many ended request ids a connection remembers, to ignore their late records."""


def _name(kind: int) -> str:
    return RECORD_NAMES.get(kind, f"type {kind}")


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

    def __init__(self, sock: Stream, addr: ClientAddress, server: FastCGI) -> None:
        super().__init__(sock, addr, server)
        self._active: FCGIRequest | None = None
        self._ended: dict[int, bool] = {}
        """The ids of requests ended on this connection, oldest first, and whether all
        their input had come (then nothing more may come for them)."""
        self._keepGoing = True
        self._closed = False
        self._input_ended = False
        self._drained = False
        self._buffer = b""
        self._pos = 0
        self._stdin_id = 0
        self._stdin_left = 0
        """Content bytes still to come of the FCGI_STDIN record taken in pieces."""
        self._stdin_padding = 0
        self._skip = 0
        """Padding bytes of that record still to come, skipped before the next header."""
        self.record_size = RECORD_SIZE
        self._max_head_size = self.bounds.maxheadsize
        self._max_headers = self.bounds.maxheaders

    def run(self) -> None:
        """Serve requests until the front end closes, waiting for each in turn."""
        self._serve(until_idle=False)

    def serve_ready(self) -> bool:
        """Serve the requests that have come; once none waits, True if the connection is
        kept open (FCGI_KEEP_CONN) and idle, False once it is closed.

        The first request of a connection is waited for, within readtimeout of its
        accept, as in run(): the front end connected to send it. A request whose first
        bytes have come is read whole within readtimeout, and served. Between requests
        nothing is waited for: the caller watches the socket with others, and calls again
        when it is readable. Once stop_when_idle() was called, an idle connection closes.
        """
        return self._serve(until_idle=True)

    def _serve(self, *, until_idle: bool) -> bool:
        self._keepGoing = True
        kept = False
        try:
            with self._logging_failures():
                while self._keepGoing:
                    if self._active is None:
                        if until_idle and not self._first and not self._has_input():
                            kept = not (self._stopping or self._input_ended)
                            break
                        if not self._wait_for_request():
                            break
                        if self._start_request():
                            continue
                        # Not all of it has come: from now on it must within readtimeout.
                        self._head_begins()
                    self.process_input()
        finally:
            if not kept:
                self._cleanupSocket()
        return kept

    def _has_input(self) -> bool:
        """Whether input is buffered or has arrived, read without waiting."""
        return self._pos < len(self._buffer) or self._fill(block=False)

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
        if _read_request is None or self._stdin_left or self._skip:
            # Inside a body record: the buffer holds body bytes, not the next header.
            return False
        found = _read_request(self._buffer, self._pos, self._max_head_size, self._max_headers)
        if found is None:
            return False
        self._pos, request_id, role, flags, params, body_ended = found
        req = FCGIRequest(self, request_id, role, flags)
        req.params = params
        req.params_ended = True
        if body_ended:
            req.stdin.add_data(b"")
        self._active = req
        self._head_deadline = None
        req.run()
        return True

    def _fill(self, *, block: bool, at_start: bool = False, size: int = _RECV_SIZE) -> bool:
        """Read more input into the buffer; without `block`, False if none has come.

        What has arrived is taken without waiting; a blocking read waits as long as the
        request head's deadline, or the read timeout, allows. What is left of the buffer
        is joined to what comes, which only a record's header or a record other than
        FCGI_STDIN needs: a body record is taken in pieces.
        """
        deadline = self._head_deadline
        if deadline is not None and time.monotonic() > deadline:
            raise ReadTimeout("no complete request head came")
        try:
            data = self._sock.recv(size, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            if not block:
                return False
            data = self._recv_blocking(size)
        # A short read took all the kernel held: nothing is left unread (see _cleanupSocket).
        self._drained = len(data) < size
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

    def _next_record(self, *, block: bool = True) -> tuple[int, int, Content] | None:
        """The next record's type, request id and content; without `block`, None if it
        has not fully arrived.

        An FCGI_STDIN record that runs past the end of the buffer is returned in pieces,
        as records of the same type and id whose contents add up to it: the first is
        what has arrived, each following one what the next read brought. nginx sends a
        body in records of 32 KiB, so every other one ran past a 64 KiB read, and what
        had arrived of it was copied with the whole next read; now a body is copied
        once between the reads and wsgi.input's join, and the C accelerator never sees
        the middle of a record. FCGI_STDIN content is a view of the bytes read, not a
        copy: wsgi.input's join is its one copy.
        """
        if self._skip or self._stdin_left:
            if not self._rest_of_stdin(block):
                return None
            if self._stdin_left:
                return self._stdin_piece()
        while len(self._buffer) - self._pos < HEADER_LEN:
            try:
                if not self._fill(block=block, at_start=self._pos == len(self._buffer)):
                    return None
            except EOFError:
                req = self._active
                if req is not None and not req.params_ended:
                    raise ProtocolError(
                        f"connection closed before the end of request {req.requestId}'s "
                        "FCGI_PARAMS"
                    ) from None
                raise
        version, kind, request_id, length, padding = HEADER.unpack_from(self._buffer, self._pos)
        if version != fcgi_base.FCGI_VERSION_1:
            header = self._buffer[self._pos : self._pos + HEADER_LEN]
            raise ProtocolError(f"record header {header!r} is not FastCGI version 1")
        total = HEADER_LEN + length + padding
        start = self._pos + HEADER_LEN
        arrived = len(self._buffer) - start
        if kind == _STDIN and length > arrived:
            self._pos = start
            self._stdin_id = request_id
            self._stdin_left = length
            self._stdin_padding = padding
            if not arrived and not self._rest_of_stdin(block):
                return None
            return self._stdin_piece()
        missing = total - (len(self._buffer) - self._pos)
        if block and missing > _RECV_SIZE and self._head_deadline is None:
            # Most of a large record is still to come: read it straight, not via the buffer.
            rest = recv_exactly(
                self._sock, missing, f"a {_name(kind)} record", arm=self._arm_read_timeout
            )
            self._drained = False
            content = (self._buffer[start:] + rest)[:length]
            self._buffer, self._pos = b"", 0
            return kind, request_id, content
        while len(self._buffer) - self._pos < total:
            if not self._fill(block=block):
                return None
        start = self._pos + HEADER_LEN  # The buffer now starts with the record.
        self._pos += total
        if kind == _STDIN and length:  # The body's end is b"", no view.
            return kind, request_id, memoryview(self._buffer)[start : start + length]
        return kind, request_id, self._buffer[start : start + length]

    def _rest_of_stdin(self, block: bool) -> bool:
        """Skip what has come of the padding of the FCGI_STDIN record taken in pieces, and
        make sure more of its content is in the buffer; without `block`, False if what
        is needed has not come. A close inside the record is a protocol error."""
        while self._skip:
            if self._pos == len(self._buffer) and not self._fill(block=block):
                return False
            skipped = min(self._skip, len(self._buffer) - self._pos)
            self._pos += skipped
            self._skip -= skipped
        if self._stdin_left and self._pos == len(self._buffer):
            # The usual read, or up to 256 KiB at a time of the rest of a large record.
            wanted = self._stdin_left + self._stdin_padding + HEADER_LEN
            size = min(max(wanted, _RECV_SIZE), _LARGE_RECV_SIZE)
            return self._fill(block=block, size=size)
        return True

    def _stdin_piece(self) -> tuple[int, int, Content]:
        """What the buffer holds of the FCGI_STDIN record taken in pieces (not nothing)."""
        pos = self._pos
        taken = min(self._stdin_left, len(self._buffer) - pos)
        self._pos = pos + taken
        self._stdin_left -= taken
        if not self._stdin_left:
            self._skip = self._stdin_padding
        return _STDIN, self._stdin_id, memoryview(self._buffer)[pos : pos + taken]

    def process_input(self) -> None:
        """Read one record and act on it."""
        record = self._next_record()
        assert record is not None, "a blocking read returns a record"
        self._dispatch(*record)

    def read_input(self) -> None:
        """Read one record for the application, which is reading its request's body: a
        failure is kept to close the connection with once the application returns, and
        the application gets an InputError (it may catch it)."""
        if self.failure is None:
            try:
                self.process_input()
                self._take_body_records()
                return
            except Exception as exc:
                raise self._input_failed(exc) from None
        raise self._input_failed(self.failure)

    def _take_body_records(self) -> None:
        """Give wsgi.input the non-empty FCGI_STDIN records of the active request that
        follow whole in the buffer, in one step: a large read holds several, and each
        taken as a record of its own cost a trip through the record reader."""
        req = self._active
        if req is None or self._stdin_left or self._skip:
            return
        buf, pos, rid = self._buffer, self._pos, req.requestId
        end = len(buf)
        pieces = []
        view = None
        while end - pos >= HEADER_LEN:
            version, kind, request_id, length, padding = HEADER.unpack_from(buf, pos)
            total = HEADER_LEN + length + padding
            if kind != _STDIN or request_id != rid or not length or end - pos < total:
                break
            if version != fcgi_base.FCGI_VERSION_1:
                break  # The record reader says what is wrong with it.
            if view is None:
                view = memoryview(buf)
            pieces.append(view[pos + HEADER_LEN : pos + HEADER_LEN + length])
            pos += total
        if pieces:
            self._pos = pos
            req.stdin.add_pieces(pieces, sum(map(len, pieces)))

    def _dispatch(self, kind: int, request_id: int, content: Content) -> None:
        """Act on one record, as its request's state allows."""
        req = self._active
        if req is not None and request_id == req.requestId:
            if kind == _STDIN:
                if not req.params_ended:
                    raise ProtocolError(
                        f"FCGI_STDIN for request {request_id} before the end of its FCGI_PARAMS"
                    )
                req.stdin.add_data(content)
            elif kind == _PARAMS:
                if req.params_ended:
                    raise ProtocolError(
                        f"FCGI_PARAMS for request {request_id} after the end of its parameters"
                    )
                if content:
                    # bytes already (only FCGI_STDIN content is a view): no copy.
                    req.add_params(bytes(content), self._max_head_size)
                else:
                    req.end_params(self._max_headers)
                    self._head_complete()
                    req.run()
            elif kind == _ABORT_REQUEST:
                self._abort(req)
            elif kind == _BEGIN_REQUEST:
                raise ProtocolError(f"FCGI_BEGIN_REQUEST for request {request_id}, already active")
            else:
                raise ProtocolError(
                    f"{_name(kind)} record for request {request_id}, which a web server "
                    "does not send to a responder"
                )
        elif request_id == fcgi_base.FCGI_NULL_REQUEST_ID:
            self._management(kind, content)
        elif kind == _BEGIN_REQUEST:
            self._begin(request_id, content)
        elif request_id in self._ended:
            # Late records of an ended request are ignored, as the specification says:
            # the rest of a body left unread, the records of a refused request, an abort
            # that crossed our FCGI_END_REQUEST. Once all its input has come, nothing
            # more may.
            if self._ended[request_id] and kind != _ABORT_REQUEST:
                raise ProtocolError(
                    f"{_name(kind)} record for request {request_id} after the end of its input"
                )
            if kind == _STDIN and not content:
                self._ended[request_id] = True
            if req is None:
                # On an idle kept connection: not the head of a new request.
                self._head_complete()
        elif kind == _GET_VALUES:
            raise ProtocolError(f"FCGI_GET_VALUES with request id {request_id}, not 0")
        else:
            raise ProtocolError(
                f"{_name(kind)} record for request {request_id}, which was never begun"
            )

    def _begin(self, request_id: int, content: Content) -> None:
        if len(content) != BEGIN_REQUEST_BODY.size:
            raise ProtocolError(f"FCGI_BEGIN_REQUEST body of {len(content)} bytes, not 8")
        role, flags = BEGIN_REQUEST_BODY.unpack(content)
        req = FCGIRequest(self, request_id, role, flags)
        if self._active is None:
            self._active = req
        else:
            # One request at a time (FCGI_MPXS_CONNS is 0): the specification's answer.
            self._end_id(request_id, complete=False)
            self.end_request(req, 0, fcgi_base.FCGI_CANT_MPX_CONN, remove=False)

    def _end_id(self, request_id: int, *, complete: bool) -> None:
        """Remember an ended id (while it is active again, its records are its own)."""
        ended = self._ended
        ended[request_id] = complete
        if len(ended) > ENDED_IDS_KEPT:
            del ended[next(iter(ended))]

    def _abort(self, req: FCGIRequest) -> None:
        """FCGI_ABORT_REQUEST: end the request as soon as possible. Before the application
        runs, that is now; while it reads the body, its next read raises InputError and
        the request ends when it returns, without its response."""
        req.aborted = True
        req.stdin.abort()
        if not req.params_ended:
            self.end_request(req, 0, fcgi_base.FCGI_REQUEST_COMPLETE)

    def _management(self, kind: int, content: Content) -> None:
        """A record with the null request id: FCGI_GET_VALUES is answered, any other type
        gets FCGI_UNKNOWN_TYPE, as the specification says. They do not stand for a
        request: a connection that sends only these is closed after readtimeout."""
        deadline = self._head_deadline
        if deadline is not None and time.monotonic() > deadline:
            raise ReadTimeout("no request came")
        if kind == _GET_VALUES:
            self._do_get_values(content)
        else:
            body = UNKNOWN_TYPE_BODY.pack(kind)
            self.send_bytes(record(fcgi_base.FCGI_UNKNOWN_TYPE, 0, body))

    def _do_get_values(self, content: Content) -> None:
        values = {}
        for name in decode_pairs(bytes(content), self.bounds.maxheaders):
            value = self.server.capability.get(name)
            if value is not None:
                values[name] = str(value)
        reply = encode_pairs(values)
        self.send_bytes(record(fcgi_base.FCGI_GET_VALUES_RESULT, 0, reply))

    def send_bytes(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            # The web server has gone: nothing more can reach it, not even an error page.
            if self.failure is None:
                self.failure = exc
            raise

    def end_request(
        self,
        req: FCGIRequest,
        appStatus: int = 0,
        protocolStatus: int = fcgi_base.FCGI_REQUEST_COMPLETE,
        remove: bool = True,
        end: bytes = b"",
    ) -> None:
        self.send_bytes(end + end_request_record(req.requestId, appStatus, protocolStatus))
        if remove:
            if self._active is req:
                self._active = None
            # After FCGI_ABORT_REQUEST the web server sends nothing more for the request.
            complete = req.aborted or (req.params_ended and req.stdin._eof)
            self._end_id(req.requestId, complete=complete)
        if not (req.flags & fcgi_base.FCGI_KEEP_CONN) and self._active is None:
            self._cleanupSocket(req)
            self._keepGoing = False

    def _rest_of_input(self, req: FCGIRequest) -> bool | None:
        """Whether the front end has sent all it will for `req`, reading what has come;
        None if something other than its body came, which ends the reading.

        The end of a request's body (an empty FCGI_STDIN record) usually arrives with its
        parameters, or was read by the application; body records it left unread are read
        and dropped here, as far as they have arrived. After FCGI_ABORT_REQUEST nothing
        more comes.
        """
        if req.stdin._eof or req.aborted:
            return True
        while True:
            record = self._next_record(block=False)
            if record is None:
                return False
            kind, request_id, content = record
            if request_id != req.requestId:
                return None
            if kind == _ABORT_REQUEST:
                return True
            if kind != _STDIN:
                return None
            if not content:
                return True

    def _nothing_unread(self) -> bool:
        """Whether no input waits in the kernel, so that closing resets nothing.

        The front end sends nothing after a request's body without FCGI_KEEP_CONN: when
        the last read took all there was, there is no need to ask again.
        """
        return self._drained or not readable(self._sock, 0)

    def _cleanupSocket(self, req: FCGIRequest | None = None) -> None:
        """Close at once if the front end has sent all its input for `req`, else drain it
        first.

        Closing over unread input (e.g. a body the application ignored) would reset the
        connection and could cut the response short, so then the input is read until the
        rest of the body has come (or, if anything else comes, the front end closes its
        side), for a bounded time, and no longer than readtimeout once nothing comes; when
        stopping, only what has arrived is read. When all
        input has been read the response is already queued in full, and a plain close
        delivers it, then the end of the stream: waiting for the front end to close first
        cost every request a round trip to it, and pinned the worker to a front end that
        kept its side open.
        """
        if self._closed:
            return
        self._closed = True
        if self.failure is not None:
            # Broken input is not drained: what else comes is dropped with a reset.
            self._sock.close()
            return
        try:
            pending = None if req is None else self._rest_of_input(req)
            if pending and self._nothing_unread():
                return
            self._sock.shutdown(socket.SHUT_WR)
            quiet_since = time.monotonic()
            deadline = quiet_since + self.close_wait_seconds
            stall = self.bounds.readtimeout or self.close_wait_seconds
            while True:
                now = time.monotonic()
                remaining = 0.0 if self._stopping else min(deadline, quiet_since + stall) - now
                wait = min(max(remaining, 0.0), IDLE_POLL_SECONDS)
                if readable(self._sock, wait):
                    quiet_since = time.monotonic()
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
