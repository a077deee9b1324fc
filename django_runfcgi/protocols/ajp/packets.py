"""AJP 1.3 packets on bytes: the container packet, body chunks and their limits.

flup's packet class read a packet in two recv() calls and wrote one in two sends;
flup's string and header encoders (ajp_base) are used by name.
"""

from __future__ import annotations

import struct

from flup.server import ajp_base

from django_runfcgi.protocols.base import ProtocolError

MAX_BODY_CHUNK = 8184
"""Data per SEND_BODY_CHUNK: 8192 minus the packet header, type, length and NUL."""

MAX_REQUEST_CHUNK = 8186
"""Request body bytes asked for per GET_BODY_CHUNK, as Tomcat asks: what one 8192-byte
body packet holds after its header and data length."""

BODY_IN_MEMORY = 2621440
"""Request bodies up to this size stay in memory, larger ones go to a temporary file
(Django's FILE_UPLOAD_MAX_MEMORY_SIZE default)."""


def container_packet(data: bytes | memoryview) -> bytes:
    return b"".join((ajp_base.CONTAINER_PREFIX, struct.pack(">H", len(data)), data))


def body_chunk(chunk: memoryview) -> bytes:
    # flup ends the chunk with a NUL the AJP spec does not mention; front ends accept it.
    return container_packet(
        b"".join((ajp_base.PKTTYPE_SEND_BODY, struct.pack(">H", len(chunk)), chunk, b"\0"))
    )


def content_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise ProtocolError(f"Content-Length {value!r} is not a number of bytes")
    return int(value)
