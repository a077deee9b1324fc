"""Bind the listening socket in the foreground, so a bad address fails on the terminal.

flup binds inside ``run()``, after the process may have detached, unlinks any path it
is given (a regular file, or a live instance's socket) and reports bind errors as a
``TypeError`` on Python 3. Binding here first avoids all three.

A socket may also be handed over instead: a listening one by a web server (fd 0) or
systemd (fd 3), or one accepted connection by a super-server. Such a socket belongs to
whoever passed it; its file is never removed here.
"""

from __future__ import annotations

import _socket
import errno
import ipaddress
import logging
import os
import re
import secrets
import socket
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django_runfcgi.addresses import TCP, Bind, Inherited, Unix

logger = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux, including the terminating NUL.
UNIX_PATH_MAX = 107


class BindError(Exception):
    """The socket could not be bound; the message says why in words."""


class InUse(BindError):
    """Another server listens on the address."""


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
        try:
            st = os.lstat(self.bind.path)
            if (st.st_dev, st.st_ino) == self.created:
                os.unlink(self.bind.path)
        except FileNotFoundError:
            pass
        except PermissionError:
            # After user= the directory must be the user's (mkdir=true makes it so); the
            # next start removes the socket that nobody answers on.
            logger.warning(
                "Cannot remove the socket %r: its directory is not writable by this user.",
                str(self.bind.path),
            )
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
    if code == errno.EEXIST:
        return f"Cannot create {where}: another program created it meanwhile."
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


def _bound_tcp(target: TCP) -> socket.socket:
    """A TCP socket bound to ``target``, not yet listening: bind() alone finds a port in
    use, a missing address or a denied port, and lets no connection in."""
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
    except OSError as err:
        sock.close()
        error = InUse if err.errno == errno.EADDRINUSE else BindError
        raise error(_in_words(err, where)) from None
    return sock


def bind_tcp(target: TCP) -> Listener:
    sock = _bound_tcp(target)
    try:
        sock.listen(socket.SOMAXCONN)
    except OSError as err:
        sock.close()
        raise BindError(_in_words(err, f"port {target.port} on {target.host}")) from None
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


def _temporary_path(path: Path) -> Path:
    """Where a socket is bound before it gets its owner and group and takes its name."""
    return path.with_name(f".{path.name}.{secrets.token_hex(3)}")


def _is_temporary_path_of(name: str, path: Path) -> bool:
    bound = Path(name)
    return (
        bound.parent == path.parent
        and re.fullmatch(rf"\.{re.escape(path.name)}\.[0-9a-f]{{6}}", bound.name) is not None
    )


def _check_length(path: Path, temporary: bool) -> None:
    extra = len(os.fsencode(_temporary_path(path))) - len(os.fsencode(path)) if temporary else 0
    length = len(os.fsencode(path))
    if length + extra <= UNIX_PATH_MAX:
        return
    if not extra:
        raise BindError(
            f"socket={str(path)!r} is too long for a unix socket "
            f"({length} bytes; at most {UNIX_PATH_MAX}).",
        )
    raise BindError(
        f"socket={str(path)!r} is too long for a unix socket with socketowner= or "
        f"socketgroup= ({length} bytes; at most {UNIX_PATH_MAX - extra}, since the socket "
        f"is first bound under a name {extra} bytes longer).",
    )


