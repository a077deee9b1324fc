"""The AJP request head, decoded in-process: attributes, TLS, stored methods, the secret
and malformed packets, over a real socket from tests/support/clients.py's Apache-like client.

Where plain flup can be run through the same request it is, as a strict xfail: the
evidence that the fix is needed (docs/flup.rst, the AJP sections).
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flup.server import ajp_base

from django_runfcgi import protocols
from tests.support.clients import ajp_attribute, ajp_request, connect, raw_exchange
from tests.support.harness import Harness
from tests.test_compat_ajp import exchange

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
SECRET = "n0t-the-default_secret"

REMOTE_USER = 0x03
AUTH_TYPE = 0x04
ROUTE = 0x06
SSL_CERT = 0x07
SSL_CIPHER = 0x08
SSL_SESSION = 0x09
SSL_KEY_SIZE = 0x0B
CONTEXT = 0x01
SERVLET_PATH = 0x02

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
# What Apache's mod_proxy_ajp sends for every request that came in over HTTPS.
APACHE_TLS = [
    ajp_attribute(SSL_CIPHER, "TLS_AES_256_GCM_SHA384"),
    ajp_attribute(SSL_SESSION, "5c0a1b2c3d"),
    ajp_attribute(SSL_KEY_SIZE, 256),
]
APACHE_TLS_NAMED = {"AJP_SSL_PROTOCOL": "TLSv1.3", "AJP_LOCAL_ADDR": "127.0.0.1"}


def environ_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Every text value of the environ, and the length of the body read."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    data = {key: value for key, value in environ.items() if isinstance(value, str)}
    data["body length"] = str(len(body))
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(data).encode()]


Serve = Callable[..., Harness]


@pytest.fixture
def ran() -> list[Environ]:
    """The environ of every request that reached the application."""
    return []


@pytest.fixture
def serve(ran: list[Environ]) -> Iterator[Serve]:
    """serve(impl="ours"|"flup", secret=None) -> a Harness over TCP running environ_app."""
    harnesses: list[tuple[str, Harness]] = []

    def recording(environ: Environ, start_response: StartResponse) -> list[bytes]:
        ran.append(environ)
        return environ_app(environ, start_response)

    def start(impl: str = "ours", secret: str | None = None) -> Harness:
        if impl == "ours":
            server: Any = protocols.AJP(recording, multithreaded=True, multiprocess=False)
            if secret is not None:
                server.require_secret(secret)
            harness = Harness(server, server.connection, tcp=True)
        else:
            server = ajp_base.BaseAJPServer(recording, multithreaded=True)
            harness = Harness(
                server, lambda sock, addr: ajp_base.Connection(sock, addr, server, None), tcp=True
            )
        harnesses.append((impl, harness))
        return harness

    yield start
    for impl, harness in harnesses:
        done = harness.close()
        if impl == "ours":
            assert done, "a connection was still running at the end of the test"
            assert harness.errors == []


def ours_and_flup(bug: str) -> list[Any]:
    return [
        pytest.param("ours", id="ours"),
        pytest.param(
            "flup",
            id="flup",
            marks=pytest.mark.xfail(strict=True, reason=f"plain flup: flup.rst#{bug}"),
        ),
    ]


def problems(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.WARNING]


# 1. Attributes never overwrite the request

SPOOFED = {
    "REMOTE_USER": "admin",
    "SCRIPT_NAME": "/elsewhere",
    "PATH_INFO": "/fail/",
    "HTTP_HOST": "evil.example",
    "REMOTE_ADDR": "203.0.113.9",
    "HTTPS": "on",
    "QUERY_STRING": "admin=1",
    "REQUEST_METHOD": "DELETE",
    "SERVER_NAME": "evil.example",
    "WSGI_SCRIPT_NAME": "/app",
    "wsgi.url_scheme": "https",
}


@pytest.mark.parametrize("impl", ours_and_flup("ajp-attributes"))
def test_named_attributes_never_overwrite_the_request(serve: Serve, impl: str) -> None:
    """An attribute named like a CGI or WSGI key stays an attribute, under AJP_: it
    cannot log a user in, re-route the request, change its host, address or scheme."""
    harness = serve(impl)
    response = ajp_request(harness.address, "GET", "/echo/", query="a=1", params=SPOOFED)
    assert response.status == 200
    environ = response.json()
    assert "REMOTE_USER" not in environ
    assert "HTTPS" not in environ
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("", "/echo/")
    assert environ["HTTP_HOST"] == "localhost"
    assert environ["SERVER_NAME"] == "localhost"
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["QUERY_STRING"] == "a=1"
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["wsgi.url_scheme"] == "http"
    assert {key: environ.get("AJP_" + key) for key in SPOOFED} == SPOOFED


def test_standard_attributes_go_where_cgi_and_mod_ssl_name_them(serve: Serve) -> None:
    harness = serve()
    response = ajp_request(
        harness.address,
        "GET",
        "/echo/",
        query="q=%C3%A9",
        is_ssl=True,
        attributes=[
            ajp_attribute(CONTEXT, "/ctx"),
            ajp_attribute(SERVLET_PATH, "/servlet"),
            ajp_attribute(REMOTE_USER, "alice"),
            ajp_attribute(AUTH_TYPE, "Basic"),
            ajp_attribute(ROUTE, "node1"),
            ajp_attribute(SSL_CERT, PEM),
            *APACHE_TLS,
        ],
        params={**APACHE_TLS_NAMED, "AJP_REMOTE_PORT": "50123", "FROM_SETENV": "x"},
    )
    assert response.status == 200
    environ = response.json()
    expected = {
        "REMOTE_USER": "alice",
        "AUTH_TYPE": "Basic",
        "QUERY_STRING": "q=%C3%A9",
        "AJP_ROUTE": "node1",
        "SSL_CLIENT_CERT": PEM,
        "SSL_CIPHER": "TLS_AES_256_GCM_SHA384",
        "SSL_SESSION_ID": "5c0a1b2c3d",
        "SSL_CIPHER_USEKEYSIZE": "256",
        "SSL_PROTOCOL": "TLSv1.3",
        "SERVER_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50123",
        "HTTPS": "on",
        "wsgi.url_scheme": "https",
        "AJP_FROM_SETENV": "x",
    }
    assert {key: environ.get(key) for key in expected} == expected
    # context and servlet_path are dropped, as Tomcat drops them; nothing else is added.
    assert not {"/ctx", "/servlet"} & set(environ.values())
    assert not [key for key in environ if key.startswith("AJP_") and key not in expected]


def test_an_ssl_attribute_alone_makes_the_request_https(serve: Serve) -> None:
    harness = serve()
    response = ajp_request(harness.address, attributes=[ajp_attribute(SSL_CIPHER, "AES128-SHA")])
    assert response.json()["wsgi.url_scheme"] == "https"


def test_a_remote_port_that_is_not_a_number_is_left_out(serve: Serve) -> None:
    harness = serve()
    response = ajp_request(harness.address, params={"AJP_REMOTE_PORT": "80; x"})
    assert "REMOTE_PORT" not in response.json()


def test_repeated_headers_are_joined(serve: Serve) -> None:
    """flup kept the last of them."""
    harness = serve()
    response = ajp_request(
        harness.address,
        headers=[("Accept", "text/html"), ("Accept", "*/*"), ("Cookie", "a=1"), ("Cookie", "b=2")],
    )
    environ = response.json()
    assert (environ["HTTP_ACCEPT"], environ["HTTP_COOKIE"]) == ("text/html, */*", "a=1; b=2")


# 2. HTTPS through Apache: the SSL key size


@pytest.mark.parametrize("impl", ours_and_flup("ajp-ssl-key-size"))
def test_https_request_as_apache_sends_it(serve: Serve, impl: str) -> None:
    """The key size is a 2-byte number; flup's decoder crashed on it (AttributeError:
    'str' object has no attribute 'decode'), so every HTTPS request through Apache
    with mod_ssl got 503."""
    harness = serve(impl)
    response = ajp_request(
        harness.address, is_ssl=True, attributes=APACHE_TLS, params=APACHE_TLS_NAMED
    )
    assert response.status == 200
    assert response.json()["wsgi.url_scheme"] == "https"
    assert response.json()["SSL_CIPHER_USEKEYSIZE"] == "256"


# 3. Methods outside AJP's table


@pytest.mark.parametrize("impl", ours_and_flup("ajp-stored-method"))
@pytest.mark.parametrize("method", ["PATCH", "PURGE", "BASELINE-CONTROL"])
def test_methods_outside_and_inside_the_table(serve: Serve, impl: str, method: str) -> None:
    """Apache sends PATCH as method code 0xFF and a stored_method attribute, which flup
    refused; flup also named BASELINE-CONTROL BASELINE_CONTROL."""
    harness = serve(impl)
    response = ajp_request(harness.address, method, "/echo/", body=b'{"a": 1}')
    assert response.status == 200
    assert (response.json()["REQUEST_METHOD"], response.json()["body length"]) == (method, "8")


# 4. The secret


@pytest.mark.parametrize("impl", ours_and_flup("ajp-secret"))
def test_a_secret_is_served_when_none_is_required(serve: Serve, impl: str) -> None:
    """Apache's ProxyPass secret= made flup drop the connection (Apache: 503)."""
    harness = serve(impl)
    response = ajp_request(harness.address, secret=SECRET)
    assert response.status == 200
    assert not [value for value in response.json().values() if SECRET in value]


