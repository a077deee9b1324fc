"""Who may connect: the client filters of the three protocols.

flup let SCGI and AJP clients in only from '127.0.0.1' (AJP refused ::1, SCGI let in any
IPv6 client), and with FCGI_WEB_SERVER_ADDRS set refused every unix-socket client. These
filters are ours. Without allow= each protocol keeps its own default (LoopbackOnly,
WebServerAddrs); allow= (parse_allow, Allowed) replaces it with a list of addresses and
networks for all three. Unix-socket clients always pass: the file's permissions decide.

A refused connection is logged through a RefusalLog: at most one line per address a
minute, and a bounded number of lines a minute in all, so a port scan cannot flood the
log. Its counts live in shared memory made before the prefork workers are forked, so
the bounds hold for the whole server, not per worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import logging
import math
import mmap
import os
import socket
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("django_runfcgi.protocols")

ClientAddress = str | bytes | tuple[Any, ...]
"""What accept() returns: a (host, port[, flow, scope]) tuple, or '' for a unix socket."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")
ALLOW_EXAMPLES = "such as 127.0.0.1, 198.18.0.0/24, ::1, 2001:db8::/32 or fe80::1%eth0"


def ip_address_of(host: str) -> IPAddress | None:
    """The address, with an IPv4-mapped IPv6 address as plain IPv4; None if not an IP."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class AllowError(ValueError):
    """One allow= entry that is not an address or network; says what to write instead."""


@dataclass(frozen=True)
class AllowEntry:
    """One address or network of allow=; a scope (``%eth0``) limits it to one interface."""

    network: IPNetwork
    scope: str | None = None

    def __str__(self) -> str:
        address = str(self.network.network_address)
        if self.scope is not None:
            address += f"%{self.scope}"
        if self.network.prefixlen == self.network.max_prefixlen:
            return address
        return f"{address}/{self.network.prefixlen}"

    def admits(self, ip: IPAddress, scopes: Collection[str]) -> bool:
        if ip.version != self.network.version or ip not in self.network:
            return False
        return self.scope is None or self.scope in scopes


def _parse_entry(text: str) -> AllowEntry:
    address_text, slash, prefix = text.partition("/")
    if address_text.startswith("[") and address_text.endswith("]"):
        address_text = address_text[1:-1]
    host, percent, scope = address_text.partition("%")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise AllowError(
            f"{text!r} is not an IP address or network; use addresses and networks "
            f"{ALLOW_EXAMPLES}"
        ) from None
    if percent:
        if not scope:
            raise AllowError(f"{text!r} has an empty scope after '%'")
        if not isinstance(ip, ipaddress.IPv6Address) or ip not in _LINK_LOCAL:
            raise AllowError(
                f"{text!r} has a scope (%{scope}), which only a link-local IPv6 address "
                "(fe80::/10) takes; leave it out"
            )
    if slash and not (prefix.isascii() and prefix.isdigit()):
        raise AllowError(f"{text!r} needs a prefix length after '/', such as /24")
    length = int(prefix) if slash else ip.max_prefixlen
    if length > ip.max_prefixlen:
        raise AllowError(
            f"{text!r} has a prefix longer than the address; use /0 to /{ip.max_prefixlen}"
        )
    network = ipaddress.ip_network((ip, length), strict=False)
    if network.network_address != ip:
        raise AllowError(
            f"{text!r} has bits set past its prefix; write the network as {network}, "
            f"or the address alone"
        )
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        # A client on a dual-stack socket (host=::) is matched as the IPv4 it is.
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        assert mapped is not None, "an address in ::ffff:0:0/96 maps to IPv4"
        network = ipaddress.IPv4Network((mapped, length - _MAPPED.prefixlen))
    return AllowEntry(network, scope or None)


def parse_allow(text: str) -> tuple[AllowEntry, ...]:
    """allow=: comma-separated IPv4 and IPv6 addresses and networks (CIDR).

    An IPv4-mapped IPv6 address (``::ffff:198.18.0.2``) is taken as its IPv4 address, and
    a link-local IPv6 address may name its interface (``fe80::1%eth0``, or its index).
    """
    parts = [part.strip() for part in text.split(",")]
    if parts == [""]:
        raise AllowError(f"no address is given; list addresses and networks {ALLOW_EXAMPLES}")
    if "" in parts:
        raise AllowError("an entry is empty; separate addresses and networks by single commas")
    return tuple(dict.fromkeys(_parse_entry(part) for part in parts))


_HEADER = struct.Struct("=dQQ8x")
"""The whole server's counts: when the current minute began, lines logged in it, and
refusals left out since the last line."""
_SLOT = struct.Struct("=16sdQ")
"""One address: its key, when it may have its next line, and refusals left out since."""


def _shared_file(size: int) -> int:
    """A file in memory for the counts, which fcntl locks guard between processes."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("runfcgi-refusals")
    else:
        fd, path = tempfile.mkstemp(prefix="runfcgi-refusals-")
        os.unlink(path)
    os.ftruncate(fd, size)
    return fd


