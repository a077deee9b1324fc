"""The C accelerator reads an SCGI request head exactly as the Python code does.

Each request goes to a real SCGI connection twice, with the accelerator and without it:
the application must see the same environ and body, the web server must get the same
bytes back, and the same problems must be logged. The accelerator takes only whole,
well-formed heads within the bounds; anything else is left to the Python code, which
waits for more or says what is wrong. A seeded run of mutated heads then holds the two
to the same answers, byte by byte, where a list of cases cannot reach.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from django_runfcgi.protocols import Bounds
from django_runfcgi.protocols.base import ProtocolError
from django_runfcgi.protocols.scgi import SCGI
from django_runfcgi.protocols.scgi import connection as scgi_connection
from django_runfcgi.protocols.scgi.headers import parse_headers, split_netstring
from tests.test_speedups import CountingReader, _speedups, reporting_app

BOUNDS = Bounds(readtimeout=2.0, maxheadsize=400, maxheaders=8)
"""Small enough for the heads below to cross them."""


def block(*items: tuple[bytes, bytes]) -> bytes:
    return b"".join(name + b"\0" + value + b"\0" for name, value in items)


def netstring(*items: tuple[bytes, bytes], size: bytes | None = None) -> bytes:
    head = block(*items)
    return (size if size is not None else b"%d" % len(head)) + b":" + head + b","


GET = ((b"CONTENT_LENGTH", b"0"), (b"SCGI", b"1"), (b"REQUEST_METHOD", b"GET"))
POST = ((b"CONTENT_LENGTH", b"11"), (b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/p/"))
NGINX = (
    (b"CONTENT_LENGTH", b"0"),
    (b"SCGI", b"1"),
    (b"REQUEST_METHOD", b"GET"),
    (b"REQUEST_URI", b"/caf%C3%A9/?a=1"),
    (b"QUERY_STRING", b"a=1"),
    (b"SERVER_NAME", b"localhost"),
    (b"HTTP_HOST", b"localhost"),
    (b"HTTP_COOKIE", b"k=\xe9\xff"),
)
FULL_HEAD = netstring(*GET, (b"HTTP_X", b"x" * (BOUNDS.maxheadsize - len(block(*GET)) - 8)))

# name -> (bytes sent, whether the accelerator takes them)
REQUESTS: dict[str, tuple[bytes, bool]] = {
    "get": (netstring(*GET), True),
    "post with its body": (netstring(*POST) + b"hello world", True),
    "nginx's head, latin-1 bytes": (netstring(*NGINX), True),
    "a name given twice: the last value": (netstring(*GET, (b"SCGI", b"2")), True),
    "empty names and values": (netstring(*GET, (b"", b""), (b"HTTP_X", b"")), True),
    "a length with leading zeros": (netstring(*GET, size=b"0%d" % len(block(*GET))), True),
    "maxheadsize bytes exactly": (FULL_HEAD, True),
    "maxheaders pairs exactly": (netstring(*NGINX), True),
    "over maxheaders": (netstring(*NGINX, (b"HTTP_Y", b"y")), False),
    "over maxheadsize": (netstring(*GET, (b"HTTP_X", b"x" * BOUNDS.maxheadsize)), False),
    "a length longer than maxheadsize's digits": (b"0000" + netstring(*GET), False),
    "no REQUEST_METHOD": (netstring(GET[0], GET[1]), False),
    "no CONTENT_LENGTH": (netstring(GET[1], GET[2]), False),
    "an empty CONTENT_LENGTH": (netstring((b"CONTENT_LENGTH", b""), GET[2]), False),
    "a CONTENT_LENGTH not ASCII digits": (netstring((b"CONTENT_LENGTH", b"\xb2"), GET[2]), False),
    "a signed CONTENT_LENGTH": (netstring((b"CONTENT_LENGTH", b"+1"), GET[2]), False),
    "a CONTENT_LENGTH of 19 digits": (netstring((b"CONTENT_LENGTH", b"1" * 19), GET[2]), False),
    "a name without a value": (netstring(*GET)[:-1] + b"X\0,", False),
    "no NUL at the end": (b"%d:%s," % (len(block(*GET)) - 1, block(*GET)[:-1]), False),
    "no comma": (netstring(*GET)[:-1] + b";", False),
    "an empty netstring": (b"0:,", False),
    "cut inside the netstring": (netstring(*GET)[:-5], False),
    "cut inside the length": (b"4", False),
    "not a netstring": (b"GET / HTTP/1.0\r\n\r\n", False),
    "nothing": (b"", False),
}


@pytest.fixture
def accelerated() -> CountingReader:
    if _speedups is None:
        pytest.skip("the C accelerator is not built (no compiler at install)")
    return CountingReader(_speedups.scgi_request)


def exchange(data: bytes, app: Callable[..., Any] = reporting_app) -> bytes:
    """What a web server gets back for `data`, sent whole and then its side closed."""
    server = SCGI(app, multithreaded=False, multiprocess=True, bounds=BOUNDS)
    client, served = socket.socketpair()
    worker = threading.Thread(target=server.connection(served, "").run)
    worker.start()
    try:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        client.settimeout(10.0)
        return b"".join(iter(lambda: client.recv(65536), b""))
    finally:
        worker.join(10.0)
        client.close()
        assert not worker.is_alive(), "the connection did not end"


@pytest.mark.parametrize("name", list(REQUESTS))
def test_the_accelerator_reads_a_head_as_python_does(
    name: str,
    accelerated: CountingReader,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data, taken = REQUESTS[name]
    results = []
    for reader in (None, accelerated):
        monkeypatch.setattr(scgi_connection, "scgi_request", reader)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="django_runfcgi"):
            answer = exchange(data)
        results.append((answer, [r.getMessage() for r in caplog.records]))
    assert results[1] == results[0]
    assert (accelerated.taken > 0) is taken


def test_a_request_reaches_the_application_whole(
    accelerated: CountingReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What both paths give is also right: names and values as latin-1, the body entire."""
    monkeypatch.setattr(scgi_connection, "scgi_request", accelerated)
    answer = exchange(netstring(*POST, (b"HTTP_X", b"caf\xe9")) + b"hello world")
    payload = json.loads(answer[answer.index(b"\r\n\r\n") + 4 :])
    assert accelerated.taken == 1
    assert payload["body"] == "hello world"
    assert payload["environ"]["HTTP_X"] == "caf\xe9"
    assert payload["environ"]["CONTENT_LENGTH"] == "11"


