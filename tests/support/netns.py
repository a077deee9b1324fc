"""Network namespaces that a test makes, links with veth pairs, and always takes down.

A ``Network`` is a set of namespaces (``ip netns add``), each a host of its own, joined
by veth pairs created directly inside them, each pair with its own subnet of
198.18.0.0/15 (and of 2001:2::/48, the IPv6 benchmarking prefix). A thread enters a
namespace with ``inside()`` (setns), so what it starts there, a server through
``subprocess`` or a client socket, lives in that host's network. On close every
process still in one of its namespaces is stopped and the namespaces are deleted,
which deletes their links: nothing outlives the test, even when it fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

CLONE_NEWNET = 0x40000000
PREFIX = "rftest"
_libc = ctypes.CDLL(None, use_errno=True)
_subnets = itertools.count(1)
_names = itertools.count(1)
_T = TypeVar("_T")


def require() -> None:
    """Fail in CI, skip elsewhere, when namespaces cannot be made here."""
    missing = ""
    if os.geteuid() != 0:
        missing = "root (to make network namespaces)"
    elif shutil.which("ip") is None:
        missing = "the ip command (Debian package: iproute2)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"these tests need {missing}; CI must run them.")
        pytest.skip(f"these tests need {missing}.")


def ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(pids: Callable[[], list[int]], grace: float = 5.0) -> None:
    """TERM, then KILL, the processes `pids` lists, until it lists none."""
    for pid in pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Namespace:
    """One host: a network namespace with its loopback up."""

    name: str
    role: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def ip(self, *args: str) -> str:
        return ip("-n", self.name, *args)

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """The calling thread's network is this host's until the block ends."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(self.path, os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)

    def call(self, function: Callable[[], _T]) -> _T:
        with self.inside():
            return function()

    def pids(self) -> list[int]:
        """Processes in this namespace, zombies left out."""
        found = []
        for pid in ip("netns", "pids", self.name).split():
            try:
                with open(f"/proc/{pid}/stat", "rb") as handle:
                    state = handle.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if state != b"Z":
                found.append(int(pid))
        return found


@dataclass
class Link:
    """A veth pair between two hosts, and each end's addresses."""

    left: Namespace
    right: Namespace
    left_dev: str
    right_dev: str
    left_ip: str
    right_ip: str
    left_ip6: str
    right_ip6: str
    subnet: int

    def extra_address(self, host: int) -> str:
        """Another IPv4 address of this link's subnet, given to the right-hand host."""
        address = f"198.18.{self.subnet}.{host}"
        self.right.ip("addr", "add", f"{address}/24", "dev", self.right_dev)
        return address

    def extra_address6(self, host: int) -> str:
        address = f"2001:2:0:{self.subnet:x}::{host:x}"
        self.right.ip("-6", "addr", "add", f"{address}/64", "dev", self.right_dev, "nodad")
        return address


@dataclass
class Network:
    """Namespaces joined by veth pairs; ``close()`` takes them all down."""

    hosts: list[Namespace] = field(default_factory=list)
    tag: str = field(default_factory=lambda: f"{PREFIX}-{os.getpid()}-{next(_names)}")

    def host(self, role: str) -> Namespace:
        if not self.hosts:
            remove_stale()
        namespace = Namespace(f"{self.tag}-{role}", role)
        ip("netns", "add", namespace.name)
        self.hosts.append(namespace)
        namespace.ip("link", "set", "lo", "up")
        return namespace

    def link(self, left: Namespace, right: Namespace) -> Link:
        """Join two hosts: left gets .1 (and ::1), right .2 (and ::2) of a new subnet."""
        subnet = next(_subnets)
        if subnet > 255:
            raise RuntimeError("more links than 198.18.1.0-198.18.255.0 /24 subnets")
        left_dev, right_dev = f"to-{right.role}", f"to-{left.role}"
        ip(
            "link", "add", left_dev, "netns", left.name, "type", "veth",
            "peer", "name", right_dev, "netns", right.name,
        )  # fmt: skip
        link = Link(
            left, right, left_dev, right_dev,
            f"198.18.{subnet}.1", f"198.18.{subnet}.2",
            f"2001:2:0:{subnet:x}::1", f"2001:2:0:{subnet:x}::2",
            subnet,
        )  # fmt: skip
        for host, dev, v4, v6 in (
            (left, left_dev, link.left_ip, link.left_ip6),
            (right, right_dev, link.right_ip, link.right_ip6),
        ):
            host.ip("addr", "add", f"{v4}/24", "dev", dev)
            # nodad: usable at once, no duplicate detection on a link of two.
            host.ip("-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            host.ip("link", "set", dev, "up")
        return link

    def close(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(RuntimeError):
                _stop(host.pids)
        for host in self.hosts:
            with contextlib.suppress(RuntimeError):
                ip("netns", "delete", host.name)
        self.hosts.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_stale() -> None:
    """Namespaces of this module whose test process is gone (killed before teardown)."""
    for line in ip("netns", "list").splitlines():
        found = re.match(rf"({PREFIX}-(\d+)-\S+)", line)
        if found is None or _alive(int(found.group(2))):
            continue
        stale = Namespace(found.group(1), "stale")
        with contextlib.suppress(RuntimeError):
            _stop(stale.pids)
            ip("netns", "delete", stale.name)


def refused_at_once(address: tuple[str, int], source: str, timeout: float = 5.0) -> bool:
    """Connect from `source` and send nothing: a refused client is closed at once, an
    admitted one is left waiting for its request (False after `timeout`)."""
    with socket.create_connection(address, timeout, source_address=(source, 0)) as sock:
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def in_threads(host: Namespace, count: int, work: Callable[[int], None]) -> list[threading.Thread]:
    """`count` started threads, each inside `host`, each running ``work(index)``."""

    def run(index: int) -> None:
        with host.inside():
            work(index)

    threads = [threading.Thread(target=run, args=(index,), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    return threads