def _release(table: mmap.mmap, fd: int) -> None:
    table.close()
    os.close(fd)


class RefusalLog:
    """Logs refused connections: one line per address per ``WINDOW`` seconds, and at most
    ``LINES_PER_WINDOW`` lines per window in all, each saying how many went unlogged.

    The counts are kept in a fixed table of ``SLOTS`` addresses in memory shared with
    every process forked after it is made (prefork workers), so its size is bounded
    whatever the clients do; an address that takes another's slot adds that one's
    count to the other addresses' one.
    """

    WINDOW = 60.0
    LINES_PER_WINDOW = 20
    SLOTS = 256

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._threads = threading.Lock()
        size = _HEADER.size + self.SLOTS * _SLOT.size
        self._fd = _shared_file(size)
        self._table = mmap.mmap(self._fd, size)
        weakref.finalize(self, _release, self._table, self._fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._threads:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def refused(self, what: str, host: str, reason: str) -> None:
        """Count a refusal of `host`; log ``Refused {what} from {host}: {reason}`` unless
        this address or the whole server has had its lines for now."""
        ip = ip_address_of(host)
        name = host if ip is None or "%" in host else str(ip)
        key = hashlib.blake2b(name.encode(errors="replace"), digest_size=16).digest()
        at = _HEADER.size + int.from_bytes(key[:4], "big") % self.SLOTS * _SLOT.size
        table = self._table
        now = self._clock()
        with self._locked():
            window_start, lines, unlogged = _HEADER.unpack_from(table, 0)
            held, next_line, skipped = _SLOT.unpack_from(table, at)
            if held != key:
                unlogged += skipped
                next_line, skipped = -math.inf, 0
            if now - window_start >= self.WINDOW:
                window_start, lines = now, 0
            if now < next_line or lines >= self.LINES_PER_WINDOW:
                if now < next_line:
                    skipped += 1
                else:
                    unlogged += 1
                _SLOT.pack_into(table, at, key, next_line, skipped)
                _HEADER.pack_into(table, 0, window_start, lines, unlogged)
                return
            _SLOT.pack_into(table, at, key, now + self.WINDOW, 0)
            _HEADER.pack_into(table, 0, window_start, lines + 1, 0)
        left_out = []
        if skipped:
            left_out.append(f"{skipped} more from this address since its last line")
        if unlogged:
            left_out.append(f"{unlogged} from other addresses")
        text = f"Refused {what} from {name}: {reason}"
        if left_out:
            text += f" (not logged: {', '.join(left_out)})"
        logger.warning("%s", text)


def _interfaces(addr: tuple[Any, ...]) -> set[str]:
    """The interface a link-local client is on, by index and by name: accept() gives
    the index (an IPv6 address's fourth item), the entries of allow= either."""
    name = str(addr[0]).partition("%")[2]
    names = {name} if name else set()
    index = addr[3] if len(addr) >= 4 else 0
    if isinstance(index, int) and index:
        names.add(str(index))
        with contextlib.suppress(OSError):
            names.add(socket.if_indextoname(index))
    return names


class ClientFilter:
    """Every unix-socket client passes; a TCP client passes when ``admits`` says so, and
    is otherwise refused with a line in the log (see RefusalLog)."""

    reason = "refused"

    def __init__(self, protocol_name: str, refusals: RefusalLog | None = None) -> None:
        self._what = f"{protocol_name} connection"
        self.refusals = RefusalLog() if refusals is None else refusals

    def __call__(self, addr: ClientAddress) -> bool:
        if not isinstance(addr, tuple):
            return True
        if self.admits(addr):
            return True
        host = str(addr[0])
        interfaces = sorted(_interfaces(addr), key=str.isdigit)
        if interfaces and "%" not in host:
            host += f"%{interfaces[0]}"  # its name when it has one
        self.refusals.refused(self._what, host, self.reason)
        return False

    def admits(self, addr: tuple[Any, ...]) -> bool:
        raise NotImplementedError


class LoopbackOnly(ClientFilter):
    """SCGI's and AJP's default: loopback TCP clients (IPv4, ::1, IPv4-mapped)."""

    reason = "only loopback clients may connect; allow= lets other addresses in"

    def admits(self, addr: tuple[Any, ...]) -> bool:
        ip = ip_address_of(addr[0])
        return ip is not None and ip.is_loopback


def _normalize(host: str) -> str:
    ip = ip_address_of(host.strip())
    return host.strip() if ip is None else str(ip)


class WebServerAddrs(ClientFilter):
    """FastCGI's default: when FCGI_WEB_SERVER_ADDRS is set, only the TCP clients it
    lists; unix-socket clients always pass (flup.rst#unix-web-server-addrs). Unset,
    everyone."""

    reason = "not in FCGI_WEB_SERVER_ADDRS"

    def __init__(self, value: str | None = None, refusals: RefusalLog | None = None) -> None:
        super().__init__("FastCGI", refusals)
        if value is None:
            value = os.environ.get("FCGI_WEB_SERVER_ADDRS")
        self._allowed = (
            None
            if value is None
            else {_normalize(part) for part in value.split(",") if part.strip()}
        )

    def admits(self, addr: tuple[Any, ...]) -> bool:
        return self._allowed is None or _normalize(addr[0]) in self._allowed


class Allowed(ClientFilter):
    """allow=: the TCP clients whose address is in one of the entries, for any protocol."""

    reason = "not in allow="

    def __init__(
        self,
        protocol_name: str,
        entries: tuple[AllowEntry, ...],
        refusals: RefusalLog | None = None,
    ) -> None:
        super().__init__(protocol_name, refusals)
        self.entries = entries
        self._scoped = any(entry.scope is not None for entry in entries)

    def admits(self, addr: tuple[Any, ...]) -> bool:
        ip = ip_address_of(str(addr[0]))
        if ip is None:
            return False
        if self._scoped and ip.is_link_local:
            return any(entry.admits(ip, _interfaces(addr)) for entry in self.entries)
        return any(entry.admits(ip, ()) for entry in self.entries)


def allowed(protocol_name: str, entries: tuple[AllowEntry, ...]) -> Allowed:
    """The filter for allow=; over FastCGI it takes the place of FCGI_WEB_SERVER_ADDRS."""
    ignored = os.environ.get("FCGI_WEB_SERVER_ADDRS")
    if protocol_name == "FastCGI" and ignored is not None:
        logger.warning(
            "allow= is given, so FCGI_WEB_SERVER_ADDRS=%r is ignored; "
            "only the addresses in allow= may connect.",
            ignored,
        )
    return Allowed(protocol_name, entries)
