"""Which processes hold the socket listening on an address, from Linux's /proc.

``runfcgi stop|reload|reopen`` without ``pidfile=`` finds the server this way, as
``ss -lxp`` and ``fuser`` do: /proc/net/unix (a path) or /proc/net/tcp and tcp6 (state
0A, LISTEN: an address and port) give the socket's inode, and each /proc/PID/fd that
links to ``socket:[inode]`` is a holder. Prefork workers inherit the master's socket,
so the server is the holder whose parent is not one: the master. The processes of
other users cannot be read without privileges; they are reported as such, never
guessed at.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from django_runfcgi.addresses import TCP, Unix

PROC = Path("/proc")
TCP_LISTEN = "0A"
UNIX_ACCEPTING = 0x10000
"""__SO_ACCEPTCON in /proc/net/unix's Flags: a socket that listen() was called on."""


@dataclass
class Holders:
    """The processes holding a listening socket, and what could not be read."""

    pids: set[int] = field(default_factory=set)
    unreadable: set[int] = field(default_factory=set)
    """Processes whose descriptors this user may not read."""

    def masters(self) -> set[int]:
        """The holders whose parent is not a holder: the servers, not their workers."""
        return {pid for pid in self.pids if parent(pid) not in self.pids}


def available() -> bool:
    """Whether this system has the /proc tables read here (Linux)."""
    return (PROC / "net" / "unix").exists()


def parent(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_bytes()
        return int(stat.rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _table(name: str) -> list[list[str]]:
    try:
        lines = (PROC / "net" / name).read_text().splitlines()[1:]
    except OSError:
        return []
    return [line.split() for line in lines]


def _unix_inodes(path: Path) -> set[int]:
    wanted = {str(path), os.path.abspath(path), os.path.realpath(path)}
    inodes = set()
    for row in _table("unix"):
        # Num RefCount Protocol Flags Type St Inode [Path]
        if len(row) >= 8 and row[7] in wanted and int(row[3], 16) & UNIX_ACCEPTING:
            inodes.add(int(row[6]))
    return inodes


def _address(hexed: str) -> str:
    """/proc/net/tcp's address: 32-bit words in the kernel's byte order."""
    words = [int(hexed[i : i + 8], 16) for i in range(0, len(hexed), 8)]
    raw = struct.pack(f"={len(words)}I", *words)
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


def _tcp_inodes(bind: TCP) -> set[int]:
    try:
        found = socket.getaddrinfo(bind.host, bind.port, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    wanted = {str(info[4][0]) for info in found}
    # A socket on the wildcard address listens on this one too.
    wanted |= {"0.0.0.0", "::"}
    inodes = set()
    for name in ("tcp", "tcp6"):
        for row in _table(name):
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if len(row) < 10 or row[3] != TCP_LISTEN:
                continue
            host, _, port = row[1].rpartition(":")
            address = _address(host)
            if address.startswith("::ffff:"):
                address = address[len("::ffff:") :]
            if int(port, 16) == bind.port and address in wanted:
                inodes.add(int(row[9]))
    return inodes


def holders(bind: TCP | Unix) -> Holders:
    """Every process (but this one) holding a socket that listens on ``bind``."""
    inodes = _unix_inodes(bind.path) if isinstance(bind, Unix) else _tcp_inodes(bind)
    found = Holders()
    if not inodes:
        return found
    links = {f"socket:[{inode}]" for inode in inodes}
    me = os.getpid()
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            fds = os.listdir(entry / "fd")
        except PermissionError:
            found.unreadable.add(pid)
            continue
        except OSError:  # gone meanwhile
            continue
        for fd in fds:
            try:
                target = os.readlink(entry / "fd" / fd)
            except OSError:
                continue
            if target in links:
                found.pids.add(pid)
                break
    return found
