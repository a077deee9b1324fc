"""Hostile input for each protocol, built from a valid request and then broken.

Random bytes alone rarely get past a protocol's first check; these generators start
from what a web server sends (records, a netstring, container packets), break it the
ways a buggy or hostile client would (a stream ended twice, a record dropped,
repeated, re-typed or mis-sized; a length that lies; a field cut short; garbage
appended), and only then turn it into bytes, which may still be cut at any point.

Every choice comes from one ``random.Random``, so an input is named by its seed and
replayed with ``generate(protocol, seed)``.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

# Mostly views that read the body: a view still reading is where a connection's
# state machine is tested hardest. No view that fails: its traceback would drown the
# lines these inputs may log.
PATHS = ["/echo/", "/echo/", "/upload/", "/", "/ignore-body/", "/status/204/", "/nowhere/"]
METHODS = ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS", "", "G\0T", "ÉCRIRE"]
BODY_SIZES = [0, 1, 10, 100, 1000, 3000, 20_000]


def _bytes(rnd: random.Random, most: int) -> bytes:
    return rnd.randbytes(rnd.randint(0, most))


def _pick(rnd: random.Random, usual: bytes, odd: list[bytes]) -> bytes:
    """Mostly what a web server sends, so that most inputs reach the application."""
    if rnd.random() < 0.85:
        return usual
    return rnd.choice(odd) if rnd.random() < 0.7 else _bytes(rnd, 40)


def _body(rnd: random.Random) -> bytes:
    size = rnd.choice(BODY_SIZES)
    return (rnd.randbytes(16) * (size // 16 + 1))[:size]


def cgi_params(rnd: random.Random, body: bytes) -> list[tuple[bytes, bytes]]:
    """The parameters nginx sends, some of them odd, plus a few made-up ones."""
    params = [
        (b"REQUEST_METHOD", _pick(rnd, b"POST", [m.encode() for m in METHODS])),
        (b"SCRIPT_NAME", _pick(rnd, b"", [b"/app", b"/\xff"])),
        (b"PATH_INFO", _pick(rnd, rnd.choice(PATHS).encode(), [b"", b"/\xff", b"//"])),
        (b"QUERY_STRING", _pick(rnd, b"a=1", [b"", b"%zz", b"a=" + b"b" * 3000])),
        (b"SERVER_NAME", _pick(rnd, b"localhost", [b"", b"\xff\xfe", b"a" * 300])),
        (b"SERVER_PORT", _pick(rnd, b"80", [b"", b"-1", b"99999", b"x"])),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"REMOTE_ADDR", _pick(rnd, b"127.0.0.1", [b"::1", b"", b"not-an-ip"])),
        (
            b"CONTENT_LENGTH",
            _pick(
                rnd,
                str(len(body)).encode(),
                [b"", b"-1", b"abc", b"99999999999", "²".encode(), b" 3", b"1" * 400],
            ),
        ),
        # Not a host that Django refuses: it logs a traceback for each, as it should.
        (b"HTTP_HOST", b"localhost"),
    ]
    for _ in range(rnd.randint(0, 4)):
        name = rnd.choice([b"HTTP_X", b"HTTPS", b"wsgi.input", b"", _bytes(rnd, 20)])
        params.append((name, _bytes(rnd, 40)))
    if rnd.random() < 0.15:
        rnd.shuffle(params)
    return params


def _cut(rnd: random.Random, data: bytes) -> bytes:
    """Sometimes cut short, sometimes followed by garbage, sometimes one byte changed."""
    how = rnd.choice(["whole", "whole", "whole", "cut", "garbage", "flip"])
    if how == "cut" and data:
        return data[: rnd.randrange(len(data))]
    if how == "garbage":
        return data + rnd.randbytes(rnd.randint(1, 200))
    if how == "flip" and data:
        at = rnd.randrange(len(data))
        return data[:at] + bytes([rnd.randrange(256)]) + data[at + 1 :]
    return data


def _split(rnd: random.Random, data: bytes, most: int) -> list[bytes]:
    """`data` in pieces of at most `most` bytes, cut where a web server might cut it."""
    pieces = []
    while data:
        size = min(most, rnd.choice([1, 7, len(data) // 2 or 1, len(data)]))
        pieces.append(data[:size])
        data = data[size:]
    return pieces


# FastCGI ---------------------------------------------------------------------------

BEGIN, ABORT, PARAMS, STDIN, DATA, GET_VALUES = 1, 2, 4, 5, 8, 9


def _fcgi_length(length: int) -> bytes:
    return bytes([length]) if length < 128 else struct.pack("!L", length | 0x80000000)


def _fcgi_pairs(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(_fcgi_length(len(n)) + _fcgi_length(len(v)) + n + v for n, v in pairs)


class FcgiRecord:
    """A record before encoding; ``declared`` is the content length the header claims."""

    def __init__(self, kind: int, request_id: int, content: bytes = b"") -> None:
        self.version = 1
        self.kind = kind
        self.request_id = request_id
        self.content = content
        self.declared: int | None = None
        self.padding = -len(content) % 8

    def encode(self) -> bytes:
        length = len(self.content) if self.declared is None else self.declared
        header = struct.pack(
            "!BBHHBx", self.version, self.kind, self.request_id, length & 0xFFFF, self.padding
        )
        return header + self.content + bytes(self.padding)


def fastcgi_input(rnd: random.Random) -> bytes:
    request_id = rnd.choice([1, 1, 1, 2, 0, 65535])
    body = _body(rnd)
    role = rnd.choice([1] * 6 + [2, 3, 0, 9])
    flags = rnd.choice([0, 0, 1, 255])
    records = [FcgiRecord(BEGIN, request_id, struct.pack("!HB5x", role, flags))]
    params = cgi_params(rnd, body)
    if rnd.random() < 0.8:
        # Whole pairs in each record, as web servers send them.
        pieces = [_fcgi_pairs(params[i : i + 4]) for i in range(0, len(params), 4)]
    else:
        pieces = _split(rnd, _fcgi_pairs(params), 65535)
    records += [FcgiRecord(PARAMS, request_id, piece) for piece in pieces]
    records.append(FcgiRecord(PARAMS, request_id))
    records += [FcgiRecord(STDIN, request_id, p) for p in _split(rnd, body, 65535)]
    records.append(FcgiRecord(STDIN, request_id))
    for _ in range(rnd.choice([0, 1, 1, 2, 3])):
        _break_record(rnd, records)
    return _cut(rnd, b"".join(record.encode() for record in records))


def _break_record(rnd: random.Random, records: list[FcgiRecord]) -> None:
    at = rnd.randrange(len(records))
    record = records[at]
    how = rnd.choice(
        ["end", "end", "drop", "repeat", "swap", "kind", "id", "version", "lie", "insert"]
    )
    if how == "end":
        # A stream ended again: the end of PARAMS among the body's records, say.
        body = [i for i, each in enumerate(records) if each.kind == STDIN][1:]
        where = rnd.choice(body) if body and rnd.random() < 0.7 else rnd.randint(0, len(records))
        records.insert(where, FcgiRecord(rnd.choice([PARAMS, STDIN]), record.request_id))
    elif how == "drop" and len(records) > 1:
        del records[at]
    elif how == "repeat":
        copy = FcgiRecord(record.kind, record.request_id, record.content)
        records.insert(rnd.randint(at + 1, len(records)), copy)
    elif how == "swap":
        other = rnd.randrange(len(records))
        records[at], records[other] = records[other], records[at]
    elif how == "kind":
        record.kind = rnd.choice([*range(1, 12), rnd.randrange(256)])
    elif how == "id":
        record.request_id = rnd.choice([0, 2, rnd.randrange(65536)])
    elif how == "version":
        record.version = rnd.randrange(256)
    elif how == "lie":
        record.declared = rnd.choice([0, len(record.content) + 1, rnd.randrange(65536)])
        if rnd.random() < 0.3:
            record.padding = rnd.randrange(256)
    else:
        kind = rnd.choice([ABORT, GET_VALUES, DATA, BEGIN, 11, 200])
        content = rnd.choice([b"", _fcgi_pairs([(b"FCGI_MAX_CONNS", b"")]), _bytes(rnd, 64)])
        records.insert(at, FcgiRecord(kind, record.request_id, content))


# SCGI ------------------------------------------------------------------------------


def scgi_input(rnd: random.Random) -> bytes:
    body = _body(rnd)
    params = cgi_params(rnd, body)
    length = next((value for name, value in params if name == b"CONTENT_LENGTH"), b"0")
    headers = [(b"CONTENT_LENGTH", length), (b"SCGI", b"1")]
    headers += [pair for pair in params if pair[0] != b"CONTENT_LENGTH"]
    if rnd.random() < 0.1:
        rnd.shuffle(headers)
    if rnd.random() < 0.1:
        headers.append(rnd.choice(headers))
    block = b"".join(name + b"\0" + value + b"\0" for name, value in headers)
    if rnd.random() < 0.1:
        block = block[:-1]  # a value without its NUL
    prefix = _pick(
        rnd,
        str(len(block)).encode(),
        [b"", b"-5", "²".encode(), b"0" * 30 + b"1", b"99999999", b" 12", b"1" * 50],
    )
    comma = _pick(rnd, b",", [b"", b";", b",,"])
    return _cut(rnd, prefix + b":" + block + comma + body)


# AJP 1.3 ---------------------------------------------------------------------------


def _ajp_string(rnd: random.Random, value: bytes | None) -> bytes:
    if value is None:
        return b"\xff\xff"
    length = len(value) if rnd.random() < 0.95 else rnd.randrange(65536)
    terminator = b"\0" if rnd.random() < 0.95 else b""
    return struct.pack(">H", length) + value + terminator


def _ajp_packet(rnd: random.Random, payload: bytes) -> bytes:
    magic = b"\x12\x34" if rnd.random() < 0.95 else rnd.randbytes(2)
    length = len(payload) if rnd.random() < 0.95 else rnd.randrange(65536)
    return magic + struct.pack(">H", length & 0xFFFF) + payload


def ajp_input(rnd: random.Random) -> bytes:
    body = _body(rnd)
    kind = rnd.choice([2] * 10 + [7, 8, 10, 0, 255])
    method = rnd.choice([2, 2, 2, 4, 3, 5]) if rnd.random() < 0.9 else rnd.randrange(256)
    length = _pick(rnd, str(len(body)).encode(), [b"", b"-1", b"x", b"99999999999"])
    headers = [(struct.pack(">H", 0xA00B), b"localhost"), (struct.pack(">H", 0xA008), length)]
    for _ in range(rnd.randint(0, 5)):
        name = (
            struct.pack(">H", rnd.randint(0xA001, 0xA00F))
            if rnd.random() < 0.5
            else _ajp_string(rnd, _bytes(rnd, 20))
        )
        headers.append((name, _bytes(rnd, 40)))
    count = len(headers) if rnd.random() < 0.95 else rnd.randrange(65536)
    fields = [
        bytes([kind, method]),
        _ajp_string(rnd, b"HTTP/1.1"),
        _ajp_string(rnd, rnd.choice(PATHS).encode()),
        _ajp_string(rnd, b"127.0.0.1"),
        _ajp_string(rnd, None),
        _ajp_string(rnd, b"localhost"),
        struct.pack(">HBH", 80, rnd.choice([0, 0, 1, 7]), count),
        b"".join(name + _ajp_string(rnd, value) for name, value in headers),
    ]
    for _ in range(rnd.randint(0, 4)):
        code = rnd.choice([*range(1, 15), 200])
        if code == 10:
            name = rnd.choice([b"REMOTE_USER", b"PATH_INFO", b"HTTPS", _bytes(rnd, 12)])
            fields.append(b"\x0a" + _ajp_string(rnd, name) + _ajp_string(rnd, _bytes(rnd, 20)))
        else:
            fields.append(bytes([code]) + _ajp_string(rnd, _bytes(rnd, 40)))
    if rnd.random() < 0.9:
        fields.append(b"\xff")
    if rnd.random() < 0.1:
        fields[rnd.randrange(len(fields))] = _bytes(rnd, 20)
    packets = [_ajp_packet(rnd, b"".join(fields))]
    for piece in _split(rnd, body, 8186):
        packets.append(_ajp_packet(rnd, struct.pack(">H", len(piece)) + piece))
    packets.append(_ajp_packet(rnd, b""))
    if rnd.random() < 0.1:
        packets.insert(rnd.randint(1, len(packets)), _ajp_packet(rnd, bytes([10])))
    return _cut(rnd, b"".join(packets))


GENERATORS: dict[str, Callable[[random.Random], bytes]] = {
    "fcgi": fastcgi_input,
    "scgi": scgi_input,
    "ajp": ajp_input,
}


def generate(protocol: str, seed: int) -> bytes:
    """The input named by `seed`, the same on every run."""
    return GENERATORS[protocol](random.Random(seed))
