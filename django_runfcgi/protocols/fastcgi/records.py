"""FastCGI records on bytes: the record header, name-value pairs and framing.

Pure functions, tested on bytes. flup's record and pair code read byte by byte and
raised IndexError or struct.error on a cut record; what runs here is ours, with flup's
constants (fcgi_base) naming the record types.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

from flup.server import fcgi_base

from django_runfcgi.protocols.base import ProtocolError

HEADER = struct.Struct("!BBHHBx")
HEADER_LEN = fcgi_base.FCGI_HEADER_LEN
END_REQUEST_BODY = struct.Struct(fcgi_base.FCGI_EndRequestBody)
BEGIN_REQUEST_BODY = struct.Struct(fcgi_base.FCGI_BeginRequestBody)
UNKNOWN_TYPE_BODY = struct.Struct(fcgi_base.FCGI_UnknownTypeBody)
RECORD_SIZE = 8192 - HEADER_LEN
"""Content bytes per record written, as flup wrote them (its maxwrite of 8192)."""
_PADDING = bytes(8)


@lru_cache(maxsize=64)
def stream_end(kind: int, request_id: int) -> bytes:
    """The empty record that ends a request's FCGI_STDOUT or FCGI_STDERR stream.

    Made once per stream type and request id: every request ends with these, and a web
    server uses the same few ids again and again."""
    return HEADER.pack(1, kind, request_id, 0, 0)


@lru_cache(maxsize=64)
def end_request_record(request_id: int, app_status: int, protocol_status: int) -> bytes:
    """The FCGI_END_REQUEST record (eight bytes of body: no padding), made once per id
    and status, as stream_end() is."""
    header = HEADER.pack(1, fcgi_base.FCGI_END_REQUEST, request_id, 8, 0)
    return header + END_REQUEST_BODY.pack(app_status, protocol_status)


def decode_pairs(data: bytes, limit: int) -> dict[str, str]:
    """The name-value pairs of an FCGI_PARAMS stream (or FCGI_GET_VALUES record), at most
    `limit` of them, in one pass; flup's decoder raised IndexError or struct.error on a
    pair cut short.

    This runs for some thirty pairs per request, so it is written for speed: the data
    is decoded once (in latin-1 a byte is a character, so names and values are slices
    of that text at the byte offsets), pairs with two one-byte lengths take the short
    path, and a pair that overruns the data is caught once, after the loop.
    """
    pairs = {}
    text = data.decode("latin-1")
    pos, end = 0, len(data)
    name_length = value_length = 0
    left = limit
    try:
        while pos < end:
            if not left:
                raise ProtocolError(f"more than maxheaders={limit} name-value pairs")
            left -= 1
            name_length = data[pos]
            value_length = data[pos + 1]
            if name_length < 128 and value_length < 128:
                value_at = pos + 2 + name_length
            else:
                if name_length < 128:
                    pos += 1
                else:
                    name_length = int.from_bytes(data[pos : pos + 4], "big") & 0x7FFFFFFF
                    pos += 4
                value_length = data[pos]
                if value_length < 128:
                    pos += 1
                else:
                    value_length = int.from_bytes(data[pos : pos + 4], "big") & 0x7FFFFFFF
                    pos += 4
                value_at = pos + name_length
            pos = value_at + value_length
            pairs[text[value_at - name_length : value_at]] = text[value_at:pos]
    except IndexError:
        raise ProtocolError("name-value pair cut short in its length") from None
    if pos > end:
        raise ProtocolError(
            f"name-value pair of {name_length}+{value_length} bytes overruns "
            f"the {end} bytes of pairs"
        )
    return pairs


def frame(kind: int, request_id: int, data: bytes, step: int, out: list[Any]) -> None:
    """Append `data` to `out` as records of at most `step` bytes, ready for one join."""
    if len(data) <= step:
        padding = -len(data) % 8
        out.append(HEADER.pack(1, kind, request_id, len(data), padding))
        out.append(data)
        if padding:
            out.append(_PADDING[:padding])
        return
    view = memoryview(data)
    for start in range(0, len(view), step):
        piece = view[start : start + step]
        padding = -len(piece) % 8
        out.append(HEADER.pack(1, kind, request_id, len(piece), padding))
        out.append(piece)
        if padding:
            out.append(_PADDING[:padding])


def record(kind: int, request_id: int, content: bytes = b"") -> bytes:
    out: list[Any] = []
    frame(kind, request_id, content, 65535, out)
    return b"".join(out)


def latin1(value: str | bytes, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("latin-1")
    if isinstance(value, bytes):
        return value
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def encode_pairs(pairs: dict[str, str]) -> bytes:
    """Name-value pairs for FCGI_GET_VALUES_RESULT, in flup's encoding."""
    return b"".join(
        fcgi_base.encode_pair(name.encode("latin-1"), value.encode("latin-1"))
        for name, value in pairs.items()
    )
