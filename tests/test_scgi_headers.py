"""The SCGI head split from the bytes that have arrived: nothing is taken before the
netstring is whole, the body's first bytes are left after it, and a bad head is refused
as soon as its bytes show it."""

from __future__ import annotations

import pytest

from django_runfcgi.protocols.base import ProtocolError
from django_runfcgi.protocols.scgi.headers import parse_headers, split_netstring

HEAD = b"CONTENT_LENGTH\x004\x00REQUEST_METHOD\x00POST\x00"
REQUEST = b"%d:%s," % (len(HEAD), HEAD) + b"body"


def test_a_head_arriving_in_pieces_is_split_once_whole() -> None:
    for end in range(len(REQUEST) - 4):
        assert split_netstring(REQUEST[:end], 1000) is None
    head, body_at = split_netstring(REQUEST, 1000) or (b"", 0)
    assert (head, REQUEST[body_at:]) == (HEAD, b"body")
    assert parse_headers(head, 10) == {"CONTENT_LENGTH": "4", "REQUEST_METHOD": "POST"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"x", "request does not start with a netstring length: b'x'"),
        (b"12x", "request does not start with a netstring length: b'12x'"),
        (b":", "request does not start with a netstring length: b':'"),
        (b"10000", r"headers netstring of 10000\.\.\. bytes is over maxheadsize=1000"),
        (b"1001:", "headers netstring of 1001 bytes is over maxheadsize=1000"),
        (b"3:abc;", "headers netstring ends with b';', not ','"),
    ],
)
def test_a_bad_head_is_refused_before_more_comes(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        split_netstring(data, 1000)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"12", "connection closed inside the netstring length"),
        (b"5:abc", "connection closed inside the 5-byte headers netstring"),
        (b"5:abcde", "connection closed inside the 5-byte headers netstring"),
    ],
)
def test_a_connection_closed_inside_the_head_is_a_protocol_error(
    data: bytes, message: str
) -> None:
    assert split_netstring(data, 1000) is None
    with pytest.raises(ProtocolError, match=message):
        split_netstring(data, 1000, eof=True)


def test_a_connection_closed_before_a_byte_is_a_quiet_end() -> None:
    assert split_netstring(b"", 1000) is None
    with pytest.raises(EOFError):
        split_netstring(b"", 1000, eof=True)


def test_headers_decode_as_latin1_in_one_piece() -> None:
    head = "CONTENT_LENGTH\x000\x00REQUEST_METHOD\x00GET\x00HTTP_X\x00caf\xe9\x00".encode(
        "latin-1"
    )
    assert parse_headers(head, 3)["HTTP_X"] == "caf\xe9"
    with pytest.raises(ProtocolError, match="more than maxheaders=2 headers"):
        parse_headers(head, 2)
    with pytest.raises(ProtocolError, match="not NUL-terminated name/value pairs"):
        parse_headers(head[:-1], 3)
