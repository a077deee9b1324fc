"""A protocol's connections served in this process, for tests that look inside them."""

from __future__ import annotations

import os
import select
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.support.net import Address


class Harness:
    """Serves a protocol class in-process: one thread accepts, one thread per connection."""

    def __init__(
        self,
        server: Any,
        connect: Callable[[Any, Any], Any],
        *,
        tcp: bool,
        wrap: Callable[[socket.socket], Any] | None = None,
    ) -> None:
        self.server = server
        self.connect = connect
        self.wrap = wrap
        self.connections: list[Any] = []
        self.sockets: list[Any] = []
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._tempdir: str | None = None
        if tcp:
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.bind(("127.0.0.1", 0))
            self.address: Address = self._listener.getsockname()[:2]
        else:
            self._tempdir = tempfile.mkdtemp(dir="/tmp")
            self.address = os.path.join(self._tempdir, "s")
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(self.address)
        self._listener.listen(16)
        self._stop = threading.Event()
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._listener], [], [], 0.05)[0]:
                continue
            sock, addr = self._listener.accept()
            wrapped = self.wrap(sock) if self.wrap else sock
            conn = self.connect(wrapped, addr)
            self.sockets.append(wrapped)
            self.connections.append(conn)
            thread = threading.Thread(target=self._run, args=(conn, sock), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, conn: Any, sock: socket.socket) -> None:
        try:
            conn.run()
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            sock.close()

    def wait_for_connection(self, count: int = 1, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while len(self.connections) < count:
            assert time.monotonic() < deadline, "the server did not accept a connection"
            time.sleep(0.01)
        return self.connections[count - 1]

    def connections_done(self, timeout: float) -> bool:
        """Whether every connection's run() has returned within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        # A connection is listed just before its thread starts.
        while len(self._threads) < len(self.connections) and time.monotonic() < deadline:
            time.sleep(0.01)
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        threads = list(self._threads)
        return len(threads) == len(self.connections) and not any(t.is_alive() for t in threads)

    def close(self) -> bool:
        """Stop accepting; True when every connection has finished."""
        self._stop.set()
        self._accepter.join(5)
        self._listener.close()
        done = self.connections_done(10)
        if self._tempdir:
            shutil.rmtree(self._tempdir, ignore_errors=True)
        return done