def _is_stale(path: Path, where: str) -> bool:
    """Whether a socket file that nobody answers on is in the way; raise if a file that
    is not a socket, or a live server's socket, is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise BindError(_in_words(err, where)) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(f"{str(path)!r} exists and is not a socket; refusing to remove it.")
    if _is_live(path):
        raise InUse(
            f"Another server is listening on {str(path)!r}; refusing to take its socket.",
        )
    return True


def _remove_stale(path: Path, where: str) -> None:
    if _is_stale(path, where):
        # Left behind by a server that is gone: nobody answers on it.
        with suppress(FileNotFoundError):
            os.unlink(path)


def _chown_in_words(err: OSError, path: Path, owner: int | None, group: int | None) -> str:
    if err.errno != errno.EPERM:
        return f"Cannot change the owner or group of socket {str(path)!r}: {err.strerror}."
    if owner is not None and owner != os.geteuid():
        return (
            f"Cannot give socket {str(path)!r} to socketowner= uid {owner}: only root can "
            "change a file's owner; start runfcgi as root (with user= to drop root after bind)."
        )
    return (
        f"Cannot give socket {str(path)!r} to socketgroup= gid {group}: runfcgi's user "
        "must be root or a member of that group."
    )


def bind_unix(
    target: Unix,
    umask: int,
    mode: int | None = None,
    owner: int | None = None,
    group: int | None = None,
) -> Listener:
    """Bind ``target`` with its final mode, owner and group from its first moment.

    The mode comes from the umask in force at bind (``mode`` sets it), so the file never
    has another. An owner or group can only be changed after bind, so then the socket is
    bound under a temporary name in the same directory, given its owner and group, and
    linked to its real name: a web server connecting at any time either finds no socket
    or one it may use, never one that refuses it. Unlike rename(), link() never replaces
    a socket that another server bound meanwhile. The listening socket's own name
    (getsockname) is then the temporary one, which bound_to() recognises.
    """
    path = target.path
    where = f"socket {str(path)!r}"
    chown = owner is not None or group is not None
    _check_length(path, chown)
    _remove_stale(path, where)

    bound = _temporary_path(path) if chown else path
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _umask(umask if mode is None else 0o777 & ~mode):
            sock.bind(str(bound))
    except OSError as err:
        sock.close()
        raise BindError(_in_words(err, where)) from None
    created: list[Path] = [bound]
    try:
        if chown:
            try:
                os.chown(bound, -1 if owner is None else owner, -1 if group is None else group)
            except OSError as err:
                raise BindError(_chown_in_words(err, path, owner, group)) from None
            try:
                os.link(bound, path)
            except OSError as err:
                raise BindError(_in_words(err, where)) from None
            created.append(path)
            os.unlink(bound)
            created.remove(bound)
        sock.listen(socket.SOMAXCONN)
        st = os.lstat(path)
    except BaseException as err:
        sock.close()
        for leftover in created:
            with suppress(FileNotFoundError):
                os.unlink(leftover)
        if isinstance(err, OSError):
            raise BindError(_in_words(err, where)) from None
        raise
    return Listener(sock, target, created=(st.st_dev, st.st_ino))


def check_listen(target: TCP | Unix, owner: int | None = None, group: int | None = None) -> None:
    """What :func:`listen` would fail on, found without listening or removing anything:
    the TCP address is bound for a moment without listen(), so no connection comes in;
    for a unix socket, the path, what is in its way and its directory are looked at."""
    if isinstance(target, TCP):
        _bound_tcp(target).close()
        return
    path = target.path
    where = f"socket {str(path)!r}"
    _check_length(path, owner is not None or group is not None)
    _is_stale(path, where)
    directory = path.parent
    if directory.is_dir() and not os.access(directory, os.W_OK | os.X_OK):
        raise BindError(_in_words(OSError(errno.EACCES, "Permission denied"), where))
    if os.geteuid() == 0:
        return
    if owner is not None and owner != os.geteuid():
        raise BindError(_chown_in_words(OSError(errno.EPERM, ""), path, owner, group))
    if group is not None and group not in (os.getegid(), *os.getgroups()):
        raise BindError(_chown_in_words(OSError(errno.EPERM, ""), path, None, group))


def handed_over(fd: int, source: str) -> socket.socket:
    """The stream socket a web server, super-server or systemd passed on ``fd``.

    The descriptor is duplicated: fd 0 stays what the process was given.
    """
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError as err:
        if err.errno in (errno.ENOTSOCK, errno.EBADF):
            if fd == 0:
                raise BindError(
                    "No host=/port= or socket= given, and standard input is not a socket. "
                    "Give host= and port=, or socket=, or let the web server start "
                    "runfcgi (mod_fcgid, lighttpd bin-path) or a super-server (inetd, "
                    "systemd) pass it a socket.",
                ) from None
            raise BindError(f"File descriptor {fd} from {source} is not a socket.") from None
        raise
    if sock.type != socket.SOCK_STREAM:
        sock.close()
        raise BindError(
            f"The socket {source} passed on file descriptor {fd} is not a stream socket; "
            "runfcgi needs one (ListenStream= for systemd, 'stream' for inetd).",
        )
    return sock


def is_listening(sock: socket.socket) -> bool:
    """A listening socket (serve it) rather than one accepted connection (inetd style)."""
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def address_of(sock: socket.socket) -> str:
    """The socket's address in the words runfcgi announces a bind with."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(name, bytes):
            return "unix:@" + name.lstrip(b"\0").decode("utf-8", "replace")
        return f"unix:{name}" if name else "an unnamed unix socket"
    return str(TCP(name[0], name[1]))


def _same_tcp(sock: socket.socket, target: TCP) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    host, port = sock.getsockname()[:2]
    try:
        infos = socket.getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return False
    listening = ipaddress.ip_address(host.partition("%")[0])
    for info in infos:
        wanted = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
        if info[4][1] == port and wanted == listening:
            return True
    return False


