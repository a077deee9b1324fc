"""An SCGI request's header block: a netstring of NUL-separated names and values.

Ours, bounded: flup's reader took any length the client announced.
"""

from __future__ import annotations

from typing import IO

from django_runfcgi.protocols.base import ProtocolError
from django_runfcgi.protocols.wsgi import Environ


def read_netstring(rfile: IO[bytes], limit: int) -> bytes:
    digits = b""
    while True:
        char = rfile.read(1)
        if not char:
            if digits:
                raise ProtocolError("connection closed inside the netstring length")
            raise EOFError
        if char == b":" and digits:
            break
        if not char.isdigit():
            raise ProtocolError(
                f"request does not start with a netstring length: {digits + char!r}"
            )
        digits += char
        if len(digits) > len(str(limit)):
            raise ProtocolError(
                f"headers netstring of {digits.decode()}... bytes is over maxheadsize={limit}"
            )
    size = int(digits)
    if size > limit:
        raise ProtocolError(f"headers netstring of {size} bytes is over maxheadsize={limit}")
    data = rfile.read(size + 1)
    if len(data) < size + 1:
        raise ProtocolError(f"connection closed inside the {size}-byte headers netstring")
    if data[-1:] != b",":
        raise ProtocolError(f"headers netstring ends with {data[-1:]!r}, not ','")
    return data[:-1]


def parse_headers(data: bytes, limit: int) -> Environ:
    """The headers as environ, at most `limit` of them (counted before they are split).

    CONTENT_LENGTH must be ASCII digits: str.isdigit() also takes '²', which int()
    refuses with a ValueError.
    """
    if data.count(b"\0") > 2 * limit:
        raise ProtocolError(f"more than maxheaders={limit} headers")
    strings = data.split(b"\0")
    if strings[-1] or len(strings) % 2 == 0:
        raise ProtocolError("headers are not NUL-terminated name/value pairs")
    environ: Environ = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in zip(strings[:-1:2], strings[1::2], strict=True)
    }
    length = environ.get("CONTENT_LENGTH", "")
    if not (length.isascii() and length.isdigit()):
        raise ProtocolError(f"CONTENT_LENGTH is {length!r}, not a number of bytes")
    if "REQUEST_METHOD" not in environ:
        raise ProtocolError("REQUEST_METHOD is missing")
    return environ