def test_the_matching_secret_is_served(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    harness = serve(secret=SECRET)
    with connect(harness.address) as sock:
        for method in ("GET", "POST"):
            response = ajp_request(harness.address, method, secret=SECRET, body=b"x", sock=sock)
            assert (response.status, response.reuse) == (200, True)
    assert not [value for value in response.json().values() if SECRET in value]
    assert problems(caplog) == []


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (None, "it carries no secret"),
        (SECRET + "x", "its secret does not match"),
        ("", "its secret does not match"),
        (SECRET[:-1], "its secret does not match"),
    ],
    ids=["missing", "longer", "empty", "shorter"],
)
@pytest.mark.parametrize(
    ("method", "body"),
    [("GET", b""), ("HEAD", b""), ("POST", b"x" * 20_000)],
    ids=["GET", "HEAD", "POST-20kB"],
)
def test_without_the_secret_403_and_the_connection_closes(
    *,
    serve: Serve,
    ran: list[Environ],
    caplog: pytest.LogCaptureFixture,
    sent: str | None,
    reason: str,
    method: str,
    body: bytes,
) -> None:
    harness = serve(secret=SECRET)
    with connect(harness.address, timeout=10) as sock:
        port = sock.getsockname()[1]
        response = ajp_request(harness.address, method, secret=sent, body=body, sock=sock)
        assert response.status == 403
        assert response.body == (b"" if method == "HEAD" else b"Forbidden\n")
        assert response.reuse is False
        assert sock.recv(1) == b""  # closed by the server
    assert harness.connections_done(5)
    assert ran == []
    [record] = problems(caplog)
    assert record.getMessage() == (
        f"AJP request from 127.0.0.1:{port} refused with 403: {reason}, and secret= is set"
    )
    assert SECRET not in record.getMessage()
    assert ajp_request(harness.address, secret=SECRET, timeout=5).status == 200


