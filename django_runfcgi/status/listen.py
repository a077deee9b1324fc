"""The kernel's accept queue of a listening socket: how many connections wait for a
worker, and how many may wait (the backlog).

PHP-FPM reads it with TCP_INFO, for TCP only. Linux gives it for a listening TCP socket
in ``tcp_info``: ``tcpi_unacked`` holds the connections waiting to be accepted and
``tcpi_sacked`` the backlog. /proc/net/unix does not have it for a unix socket; the
kernel's socket diagnostics (sock_diag netlink, what ``ss -xl`` reads) do: with
UDIAG_SHOW_RQLEN a listening unix socket reports its waiting connections and its
backlog. Elsewhere, or when the kernel refuses, the queue is unknown (None).
"""

from __future__ import annotations

import os
import socket
import struct
from typing import NamedTuple

_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
# struct tcp_info: eight single bytes, then rto, ato, snd_mss, rcv_mss, unacked, sacked.
_TCP_QUEUE = struct.Struct("=8x4I2I")
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_TCP_LISTEN = 10
_UDIAG_SHOW_RQLEN = 0x10
_UNIX_DIAG_RQLEN = 4
_NLMSG = struct.Struct("=IHHII")
# struct unix_diag_req: family, protocol, pad, states, inode, show, cookie[2].
_UNIX_DIAG_REQ = struct.Struct("=BBHIII2I")
# struct unix_diag_msg: family, type, state, pad, inode, cookie[2].
_UNIX_DIAG_MSG = struct.Struct("=BBBBI2I")
_RTATTR = struct.Struct("=HH")
_NO_COOKIE = 0xFFFFFFFF


class Queue(NamedTuple):
    """Connections waiting to be accepted, and how many may wait."""

    waiting: int
    backlog: int


def listen_queue(sock: socket.socket) -> Queue | None:
    """The accept queue of `sock`, a listening socket; None where the kernel says nothing."""
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return _tcp_queue(sock)
        if sock.family == socket.AF_UNIX:
            return _unix_queue(os.fstat(sock.fileno()).st_ino)
    except (OSError, struct.error):
        return None
    return None


def _tcp_queue(sock: socket.socket) -> Queue | None:
    if _TCP_INFO is None:
        return None
    info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 104)
    *_, unacked, sacked = _TCP_QUEUE.unpack_from(info)
    return Queue(unacked, sacked)


def _unix_queue(inode: int) -> Queue | None:
    """Ask sock_diag about the listening unix socket with this inode."""
    request = _UNIX_DIAG_REQ.pack(
        socket.AF_UNIX, 0, 0, 1 << _TCP_LISTEN, inode, _UDIAG_SHOW_RQLEN, _NO_COOKIE, _NO_COOKIE
    )
    message = _NLMSG.pack(_NLMSG.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as diag:
        diag.settimeout(1.0)
        diag.sendto(message + request, (0, 0))
        reply = diag.recv(8192)
    length, kind, _, _, _ = _NLMSG.unpack_from(reply)
    if kind == _NLMSG_ERROR or kind != _SOCK_DIAG_BY_FAMILY:
        return None
    offset = _NLMSG.size + _UNIX_DIAG_MSG.size
    while offset + _RTATTR.size <= min(length, len(reply)):
        size, attribute = _RTATTR.unpack_from(reply, offset)
        if size < _RTATTR.size:
            return None
        if attribute == _UNIX_DIAG_RQLEN:
            waiting, backlog = struct.unpack_from("=II", reply, offset + _RTATTR.size)
            return Queue(waiting, backlog)
        offset += (size + 3) & ~3
    return None
