"""Bind the listening socket in the foreground, so a bad address fails on the terminal.

flup binds inside ``run()``, after the process may have detached, unlinks any path it
is given (a regular file, or a live instance's socket) and reports bind errors as a
``TypeError`` on Python 3. Binding here first avoids all three.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from django_runfcgi.options import TCP, Bind, Inherited, Unix

# sun_path is 108 bytes on Linux, including the terminating NUL.
UNIX_PATH_MAX = 107


class BindError(Exception):
    """The socket could not be bound; the message says why in words."""


@dataclass
class Listener:
    """A bound, listening socket and what is needed to clean up after it."""

    sock: socket.socket
    bind: Bind
    # (st_dev, st_ino) of the unix socket file we created; only that file is removed.
    created: tuple[int, int] | None = None

    def close(self) -> None:
        self.sock.close()

    def remove_socket_file(self) -> None:
        """Unlink our unix socket file, unless another server has replaced it since."""
        if self.created is None or not isinstance(self.bind, Unix):
            return
        with suppress(FileNotFoundError):
            st = os.lstat(self.bind.path)
            if (st.st_dev, st.st_ino) == self.created:
                os.unlink(self.bind.path)
        self.created = None


def _in_words(err: OSError, where: str) -> str:
    code = err.errno
    if code == errno.EADDRINUSE:
        return f"{where} is already in use by another program."
    if code == errno.EACCES:
        return f"Permission denied to listen on {where}."
    if code == errno.EADDRNOTAVAIL:
        return f"Cannot listen on {where}: no network interface on this machine has that address."
    if code == errno.ENOENT:
        return f"Cannot create {where}: its directory does not exist."
    if code == errno.ENOTDIR:
        return f"Cannot create {where}: a part of its path is not a directory."
    if code == errno.EROFS:
        return f"Cannot create {where}: the file system is read-only."
    return f"Cannot listen on {where}: {err.strerror or err}."


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def bind_tcp(target: TCP) -> Listener:
    where = f"port {target.port} on {target.host}"
    try:
        infos = socket.getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        raise BindError(
            f"Cannot listen on host={target.host!r}: the name does not resolve."
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError as err:
        sock.close()
        raise BindError(_in_words(err, where)) from None
    return Listener(sock, target)


def _is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


def bind_unix(target: Unix, umask: int) -> Listener:
    path = target.path
    where = f"socket {str(path)!r}"
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise BindError(
            f"socket={str(path)!r} is too long for a unix socket "
            f"({len(os.fsencode(path))} bytes; at most {UNIX_PATH_MAX}).",
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise BindError(_in_words(err, where)) from None
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise BindError(f"{str(path)!r} exists and is not a socket; refusing to remove it.")
        if _is_live(path):
            raise BindError(
                f"Another server is listening on {str(path)!r}; refusing to take its socket.",
            )
        # Left behind by a server that is gone: nobody answers on it.
        with suppress(FileNotFoundError):
            os.unlink(path)

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _umask(umask):
            sock.bind(str(path))
        sock.listen(socket.SOMAXCONN)
        st = os.lstat(path)
    except OSError as err:
        sock.close()
        raise BindError(_in_words(err, where)) from None
    return Listener(sock, target, created=(st.st_dev, st.st_ino))


def adopt(target: Inherited) -> Listener:
    """Take the listening socket a web server passed on a file descriptor."""
    try:
        sock = socket.socket(fileno=os.dup(target.fd))
    except OSError as err:
        if err.errno in (errno.ENOTSOCK, errno.EBADF):
            raise BindError(
                "No host=/port= or socket= given, and standard input is not a listening "
                "socket. Give host= and port=, or socket=, or let the web server start "
                "runfcgi (mod_fcgid, lighttpd bin-path).",
            ) from None
        raise
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if not listening:
        sock.close()
        raise BindError(
            "Standard input is a socket but not a listening one: runfcgi without host=, "
            "port= or socket= must be started by the web server with its listening socket.",
        )
    return Listener(sock, target)


def take_over(fd: int, target: Bind, created: tuple[int, int] | None) -> Listener:
    """The listening socket of the master this process was before a reload."""
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    return Listener(sock, target, created=created)


def listen(target: Bind, umask: int) -> Listener:
    if isinstance(target, TCP):
        return bind_tcp(target)
    if isinstance(target, Unix):
        return bind_unix(target, umask)
    return adopt(target)