def python_read(data: bytes, limit: int, maxheaders: int) -> tuple[Any, ...] | None:
    """What the Python code makes of `data` as it stands: the head, or None."""
    try:
        split = split_netstring(data, limit)
        if split is None:
            return None
        environ = parse_headers(split[0], maxheaders)
    except ProtocolError:
        return None
    return environ, split[1], int(environ["CONTENT_LENGTH"])


def mutated(rnd: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rnd.randint(1, 3)):
        at = rnd.randrange(len(out) + 1)
        how = rnd.randrange(4)
        if how == 0 and at < len(out):
            out[at] = rnd.choice(b"\0:,09\xe9x")
        elif how == 1:
            out[at:at] = bytes([rnd.choice(b"\0:,0\xb2")])
        elif how == 2:
            del out[at : at + rnd.randint(1, 3)]
        else:
            out[:] = out[:at]
    return bytes(out)


def test_mutated_heads_get_the_same_answer_from_both(accelerated: CountingReader) -> None:
    """The accelerator takes every head the Python code takes (but a CONTENT_LENGTH of
    more than 18 digits), with the same result, and nothing else."""
    rnd = random.Random(15)
    seeds = [data for data, taken in REQUESTS.values() if taken]
    took = 0
    for _ in range(5000):
        data = mutated(rnd, rnd.choice(seeds))
        for limit, maxheaders in ((BOUNDS.maxheadsize, BOUNDS.maxheaders), (60, 3), (9, 100)):
            python = python_read(data, limit, maxheaders)
            if python is not None and len(python[0]["CONTENT_LENGTH"]) > 18:
                python = None
            assert accelerated(data, limit, maxheaders) == python, data
            took += python is not None
    # Most mutations break a head; enough survive that the comparison means something.
    assert took > 200
