"""A plain HTTP/1.1 client for talking to the front ends, with bounded timeouts.

It behaves like a browser that is not clever: it sends exactly the request line and
headers given, records when each piece of the response arrived (to tell a streamed
response from a buffered one), and can keep one connection open for several requests.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

READ_SIZE = 64 * 1024


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    # (seconds since the request was sent, bytes) for each read that returned data.
    pieces: list[tuple[float, int]] = field(default_factory=list)
    will_close: bool = True

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_list(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def read_response(conn: http.client.HTTPConnection, method: str, started: float) -> HttpResponse:
    response = conn.getresponse()
    pieces: list[tuple[float, int]] = []
    chunks: list[bytes] = []
    if method != "HEAD":
        # read1() returns what has arrived (at most one chunk of a chunked body), so
        # the arrival times show whether the front end passed the pieces on one by one.
        for _ in range(1_000_000):
            chunk = response.read1(READ_SIZE)
            if not chunk:
                break
            pieces.append((time.monotonic() - started, len(chunk)))
            chunks.append(chunk)
    body = b"".join(chunks)
    response.close()
    return HttpResponse(response.status, response.getheaders(), body, pieces, response.will_close)


class Client:
    """One client connection, kept open across requests as a browser does."""

    def __init__(self, port: int, timeout: float = 60, tls: ssl.SSLContext | None = None) -> None:
        """HTTPS when given `tls`, the context that trusts the server's certificate."""
        self.conn = (
            http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            if tls is None
            else http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls)
        )
        self.connections = 0

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        chunked: bool = False,
    ) -> HttpResponse:
        if self.conn.sock is None:
            self.conn.connect()
            self.connections += 1
        if chunked and isinstance(body, bytes):
            body = pieces_of(body, READ_SIZE)
        started = time.monotonic()
        self.conn.request(method, path, body=body, headers=headers or {})
        return read_response(self.conn, method, started)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def http_request(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
    timeout: float = 60,
    tls: ssl.SSLContext | None = None,
) -> HttpResponse:
    """One request on a fresh connection (HTTPS with `tls`)."""
    with Client(port, timeout, tls) as client:
        return client.request(method, path, body=body, headers=headers, chunked=chunked)


def pieces_of(data: bytes, size: int) -> Iterator[bytes]:
    """A body as an iterable, so http.client sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(data), size):
        yield data[start : start + size]
