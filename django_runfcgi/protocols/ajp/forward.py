"""AJP 1.3's FORWARD_REQUEST on bytes: the request head, decoded into a WSGI environ.

None of flup's decoder (ajp_base.Connection._forwardRequest) runs here. It copied every
request attribute into the environ after the headers, so an attribute named
SCRIPT_NAME, REMOTE_USER or HTTPS replaced what the request said (the flaw behind
Tomcat's Ghostcat, CVE-2020-1938); it crashed on the SSL key size Apache sends with
every HTTPS request, knew neither the stored method (PATCH) nor the secret, and took
strings past the end of the packet (flup.rst#ajp-attributes and the sections after it).

Here the request's own fields and headers come first and nothing overwrites them. The
attributes with a code go where CGI and mod_ssl name them (``ATTRIBUTE_KEYS``); named
ones that Apache adds itself fill ``REMOTE_PORT``, ``SERVER_ADDR`` and
``SSL_PROTOCOL``; every other named attribute (``SetEnv AJP_NAME`` in Apache) is kept
as ``AJP_NAME``, a prefix no CGI variable or header has. The secret never enters the
environ. Every length is checked against the packet: a malformed head raises
ProtocolError before the application sees anything.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from django_runfcgi.protocols.base import ProtocolError

Environ = dict[str, str]

METHODS = (
    "OPTIONS",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "TRACE",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "ACL",
    "REPORT",
    "VERSION-CONTROL",
    "CHECKIN",
    "CHECKOUT",
    "UNCHECKOUT",
    "SEARCH",
    "MKWORKSPACE",
    "UPDATE",
    "LABEL",
    "MERGE",
    "BASELINE-CONTROL",
    "MKACTIVITY",
)
"""AJP's method codes, from 1. flup's table says BASELINE_CONTROL."""

STORED_METHOD = 0xFF
"""The method code for a method outside the table (PATCH): its name is an attribute."""

HEADER_CODES = (
    "HTTP_ACCEPT",
    "HTTP_ACCEPT_CHARSET",
    "HTTP_ACCEPT_ENCODING",
    "HTTP_ACCEPT_LANGUAGE",
    "HTTP_AUTHORIZATION",
    "HTTP_CONNECTION",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "HTTP_COOKIE",
    "HTTP_COOKIE2",
    "HTTP_HOST",
    "HTTP_PRAGMA",
    "HTTP_REFERER",
    "HTTP_USER_AGENT",
)
"""The environ keys of the request headers sent as 0xA001 to 0xA00E."""

ATTRIBUTE_KEYS: dict[int, str | None] = {
    0x01: None,  # context: sent by no front end; ignored, as Tomcat does
    0x02: None,  # servlet_path: likewise
    0x03: "REMOTE_USER",
    0x04: "AUTH_TYPE",
    0x05: "QUERY_STRING",
    0x06: "AJP_ROUTE",  # the balancer member's route (jvm_route)
    0x07: "SSL_CLIENT_CERT",
    0x08: "SSL_CIPHER",
    0x09: "SSL_SESSION_ID",
}
"""Where each coded attribute with a string value goes; None drops it."""

NAMED_ATTRIBUTE = 0x0A
SSL_KEY_SIZE = 0x0B
SECRET = 0x0C
STORED_METHOD_NAME = 0x0D
ATTRIBUTES_END = 0xFF

SSL_ATTRIBUTES = ("SSL_CLIENT_CERT", "SSL_CIPHER", "SSL_SESSION_ID")
"""Sent only for a request that came over TLS: each of them makes the request HTTPS."""

APACHE_NAMED = {
    "AJP_REMOTE_PORT": "REMOTE_PORT",
    "AJP_LOCAL_ADDR": "SERVER_ADDR",
    "AJP_SSL_PROTOCOL": "SSL_PROTOCOL",
}
"""Named attributes Apache's mod_proxy_ajp adds itself, and their CGI and mod_ssl names."""

NAMED_PREFIX = "AJP_"
"""Other named attributes go into the environ under this prefix."""

_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
"""The characters of an HTTP method name (RFC 9110's token)."""

_SHORT = struct.Struct(">H")
_NULL = 0xFFFF


@dataclass(frozen=True)
class ForwardRequest:
    """A decoded request head: the environ, and the secret the front end sent, if any."""

    environ: Environ
    secret: bytes | None


