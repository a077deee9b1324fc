"""The C accelerator frames a FastCGI response, and encodes and joins an SCGI one's
head, exactly as the Python code does.

Each application answers a real FastCGI (and SCGI) connection twice, with the
accelerator's response functions and without them: the web server must get the same
bytes back.
The accelerator encodes only ASCII status and headers; anything else (latin-1 text,
bytes, a malformed status, headers that are not a list) is left to the Python code,
which encodes it or says what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from django_runfcgi.protocols.fastcgi import request as fcgi_request
from django_runfcgi.protocols.scgi import request as scgi_request
from tests import test_speedups_scgi as scgi
from tests.test_speedups import (
    PARAMS,
    STDIN,
    _speedups,
    begin,
    exchange,
    pairs,
    record,
)

App = Callable[[dict[str, Any], Callable[..., Any]], Any]
BIG = bytes(range(256)) * 400
"""102,400 bytes: more than one record, and more than a first piece shares the headers'."""


def answering(status: Any, headers: Any, body: Any) -> App:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response(status, headers)
        return body() if callable(body) else body

    return app


def chunks(*parts: bytes) -> Callable[[], Iterator[bytes]]:
    return lambda: iter(parts)


def written(data: bytes) -> App:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])(data)
        return [b"and the rest"]

    return app


TEXT = [("Content-Type", "text/plain")]
APPS: dict[str, App] = {
    "small list": answering("200 OK", TEXT, [b"hello"]),
    "length given in another case": answering(
        "200 OK", [*TEXT, ("content-LENGTH", "5")], [b"hello"]
    ),
    "no headers": answering("204 No Content", [], []),
    "empty body": answering("200 OK", TEXT, [b""]),
    "two pieces": answering("200 OK", TEXT, [b"hel", b"lo"]),
    "generator": answering("200 OK", TEXT, chunks(b"a" * 10, b"", b"b" * 20000)),
    "first piece as big as fits with the headers": answering(
        "200 OK", TEXT, [b"x" * fcgi_request.WITH_HEADERS]
    ),
    "first piece one byte bigger": answering(
        "200 OK", TEXT, [b"x" * (fcgi_request.WITH_HEADERS + 1)]
    ),
    "first piece as big as SCGI joins with the headers": answering(
        "200 OK", TEXT, [b"x" * scgi_request.JOIN_UP_TO]
    ),
    "first piece one byte bigger than SCGI joins": answering(
        "200 OK", TEXT, [b"x" * (scgi_request.JOIN_UP_TO + 1)]
    ),
    "big body": answering("200 OK", TEXT, [BIG]),
    "headers longer than a record": answering(
        "200 OK", [*TEXT, ("X-Long", "v" * 20000)], [b"hello"]
    ),
    "latin-1 header value": answering("200 OK", [*TEXT, ("X-Name", "caf\xe9")], [b"hi"]),
    "status as bytes": answering(b"200 OK", TEXT, [b"hi"]),
    "status without a reason's space": answering("200OK", TEXT, [b"hi"]),
    "status of two digits": answering("20 OK", TEXT, [b"hi"]),
    "headers as a tuple": answering("200 OK", tuple(TEXT), [b"hi"]),
    "a header of three items": answering("200 OK", [("A", "b", "c")], [b"hi"]),
    "a header value not text": answering("200 OK", [("X-Count", 3)], [b"hi"]),
    "a header outside latin-1": answering("200 OK", [("X-Name", "\u20ac")], [b"hi"]),
    "write() callable": written(b"first "),
}


def request_items(method: bytes = b"GET") -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b"REQUEST_METHOD", method),
        (b"REQUEST_URI", b"/x/"),
        (b"SERVER_NAME", b"localhost"),
        (b"SERVER_PORT", b"80"),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    )


def request(method: bytes = b"GET") -> bytes:
    items = request_items(method)
    return begin() + record(PARAMS, pairs(*items)) + record(PARAMS) + record(STDIN)


@pytest.fixture
def built() -> None:
    if _speedups is None:
        pytest.skip("the C accelerator is not built (no compiler at install)")


def both_ways(app: App, stream: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, bytes]:
    monkeypatch.setattr("tests.test_speedups.reporting_app", app)
    answers = []
    for accelerated in (False, True):
        for name in ("response_head", "head_records"):
            function = getattr(_speedups, name) if accelerated else None
            monkeypatch.setattr(fcgi_request, name, function)
        answers.append(exchange(stream))
    return answers[0], answers[1]


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize("name", list(APPS))
def test_the_accelerator_frames_a_response_as_python_does(
    name: str, method: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    python, c = both_ways(APPS[name], request(method), monkeypatch)
    assert c == python
    assert python.endswith(bytes([1, 3, 0, 1, 0, 8, 0, 0]) + bytes(8))  # FCGI_END_REQUEST


def scgi_exchange(app: App, method: str) -> bytes:
    """What a web server gets back over SCGI for one request to `app`."""
    fields = {"CONTENT_LENGTH": "0", "SCGI": "1", "REQUEST_METHOD": method}
    fields |= {"REQUEST_URI": "/x/", "SERVER_NAME": "localhost", "SERVER_PORT": "80"}
    head = b"".join(f"{name}\0{value}\0".encode() for name, value in fields.items())
    return scgi.exchange(b"%d:%s," % (len(head), head), app)


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("name", list(APPS))
def test_the_accelerator_encodes_an_scgi_response_as_python_does(
    name: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for function in ("response_head", "cgi_response"):
        monkeypatch.setattr(scgi_request, function, None)
    python = scgi_exchange(APPS[name], method)
    for function in ("response_head", "cgi_response"):
        monkeypatch.setattr(scgi_request, function, getattr(_speedups, function))
    assert scgi_exchange(APPS[name], method) == python
    assert python.startswith(b"Status: ")


@pytest.mark.usefixtures("built")
def test_what_both_ways_send_is_right() -> None:
    """Not only the same, but right: the records of a small response, byte for byte."""
    status, block = _speedups.response_head("200 OK", [("Content-Type", "text/plain")])
    assert (status, block) == (b"200 OK", b"Content-Type: text/plain\r\n")
    payload = b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    padding = -len(payload) % 8
    header = bytes([1, 6, 0, 7, 0, len(payload), padding, 0])
    assert _speedups.head_records(7, status, block, 5, b"hello", 8184) == (
        header + payload + bytes(padding)
    )
    assert _speedups.response_head("200 OK", [("X", "caf\xe9")]) is None
    assert _speedups.response_head("2000K", []) is None


@pytest.mark.parametrize("missing", ["REQUEST_METHOD", "SERVER_NAME", "SERVER_PORT"])
def test_a_missing_required_parameter_gets_flups_default_and_is_named(missing: str) -> None:
    """A front end that leaves out a parameter every request needs: the application gets
    flup's default, and the web server's error log a line naming the parameter."""
    items = dict(request_items())
    del items[missing.encode()]
    stream = begin() + record(PARAMS, pairs(*items.items())) + record(PARAMS) + record(STDIN)
    answer = exchange(stream)
    default = {"REQUEST_METHOD": "GET", "SERVER_NAME": "localhost", "SERVER_PORT": "80"}
    assert f'"{missing}": "{default[missing]}"'.encode() in answer
    note = f"FastCGI param {missing} is missing; using {default[missing]!r}\n".encode()
    assert bytes([1, 7, 0, 1]) + len(note).to_bytes(2, "big") in answer  # FCGI_STDERR
    assert note in answer
