"""An SCGI request's header block: a netstring of NUL-separated names and values.

Ours, bounded: flup's reader took any length the client announced. The netstring is
split from the bytes that have arrived (socket-free, so it is tested on bytes), as the
connection reads a request head with one recv() when it can.
"""

from __future__ import annotations

from django_runfcgi.protocols.base import ProtocolError
from django_runfcgi.protocols.wsgi import Environ


def split_netstring(data: bytes, limit: int, *, eof: bool = False) -> tuple[bytes, int] | None:
    """The header block at the start of `data` and where what follows it (the body)
    begins; None while more bytes are needed, with `eof` the connection has closed.

    EOFError for a connection closed before sending anything; ProtocolError for bytes
    that are not a netstring of at most `limit` bytes, found as soon as they arrive.
    """
    width = len(str(limit))
    colon = data.find(b":", 0, width + 1)
    if colon > 0 and data[:colon].isdigit():
        size = int(data[:colon])
    else:
        prefix = data[: width + 1]
        for index, byte in enumerate(prefix):
            if not 0x30 <= byte <= 0x39:
                raise ProtocolError(
                    f"request does not start with a netstring length: {prefix[: index + 1]!r}"
                )
        if len(prefix) > width:
            raise ProtocolError(
                f"headers netstring of {prefix.decode()}... bytes is over maxheadsize={limit}"
            )
        if not eof:
            return None
        if data:
            raise ProtocolError("connection closed inside the netstring length")
        raise EOFError
    if size > limit:
        raise ProtocolError(f"headers netstring of {size} bytes is over maxheadsize={limit}")
    end = colon + 1 + size
    if len(data) <= end:
        if not eof:
            return None
        raise ProtocolError(f"connection closed inside the {size}-byte headers netstring")
    if data[end] != 0x2C:
        raise ProtocolError(f"headers netstring ends with {data[end : end + 1]!r}, not ','")
    return data[colon + 1 : end], end + 1


def parse_headers(data: bytes, limit: int) -> Environ:
    """The headers as environ, at most `limit` of them (counted before they are split).

    CONTENT_LENGTH must be ASCII digits: str.isdigit() also takes '²', which int()
    refuses with a ValueError.
    """
    if data.count(b"\0") > 2 * limit:
        raise ProtocolError(f"more than maxheaders={limit} headers")
    # One decode of the block, not two per header: latin-1 maps each byte to one
    # character, so NUL splits the text where it split the bytes.
    strings = data.decode("latin-1").split("\0")
    if strings[-1] or len(strings) % 2 == 0:
        raise ProtocolError("headers are not NUL-terminated name/value pairs")
    pairs = iter(strings)
    # The last, empty string has no pair and is dropped.
    environ: Environ = dict(zip(pairs, pairs, strict=False))
    length = environ.get("CONTENT_LENGTH", "")
    if not (length.isascii() and length.isdigit()):
        raise ProtocolError(f"CONTENT_LENGTH is {length!r}, not a number of bytes")
    if "REQUEST_METHOD" not in environ:
        raise ProtocolError("REQUEST_METHOD is missing")
    return environ
