"""The C accelerator reads a FastCGI request exactly as the Python code does.

Each stream of records goes to a real FastCGI connection twice, with the accelerator and
without it: the application must see the same environ and body, the web server must get
the same bytes back, and the same problems must be logged. The accelerator takes only
well-formed requests that have fully arrived; everything else is left to the Python
code, which reads records one by one and says what is wrong.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest

from django_runfcgi.protocols import Bounds
from django_runfcgi.protocols.fastcgi import FastCGI
from django_runfcgi.protocols.fastcgi import connection as fcgi

_speedups = fcgi._speedups
"""The built accelerator, whether or not RUNFCGI_PURE_PYTHON turned servers off it."""

BEGIN_REQUEST, ABORT_REQUEST, GET_VALUES, PARAMS, STDIN = 1, 2, 9, 4, 5
RESPONDER, KEEP_CONN = 1, 1


def record(kind: int, content: bytes = b"", request_id: int = 1, padding: int = 0) -> bytes:
    header = struct.pack("!BBHHBx", 1, kind, request_id, len(content), padding)
    return header + content + b"\0" * padding


def begin(request_id: int = 1, role: int = RESPONDER, flags: int = 0) -> bytes:
    return record(BEGIN_REQUEST, struct.pack("!HB5x", role, flags), request_id)


def length(n: int) -> bytes:
    return bytes([n]) if n < 128 else struct.pack("!I", n | 0x80000000)


def pairs(*items: tuple[bytes, bytes]) -> bytes:
    return b"".join(length(len(n)) + length(len(v)) + n + v for n, v in items)


NGINX_ITEMS = (
    (b"QUERY_STRING", b"a=1&b=%C3%A9"),
    (b"REQUEST_METHOD", b"GET"),
    (b"CONTENT_TYPE", b""),
    (b"CONTENT_LENGTH", b""),
    (b"SCRIPT_NAME", b""),
    (b"REQUEST_URI", b"/caf%C3%A9/?a=1&b=%C3%A9"),
    (b"DOCUMENT_URI", b"/caf\xc3\xa9/"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    (b"REMOTE_ADDR", b"127.0.0.1"),
    (b"REMOTE_PORT", b"51234"),
    (b"SERVER_NAME", b"localhost"),
    (b"SERVER_PORT", b"80"),
    (b"HTTP_HOST", b"localhost"),
    (b"HTTP_COOKIE", b"k=\xe9\xff"),
)
NGINX = pairs(*NGINX_ITEMS)
POST = pairs((b"REQUEST_METHOD", b"POST"), (b"CONTENT_LENGTH", b"11"), (b"REQUEST_URI", b"/p/"))
EMPTY_GET = record(PARAMS) + record(STDIN)


def get(params: bytes, request_id: int = 1, flags: int = 0) -> bytes:
    return (
        begin(request_id, flags=flags)
        + record(PARAMS, params, request_id)
        + record(PARAMS, b"", request_id)
        + record(STDIN, b"", request_id)
    )


# name -> (stream, whether the accelerator reads it)
STREAMS: dict[str, tuple[bytes, bool]] = {
    "nginx-get": (get(NGINX), True),
    "params-in-three-records": (
        begin()
        + record(PARAMS, pairs(*NGINX_ITEMS[:5], (b"X", b"1")))
        + record(PARAMS, pairs(*NGINX_ITEMS[5:], (b"X", b"2")))
        + record(PARAMS, pairs((b"REQUEST_URI", b"/three/")))
        + EMPTY_GET,
        True,
    ),
    "long-names-and-values": (
        get(pairs((b"HTTP_X_" + b"N" * 200, b"v" * 300), (b"REQUEST_URI", b"/" + b"u" * 1000))),
        True,
    ),
    "empty-and-repeated-names": (
        get(pairs((b"A", b""), (b"", b"nameless"), (b"A", b"second"), (b"REQUEST_URI", b"/"))),
        True,
    ),
    "padded-records": (
        begin()
        + record(PARAMS, NGINX, padding=5)
        + record(PARAMS, padding=7)
        + record(STDIN, padding=3),
        True,
    ),
    "post-with-body": (
        begin()
        + record(PARAMS, POST)
        + record(PARAMS)
        + record(STDIN, b"hello ")
        + record(STDIN, b"world")
        + record(STDIN),
        True,
    ),
    "stdin-of-another-request-first": (
        begin()
        + record(PARAMS, POST)
        + record(PARAMS)
        + record(STDIN, b"", 2)
        + record(STDIN, b"hello world")
        + record(STDIN),
        True,
    ),
    "body-end-not-yet-sent": (begin() + record(PARAMS, NGINX) + record(PARAMS), True),
    "two-requests-on-a-kept-connection": (
        get(NGINX, 1, KEEP_CONN) + get(pairs((b"REQUEST_URI", b"/second/")), 2, KEEP_CONN),
        True,
    ),
    "request-id-zero-is-no-request": (get(NGINX, 0), False),
    "unknown-role": (
        begin(role=9) + record(PARAMS, NGINX) + EMPTY_GET,
        True,
    ),
    "get-values-first": (
        record(GET_VALUES, pairs((b"FCGI_MPXS_CONNS", b"")), 0) + get(NGINX),
        True,
    ),
    "params-of-another-request-between": (
        begin() + record(PARAMS, NGINX) + record(PARAMS, pairs((b"Z", b"9")), 2) + EMPTY_GET,
        False,
    ),
    "pair-length-cut-short": (get(b"\x80\x00"), False),
    "pair-overruns-record": (get(b"\x05\x7fabc"), False),
    "value-overruns-by-one-byte": (get(b"\x01\x03abc"), False),
    "value-length-missing": (get(b"\x01"), False),
    "long-name-length-cut-short": (get(b"\x01\x01ab\x80\x00\x00"), False),
    "begin-request-of-six-bytes": (record(BEGIN_REQUEST, b"\0\1\0\0\0\0") + EMPTY_GET, False),
    "params-record-not-version-1": (
        begin() + b"\x02" + record(PARAMS, NGINX)[1:] + EMPTY_GET,
        False,
    ),
    "record-cut-short": (begin() + record(PARAMS, NGINX)[:-3], False),
    # What the specification does not allow: one log line and a closed connection.
    "params-ended-twice-while-the-body-is-read": (
        begin() + record(PARAMS, POST) + record(PARAMS) + record(STDIN, b"hello") + record(PARAMS),
        True,
    ),
    "begin-request-for-the-active-id": (
        begin() + record(PARAMS, POST) + begin() + record(PARAMS) + record(STDIN),
        False,
    ),
    "stdin-after-the-body-ended": (
        begin(flags=KEEP_CONN)
        + record(PARAMS, POST)
        + record(PARAMS)
        + record(STDIN, b"hello world")
        + record(STDIN)
        + record(STDIN, b"more"),
        True,
    ),
    "stdin-before-the-params-ended": (
        begin() + record(PARAMS, POST) + record(STDIN, b"hello world") + EMPTY_GET,
        False,
    ),
    "stdin-of-a-request-never-begun": (
        begin() + record(PARAMS, POST) + record(PARAMS) + record(STDIN, b"hello", 7),
        True,
    ),
    "data-record-for-a-responder": (
        begin() + record(PARAMS, POST) + record(PARAMS) + record(8, b"filter data"),
        True,
    ),
    "params-over-maxheadsize": (
        begin() + record(PARAMS, pairs((b"HTTP_X", b"v" * 3000))) + EMPTY_GET,
        False,
    ),
    "more-pairs-than-maxheaders": (
        get(pairs(*[(b"H%d" % i, b"") for i in range(40)])),
        False,
    ),
    # What it does allow.
    "pair-split-across-two-records": (
        begin()
        + record(PARAMS, NGINX + pairs((b"HTTP_X", b"split"))[:5])
        + record(PARAMS, pairs((b"HTTP_X", b"split"))[5:])
        + EMPTY_GET,
        False,
    ),
    "aborted-before-the-params-ended": (
        begin(flags=KEEP_CONN)
        + record(PARAMS, NGINX)
        + record(ABORT_REQUEST)
        + get(pairs((b"REQUEST_URI", b"/after-abort/")), 2),
        True,
    ),
    "aborted-while-the-body-is-read": (
        begin() + record(PARAMS, POST) + record(PARAMS) + record(STDIN, b"hel") + record(2),
        True,
    ),
    "unknown-management-record": (record(99, b"", 0) + get(NGINX), True),
    "get-values-with-a-request-id": (
        record(GET_VALUES, pairs((b"FCGI_MPXS_CONNS", b""))) + get(NGINX),
        False,
    ),
    "concurrent-request-refused": (
        begin(1, flags=KEEP_CONN)
        + record(PARAMS, POST)
        + begin(2)
        + record(PARAMS, NGINX, 2)
        + record(PARAMS)
        + record(PARAMS, b"", 2)
        + record(STDIN, b"hello world")
        + record(STDIN, b"", 2)
        + record(STDIN),
        False,
    ),
}
BOUNDS = Bounds(readtimeout=5.0, maxheadsize=2048, maxheaders=30)
"""Small enough for the streams above to cross them."""


def reporting_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = environ["wsgi.input"].read()
    seen = {k: v for k, v in environ.items() if isinstance(v, str)}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"environ": seen, "body": body.decode("latin-1")}).encode()]


class CountingReader:
    """One of the accelerator's readers (read_request, scgi_request), counting the
    requests it took."""

    def __init__(self, read: Callable[..., Any]) -> None:
        self._read = read
        self.taken = 0

    def __call__(self, *args: Any) -> Any:
        found = self._read(*args)
        if found is not None:
            self.taken += 1
        return found


def exchange(stream: bytes) -> bytes:
    """What a web server gets back for `stream`, sent whole and then its side closed."""
    server = FastCGI(reporting_app, multithreaded=False, multiprocess=True, bounds=BOUNDS)
    client, served = socket.socketpair()
    conn = server.connection(served, "")
    conn.close_wait_seconds = 2.0
    worker = threading.Thread(target=conn.run)
    worker.start()
    try:
        client.sendall(stream)
        client.shutdown(socket.SHUT_WR)
        client.settimeout(10.0)
        answer = []
        while data := client.recv(65536):
            answer.append(data)
        return b"".join(answer)
    finally:
        worker.join(10.0)
        client.close()
        served.close()
        assert not worker.is_alive(), "the connection did not end"


@pytest.fixture
def accelerated() -> CountingReader:
    if _speedups is None:
        pytest.skip("the C accelerator is not built (no compiler at install)")
    return CountingReader(_speedups.read_request)


def served_both_ways(
    stream: bytes,
    reader: CountingReader,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> tuple[tuple[bytes, list[str]], tuple[bytes, list[str]]]:
    results = []
    for read_request in (None, reader):
        monkeypatch.setattr(fcgi, "_read_request", read_request)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="django_runfcgi"):
            answer = exchange(stream)
        results.append((answer, [r.getMessage() for r in caplog.records]))
    return results[0], results[1]


@pytest.mark.parametrize("name", list(STREAMS))
def test_the_accelerator_reads_a_request_as_python_does(
    name: str,
    accelerated: CountingReader,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream, taken = STREAMS[name]
    python, c = served_both_ways(stream, accelerated, monkeypatch, caplog)
    assert c == python
    assert (accelerated.taken > 0) is taken


def test_a_request_reaches_the_application_whole(
    accelerated: CountingReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What both paths give is also right: names and values as latin-1, the body entire."""
    monkeypatch.setattr(fcgi, "_read_request", accelerated)
    stream = (
        begin()
        + record(PARAMS, POST + pairs((b"HTTP_X_" + b"N" * 200, b"\xe9" * 300)))
        + record(PARAMS)
        + record(STDIN, b"hello world")
        + record(STDIN)
    )
    answer = exchange(stream)
    payload = json.loads(answer[answer.index(b"\r\n\r\n") + 4 : answer.rindex(b"}") + 1])
    assert accelerated.taken == 1
    assert payload["body"] == "hello world"
    assert payload["environ"]["HTTP_X_" + "N" * 200] == "\xe9" * 300
    assert payload["environ"]["REQUEST_METHOD"] == "POST"