def test_cping_needs_no_secret(serve: Serve) -> None:
    """Apache's ping= checks a backend with CPING, which carries no attributes."""
    harness = serve(secret=SECRET)
    with connect(harness.address, timeout=5) as sock:
        sock.sendall(b"\x12\x34\x00\x01\x0a")
        assert sock.recv(5) == b"AB\x00\x01\x09"


# 5. Malformed request heads


def ajp_str(value: bytes | None) -> bytes:
    if value is None:
        return b"\xff\xff"
    return struct.pack(">H", len(value)) + value + b"\0"


def head(
    *,
    method: int = 2,
    protocol: bytes | None = b"HTTP/1.1",
    headers: bytes = b"\xa0\x0b" + ajp_str(b"localhost"),
    count: int = 1,
    attributes: bytes = b"",
    end: bytes = b"\xff",
) -> bytes:
    """A FORWARD_REQUEST for GET /echo/ as its fields say, valid unless told otherwise."""
    return (
        bytes([2, method])
        + ajp_str(protocol)
        + ajp_str(b"/echo/")
        + ajp_str(b"127.0.0.1")
        + ajp_str(None)
        + ajp_str(b"localhost")
        + struct.pack(">HBH", 80, 0, count)
        + headers
        + attributes
        + end
    )


def packet(data: bytes) -> bytes:
    return b"\x12\x34" + struct.pack(">H", len(data)) + data