def bound_to(sock: socket.socket, target: TCP | Unix) -> bool:
    """Whether ``sock`` listens on the address that host/port or socket names."""
    if isinstance(target, TCP):
        return _same_tcp(sock, target)
    if sock.family != socket.AF_UNIX:
        return False
    name = sock.getsockname()
    return isinstance(name, str) and (
        name == str(target.path) or _is_temporary_path_of(name, target.path)
    )


def activated(sock: socket.socket, fd: int, target: Bind) -> Listener:
    """The listening socket systemd passed; bind options, if given, must name it.

    Its socket file belongs to the socket unit: it is never removed here.
    """
    if isinstance(target, Inherited):
        return Listener(sock, Inherited(fd))
    if not bound_to(sock, target):
        given = (
            f"host={target.host} port={target.port}"
            if isinstance(target, TCP)
            else f"socket={str(target.path)!r}"
        )
        passed = address_of(sock)
        sock.close()
        raise BindError(
            f"{given} does not match the socket systemd passed ({passed}); "
            "leave host=, port= and socket= out, or make them name the ListenStream= address.",
        )
    return Listener(sock, Inherited(fd))


def free_standard_streams(sock: socket.socket) -> None:
    """Point stdin, stdout and stderr away from an accepted connection they share.

    inetd passes the connection as standard input and output (and often error): text
    the project prints must not end up inside the protocol's stream. stdin reads
    /dev/null, stdout goes to stderr, or /dev/null if stderr is the connection too.
    """
    conn = os.fstat(sock.fileno())

    def is_conn(fd: int) -> bool:
        try:
            st = os.fstat(fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (conn.st_dev, conn.st_ino)

    shared = [fd for fd in (0, 1, 2) if is_conn(fd)]
    if not shared:
        return
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in shared:
            os.dup2(2 if fd == 1 and 2 not in shared else null, fd)
    finally:
        os.close(null)


def from_stopping_server(sock: socket.socket, target: Bind) -> Listener | None:
    """A listening socket received from a stopping server on the same address.

    None if it is not that address's socket after all (the unix socket file was removed
    or replaced since), so the caller binds afresh.
    """
    if isinstance(target, Inherited) or not bound_to(sock, target):
        return None
    if isinstance(target, Unix):
        try:
            st = os.lstat(target.path)
        except OSError:
            return None
        if not stat.S_ISSOCK(st.st_mode):
            return None
        return Listener(sock, target, created=(st.st_dev, st.st_ino))
    return Listener(sock, target)


def take_over(fd: int, target: Bind, created: tuple[int, int] | None) -> Listener:
    """The listening socket of the master this process was before a reload."""
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    return Listener(sock, target, created=created)


def listen(
    target: TCP | Unix,
    umask: int,
    mode: int | None = None,
    owner: int | None = None,
    group: int | None = None,
) -> Listener:
    if isinstance(target, TCP):
        return bind_tcp(target)
    return bind_unix(target, umask, mode, owner, group)


Stream = _socket.socket
"""A connection's socket: CPython's C socket object, which ``socket.socket`` extends."""


class Acceptor:
    """``accept()`` for a server's loop over one listening socket: the connection, or None
    when there was none to take.

    The standard method reads the listening socket's family and type on every call, two
    enum conversions that cost about as much as the system call; here they are read
    once. The accepted socket is blocking, with the default timeout, as the standard
    one, and is CPython's C socket object itself (a ``Stream``): the Python class
    around it adds only a Python ``__init__`` and ``close()`` to every connection,
    and none of its methods is used on one.

    None also comes after an error for want of file descriptors or memory, which is
    logged, with a pause before the caller tries again: the connection stays queued and
    is accepted once the server has closed others. A server at its file limit keeps
    serving instead of ending, or spinning on the queue.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._accept = sock._accept  # type: ignore[attr-defined]
        self._kind = (int(sock.family), int(sock.type), sock.proto)

    def __call__(self) -> tuple[Stream, Any] | None:
        try:
            fd, addr = self._accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return None  # Another process or thread took it, or the client left.
        except OSError as err:
            if err.errno not in _RESOURCE_ERRORS:
                raise
            logger.error(
                "Cannot accept a connection: %s; trying again in %s s.",
                err,
                ACCEPT_RETRY_SECONDS,
            )
            time.sleep(ACCEPT_RETRY_SECONDS)
            return None
        return Stream(*self._kind, fd), addr


# accept() errors that pass once connections end or memory is freed.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_RETRY_SECONDS = 0.5
"""How long a server out of file descriptors (or memory) waits before accepting again."""
