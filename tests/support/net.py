"""Addresses on loopback and unix sockets: free ports, and whether something accepts."""

from __future__ import annotations

import os
import socket

Address = str | tuple[str, int]
"""A unix socket's path, or a (host, port) pair."""


def can_connect(address: Address) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    if not isinstance(address, str) and ":" in address[0]:
        family = socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(address)
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def own_loopback() -> str:
    """A loopback address of this test process's own (127.0.0.0/8 is all loopback on
    Linux): a server bound there gets no connection meant for 127.0.0.1, such as another
    test run's probe of a port that was free for both, so its counts stay exact."""
    pid = os.getpid()
    return f"127.{(pid >> 16) & 0xFF}.{(pid >> 8) & 0xFF}.{(pid & 0xFF) or 1}"
