"""Who may connect: the client filters of the three protocols.

flup let SCGI and AJP clients in only from '127.0.0.1' (AJP refused ::1, SCGI let in any
IPv6 client), and with FCGI_WEB_SERVER_ADDRS set refused every unix-socket client. These
filters are ours; each logs one line per refused connection.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import Any

logger = logging.getLogger("django_runfcgi.protocols")

ClientAddress = str | bytes | tuple[Any, ...]
"""What accept() returns: a (host, port[, flow, scope]) tuple, or '' for a unix socket."""


def ip_address_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, with an IPv4-mapped IPv6 address as plain IPv4; None if not an IP."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class LoopbackOnly:
    """Loopback TCP clients (IPv4, ::1, IPv4-mapped) and every unix-socket client."""

    def __init__(self, protocol_name: str) -> None:
        self._protocol_name = protocol_name

    def __call__(self, addr: ClientAddress) -> bool:
        if not isinstance(addr, tuple):
            return True
        ip = ip_address_of(addr[0])
        if ip is not None and ip.is_loopback:
            return True
        logger.warning(
            "Refused %s connection from %s: only loopback clients may connect",
            self._protocol_name,
            addr[0],
        )
        return False


def _normalize(host: str) -> str:
    ip = ip_address_of(host.strip())
    return host.strip() if ip is None else str(ip)


class WebServerAddrs:
    """FastCGI's FCGI_WEB_SERVER_ADDRS: when set, only the TCP clients it lists; unix-socket
    clients always pass (flup.rst#unix-web-server-addrs). Unset, everyone."""

    def __init__(self, value: str | None = None) -> None:
        if value is None:
            value = os.environ.get("FCGI_WEB_SERVER_ADDRS")
        self._allowed = (
            None
            if value is None
            else {_normalize(part) for part in value.split(",") if part.strip()}
        )

    def __call__(self, addr: ClientAddress) -> bool:
        if not isinstance(addr, tuple) or self._allowed is None:
            return True
        if _normalize(addr[0]) in self._allowed:
            return True
        logger.warning("Refused FastCGI connection from %s: not in FCGI_WEB_SERVER_ADDRS", addr[0])
        return False