FIXED = len(head(headers=b"", count=0, end=b""))
MALFORMED = {
    "uri-runs-past-the-end": b"\x02\x02" + ajp_str(b"HTTP/1.1") + b"\x01\xf4/echo/\0",
    "fields-cut-short": head()[: FIXED - 3],
    "header-count-past-the-end": head(count=1000),
    "header-count-one-too-many": head(count=2),
    "header-value-runs-past-the-end": head(headers=b"\xa0\x0b\x00\x40localhost\0"),
    "header-name-runs-past-the-end": head(headers=b"\x7f\xf0X-Name\0", end=b""),
    "unknown-header-code": head(headers=b"\xa0\x20" + ajp_str(b"x")),
    "empty-header-name": head(headers=ajp_str(b"") + ajp_str(b"x")),
    "null-header-name": head(headers=ajp_str(None) + ajp_str(b"x")),
    "string-without-its-nul": head(headers=b"\xa0\x0b\x00\x09localhostX"),
    "null-protocol": head(protocol=None),
    "attributes-not-ended": head(end=b""),
    "unknown-attribute-code": head(attributes=b"\x42" + ajp_str(b"x")),
    "attribute-runs-past-the-end": head(attributes=b"\x03\x10\x00bob\0"),
    "key-size-cut-short": head(attributes=b"\x0b\x01", end=b""),
    "named-attribute-without-a-name": head(attributes=b"\x0a" + ajp_str(b"") + ajp_str(b"v")),
    "stored-method-missing": head(method=0xFF),
    "stored-method-not-a-token": head(method=0xFF, attributes=b"\x0d" + ajp_str(b"GET /x")),
    "unknown-method-code": head(method=0x40),
    "bytes-after-the-attributes": head(end=b"\xff\x12\x34"),
    "two-content-lengths": head(
        count=3,
        headers=b"\xa0\x0b"
        + ajp_str(b"x")
        + (b"\xa0\x08" + ajp_str(b"1"))
        + (b"\xa0\x08" + ajp_str(b"2")),
    ),
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_head_closes_with_one_log_line(
    serve: Serve, ran: list[Environ], caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    """Every length is checked against the packet: nothing past its end is read, and
    nothing malformed reaches the application."""
    harness = serve()
    with connect(harness.address, timeout=10) as sock:
        answer = exchange(sock, [packet(data)], lambda wanted: [])
    assert answer.closed
    assert answer.status == 0
    assert harness.connections_done(5)
    assert ran == []
    [record] = problems(caplog)
    assert record.exc_info is None
    assert record.getMessage().startswith("AJP protocol error from 127.0.0.1:"), record
    assert ajp_request(harness.address, timeout=5).status == 200


def test_the_valid_head_the_malformed_ones_are_made_from(serve: Serve) -> None:
    harness = serve()
    reply = raw_exchange(harness.address, packet(head()), timeout=5)
    assert reply.startswith(b"AB")
    assert b'"PATH_INFO": "/echo/"' in reply


def test_a_head_as_large_as_a_packet_is_served(serve: Serve) -> None:
    """The bounds are the packet's, nothing smaller: a 60 kB header still arrives (Apache
    sends such heads with ProxyIOBufferSize 65536)."""
    harness = serve()
    response = ajp_request(harness.address, headers={"X-Big": "b" * 60_000})
    assert response.json()["HTTP_X_BIG"] == "b" * 60_000