def test_the_accelerator_is_built_where_the_tests_run_in_ci() -> None:
    """A compiler fault must not leave CI measuring and testing only the Python path."""
    if not os.environ.get("CI"):
        pytest.skip("only CI requires the accelerator")
    assert _speedups is not None, "django_runfcgi.protocols._speedups was not built"


def test_servers_use_the_accelerator_unless_told_not_to() -> None:
    if _speedups is None:
        pytest.skip("the C accelerator is not built (no compiler at install)")
    pure = os.environ.get("RUNFCGI_PURE_PYTHON", "0") != "0"
    assert (fcgi._read_request is None) is pure


def test_each_request_sees_its_own_parameters(
    accelerated: CountingReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The accelerator reuses the strings of the last request's parameters where the
    bytes are the same; whatever differs must be new: a value, a name, a length, a
    character outside ASCII."""
    monkeypatch.setattr(fcgi, "_read_request", accelerated)
    requests = [
        [(b"REQUEST_URI", b"/a/"), (b"HTTP_HOST", b"one"), (b"HTTP_X", b"caf\xe9")],
        [(b"REQUEST_URI", b"/a/"), (b"HTTP_HOST", b"one"), (b"HTTP_X", b"caf\xe8")],
        [(b"REQUEST_URI", b"/ab/"), (b"HTTP_HOSTS", b"one"), (b"HTTP_X", b"cafe")],
        [(b"REQUEST_URI", b"/ab/"), (b"HTTP_HOSTX", b"one"), (b"HTTP_X", b"cafd")],
        [(b"REQUEST_URI", b"/a"), (b"HTTP_X", b"one"), (b"HTTP_HOST", b"cafe")],
        [(b"HTTP_X", b"/a"), (b"REQUEST_URI", b"/a/b/c/"), (b"HTTP_HOST", b"")],
        [(b"REQUEST_URI", b"/a/")],
    ]
    for items in requests:
        answer = exchange(get(pairs(*items)))
        payload = json.loads(answer[answer.index(b"\r\n\r\n") + 4 : answer.rindex(b"}") + 1])
        sent = {name.decode("latin-1"): value.decode("latin-1") for name, value in items}
        assert {k: v for k, v in payload["environ"].items() if k in sent} == sent
        unsent = {"HTTP_HOST", "HTTP_HOSTS", "HTTP_HOSTX", "HTTP_X"} - set(sent)
        assert not unsent & set(payload["environ"])
    assert accelerated.taken == len(requests)