class _Reader:
    """Reads AJP fields from one packet; reading past its end raises ProtocolError."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _fail(self, what: str, needed: int) -> ProtocolError:
        return ProtocolError(
            f"{what} needs {needed} byte{'s' if needed > 1 else ''} at offset {self._pos}, "
            f"past the end of the {len(self._data)}-byte request packet"
        )

    @property
    def left(self) -> int:
        return len(self._data) - self._pos

    def byte(self, what: str) -> int:
        if self.left < 1:
            raise self._fail(what, 1)
        value = self._data[self._pos]
        self._pos += 1
        return value

    def peek(self) -> int:
        return self._data[self._pos] if self.left else -1

    def short(self, what: str) -> int:
        if self.left < 2:
            raise self._fail(what, 2)
        (value,) = _SHORT.unpack_from(self._data, self._pos)
        self._pos += 2
        return int(value)

    def string(self, what: str) -> bytes | None:
        """A length, the bytes and a NUL; None for the null string (length 0xFFFF)."""
        length = self.short(what)
        if length == _NULL:
            return None
        if self.left < length + 1:
            raise self._fail(what, length + 1)
        end = self._pos + length
        if self._data[end] != 0:
            raise ProtocolError(
                f"{what} ({length} bytes at offset {self._pos}) does not end with a NUL"
            )
        value = self._data[self._pos : end]
        self._pos = end + 1
        return value

    def text(self, what: str) -> str | None:
        value = self.string(what)
        return None if value is None else value.decode("latin-1")

    def required(self, what: str) -> str:
        value = self.text(what)
        if value is None:
            raise ProtocolError(f"{what} is missing (a null string)")
        return value


def _header_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key


def _add_header(environ: Environ, key: str, value: str) -> None:
    """A repeated header is joined as HTTP/1.1 allows (cookies with "; "), as Apache joins
    them before it forwards a request; two different lengths are an error, as in Tomcat."""
    if key not in environ:
        environ[key] = value
    elif key == "CONTENT_LENGTH":
        if environ[key] != value:
            raise ProtocolError(f"two Content-Length headers: {environ[key]!r} and {value!r}")
    else:
        environ[key] += ("; " if key == "HTTP_COOKIE" else ", ") + value


def _headers(reader: _Reader, environ: Environ) -> None:
    count = reader.short("the header count")
    # Each header takes at least 4 bytes: a 2-byte code and a null value.
    if count * 4 > reader.left:
        raise ProtocolError(
            f"the request packet says it holds {count} headers, and has only "
            f"{reader.left} bytes left for them"
        )
    for index in range(count):
        what = f"header {index + 1} of {count}"
        if reader.peek() == 0xA0:
            code = reader.short(what)
            if not 0xA001 <= code < 0xA001 + len(HEADER_CODES):
                raise ProtocolError(f"{what} has the unknown code {code:#06x}")
            key = HEADER_CODES[code - 0xA001]
        else:
            name = reader.text(f"the name of {what}")
            if not name:
                raise ProtocolError(f"{what} has an empty name")
            key = _header_key(name)
        value = reader.text(f"the value of {what}")
        _add_header(environ, key, "" if value is None else value)


def _method(code: int, stored: str | None) -> str:
    if code == STORED_METHOD:
        if stored is None:
            raise ProtocolError("method code 0xff without the stored_method attribute")
        if not stored or not set(stored) <= _TOKEN:
            raise ProtocolError(f"stored_method {stored!r} is not a method name")
        return stored
    if not 1 <= code <= len(METHODS):
        raise ProtocolError(f"unknown method code {code:#04x}")
    return METHODS[code - 1]


def decode(data: bytes) -> ForwardRequest:
    """The environ of one FORWARD_REQUEST packet (`data` starts with its type byte).

    Keys are set in order of trust and none is set twice: the request's own fields and
    headers, then the coded attributes, then the named ones, each only where nothing is
    yet. ProtocolError for anything malformed.
    """
    reader = _Reader(data)
    reader.byte("the packet type")
    method_code = reader.byte("the method code")
    environ: Environ = {
        "SERVER_PROTOCOL": reader.required("the protocol"),
        "REQUEST_URI": reader.required("the request URI"),
        "REMOTE_ADDR": reader.text("the remote address") or "",
    }
    remote_host = reader.text("the remote host")
    if remote_host:
        environ["REMOTE_HOST"] = remote_host
    environ["SERVER_NAME"] = reader.text("the server name") or ""
    environ["SERVER_PORT"] = str(reader.short("the server port"))
    is_ssl = reader.byte("the is_ssl flag") != 0
    _headers(reader, environ)

    secret: bytes | None = None
    stored: str | None = None
    coded: Environ = {}
    named: list[tuple[str, str]] = []
    while (code := reader.byte("an attribute code or the end of the attributes")) != (
        ATTRIBUTES_END
    ):
        if code == NAMED_ATTRIBUTE:
            name = reader.text("an attribute name")
            value = reader.text(f"the value of attribute {name!r}")
            if not name:
                raise ProtocolError("a named attribute without a name")
            named.append((name, value or ""))
        elif code == SSL_KEY_SIZE:
            # A number, not a string: flup decoded it as a string and crashed.
            coded["SSL_CIPHER_USEKEYSIZE"] = str(reader.short("the SSL key size"))
        elif code == SECRET:
            secret = reader.string("the secret") or b""
        elif code == STORED_METHOD_NAME:
            stored = reader.text("the stored method")
        elif code in ATTRIBUTE_KEYS:
            value = reader.text(f"attribute {code:#04x}")
            key = ATTRIBUTE_KEYS[code]
            if key is not None and value is not None:
                coded[key] = value
        else:
            # Its length is unknown, so nothing after it can be read.
            raise ProtocolError(f"unknown attribute code {code:#04x}")
    if reader.left:
        raise ProtocolError(
            f"{reader.left} bytes after the end of the attributes: the packet length "
            "does not match the request"
        )

    environ["REQUEST_METHOD"] = _method(method_code, stored)
    for key, value in coded.items():
        environ.setdefault(key, value)
    if is_ssl or any(key in coded for key in SSL_ATTRIBUTES):
        environ["HTTPS"] = "on"
    for name, value in named:
        key = APACHE_NAMED.get(name, NAMED_PREFIX + name)
        if key == "REMOTE_PORT" and not (value.isascii() and value.isdigit()):
            continue
        environ.setdefault(key, value)
    return ForwardRequest(environ, secret)
