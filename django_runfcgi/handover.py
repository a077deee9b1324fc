"""Give a stopping server's listening socket to the server started right after it.

The historic restart script sends TERM and starts the new server at once. If the old
server closed its socket at TERM, nothing would listen until the new one has loaded the
project and bound, and the web server would answer 502 in between. Instead a server
that stops gracefully keeps its socket open, so connections wait in its queue, and
offers it, for up to ``handover`` seconds, on an abstract unix socket named after the
address. A runfcgi started on the same address takes it, with the waiting connections,
and serves them: no request fails. Only a process of the same user (or root) is given
the socket.

The exchange: the new server connects and receives the old master's pid with the
socket's file descriptor; it answers ``ok`` once its pidfile and logs are in order, and
only then does the old master let go. A new server that fails before that leaves the
socket with the old master, which offers it again until its time is up.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import struct
import sys
import threading
import time
from contextlib import suppress

from django_runfcgi.addresses import TCP, Bind, Unix
from django_runfcgi.workers.signals import start_thread

logger = logging.getLogger(__name__)

_NAME_PREFIX = b"\0django-runfcgi-handover-"
_ACK = b"ok"
_REPLY_SECONDS = 5.0
"""How long either side waits for the other's next message before giving up."""


def offer_name(bind: Bind) -> bytes | None:
    """The abstract socket address under which the socket of ``bind`` is offered.

    None for an inherited socket (whoever passed it keeps it across restarts), and off
    Linux, which alone has abstract unix sockets and SO_PEERCRED.
    """
    if not sys.platform.startswith("linux"):
        return None
    if isinstance(bind, Unix):
        key = f"unix:{os.path.realpath(bind.path)}"
    elif isinstance(bind, TCP):
        key = f"tcp:{bind.host}:{bind.port}"
    else:
        return None
    return _NAME_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:40].encode()


def _peer(conn: socket.socket) -> tuple[int, int]:
    """The pid and uid of the process at the other end of a unix socket."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _trusted(conn: socket.socket, also: int | None = None) -> bool:
    return _peer(conn)[1] in (os.getuid(), 0, also)


class Offer:
    """The stopping side: offers ``sock`` until a new server takes it or time is up."""

    def __init__(self, sock: socket.socket, bind: Bind, seconds: float) -> None:
        self._sock = sock
        self.started = time.monotonic()
        self.deadline = self.started + seconds
        self.taken_by: int | None = None
        self._done = threading.Event()
        name = offer_name(bind)
        if name is None or seconds <= 0:
            self._done.set()
            return
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(name)
        except OSError as err:
            # Another process already offers this address: leave it to that one.
            logger.warning("Cannot offer the listening socket to a new server: %s", err)
            server.close()
            self._done.set()
            return
        server.listen(4)
        server.settimeout(0.2)
        thread = threading.Thread(
            target=self._run, args=(server,), name="runfcgi-handover", daemon=True
        )
        start_thread(thread)

    def _run(self, server: socket.socket) -> None:
        try:
            while self.taken_by is None and time.monotonic() < self.deadline:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    self._serve(conn)
        except Exception:
            logger.exception("Socket handover failed.")
        finally:
            server.close()
            self._done.set()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(_REPLY_SECONDS)
        if not _trusted(conn):
            logger.warning("Refused to hand the listening socket to another user's process.")
            return
        try:
            socket.send_fds(conn, [str(os.getpid()).encode()], [self._sock.fileno()])
            answer = conn.recv(16)
        except OSError:
            return
        if answer == _ACK:
            self.taken_by = _peer(conn)[0]
            logger.warning(
                "Handed the listening socket to the runfcgi started as PID %d.", self.taken_by
            )

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> bool:
        """Block until the socket is taken or the offer ends; True if it was taken."""
        self._done.wait()
        return self.taken_by is not None

    def close(self) -> None:
        """End the offer now (a stop that must not linger, such as INT)."""
        self.deadline = 0.0
        self._done.wait()


class Taken:
    """The starting side: a socket received from a stopping server, not yet confirmed."""

    def __init__(self, conn: socket.socket, sock: socket.socket, pid: int) -> None:
        self._conn = conn
        self.sock = sock
        self.pid = pid

    def confirm(self) -> None:
        """Tell the old master to let go: this server will serve the socket."""
        with self._conn, suppress(OSError):
            self._conn.sendall(_ACK)

    def decline(self) -> None:
        """Give the socket back: this server cannot start after all."""
        self.sock.close()
        self._conn.close()


def take(bind: Bind, trusted_uid: int | None = None) -> Taken | None:
    """The socket a stopping runfcgi offers for ``bind``; None when nobody offers one.

    ``trusted_uid`` is the user this server becomes (user=): the stopping server runs
    as that user when it too was started by root with user=.
    """
    name = offer_name(bind)
    if name is None:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(_REPLY_SECONDS)
    try:
        conn.connect(name)
        if not _trusted(conn, trusted_uid):
            conn.close()
            return None
        message, fds, _flags, _addr = socket.recv_fds(conn, 32, 1)
    except OSError:
        conn.close()
        return None
    if len(fds) != 1 or not message.isdigit():
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    sock = socket.socket(fileno=fds[0])
    sock.set_inheritable(False)
    return Taken(conn, sock, int(message))
