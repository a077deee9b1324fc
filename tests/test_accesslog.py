"""accessformat= compiled and applied to requests, the escaping of what a client sends,
and the options' rules (accesslog=, accessformat=)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from django_runfcgi import options
from django_runfcgi.accessformat import (
    DEFAULT_FORMAT,
    FIELDS,
    FormatError,
    compile_format,
    escape,
)
from django_runfcgi.accesslog import AccessLog

ENVIRON = {
    "REMOTE_ADDR": "198.51.100.7",
    "REMOTE_PORT": "50123",
    "REQUEST_METHOD": "GET",
    "REQUEST_URI": "/shop/?q=1",
    "QUERY_STRING": "q=1",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "HTTP_HOST": "example.org",
    "HTTP_USER_AGENT": "curl/8.5.0",
    "HTTP_X_FORWARDED_FOR": "203.0.113.9",
    "wsgi.url_scheme": "https",
}
# 2026-12-03 10:30:00 UTC, half a second in.
STARTED = 1796293800.5


def line(text: str, environ: dict[str, str] = ENVIRON, **outcome: int) -> str:
    written = compile_format(text).line(
        environ,
        outcome.get("status", 200),
        outcome.get("sent", 1234),
        outcome.get("nanoseconds", 12_345_678),
        STARTED,
    )
    return written.decode()


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def test_the_default_format_is_combined_with_microseconds_and_pid() -> None:
    assert line(DEFAULT_FORMAT) == (
        '198.51.100.7 - - [03/Dec/2026:10:30:00 +0000] "GET /shop/?q=1 HTTP/1.1" 200 1234 '
        f'"-" "curl/8.5.0" 12345 {os.getpid()}\n'
    )


def test_every_field() -> None:
    text = (
        "{remote_port} {time_iso8601} {time_msec} {method} {uri} {query} {protocol} "
        "{scheme} {host} {content_length} {duration} {duration_ms} {http_x_forwarded_for} "
        "{http_accept} {{braces}} 100%"
    )
    assert line(text) == (
        "50123 2026-12-03T10:30:00+00:00 1796293800.500 GET /shop/?q=1 q=1 HTTP/1.1 https "
        "example.org - 0.012 12 203.0.113.9 - {braces} 100%\n"
    )


def test_ajp_query_is_joined_to_the_uri() -> None:
    environ = {**ENVIRON, "REQUEST_URI": "/shop/"}
    assert line("{uri}", environ) == "/shop/?q=1\n"


def test_a_hostile_client_cannot_start_a_line_of_its_own() -> None:
    environ = {
        **ENVIRON,
        "HTTP_USER_AGENT": 'x"\r\n127.0.0.1 - - "GET /admin/ HTTP/1.1" 200\\',
        # Bytes beyond ASCII come as latin-1 characters (WSGI); é in UTF-8 is C3 A9.
        "REQUEST_URI": "/caf\xc3\xa9/\x00\x7f",
    }
    written = line('"{user_agent}" {uri}', environ)
    assert written == (
        '"x\\x22\\x0D\\x0A127.0.0.1 - - \\x22GET /admin/ HTTP/1.1\\x22 200\\x5C" '
        "/caf\\xC3\\xA9/\\x00\\x7F?q=1\n"
    )
    assert written.count("\n") == 1


def test_escape_leaves_plain_text_alone() -> None:
    text = "Mozilla/5.0 (X11; Linux x86_64) ~!#$%&'()*+,-./:;<=>?@[]^_`{|}"
    assert escape(text) is text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{status",
            "accessformat='{status' has a lone '{'; write {{ for a brace of its own, "
            "or {name} for a field.",
        ),
        (
            "status}",
            "accessformat='status}' has a lone '}'; write }} for a brace of its own, "
            "or {name} for a field.",
        ),
        ("{http_}", "accessformat='{http_}' has an unknown field {http_};"),
        ("{Status}", "accessformat='{Status}' has an unknown field {Status};"),
        ("{status.real}", "accessformat='{status.real}' has an unknown field {status.real};"),
        ("{status}\n{pid}", "accessformat='{status}\\n{pid}' spans lines;"),
    ],
)
def test_format_errors(text: str, message: str) -> None:
    with pytest.raises(FormatError) as caught:
        compile_format(text)
    assert str(caught.value).startswith(message)


def test_the_options() -> None:
    config = options.resolve({"socket": "app.sock", "accesslog": "access.log"}, Path("/srv"))
    assert config.accesslog == Path("/srv/access.log")
    assert config.accessformat == DEFAULT_FORMAT
    assert options.resolve({"socket": "/a.sock", "accesslog": "-"}).accesslog == "-"
    assert options.resolve({"socket": "/a.sock"}).accesslog is None
    with pytest.raises(options.OptionError) as caught:
        options.resolve({"socket": "/a.sock", "accessformat": "{status}"})
    assert str(caught.value) == (
        "accessformat= shapes the lines of the access log; give accesslog=FILE (or "
        "accesslog=- for standard output) too."
    )
    with pytest.raises(options.OptionError, match=r"^accesslog= needs a value"):
        options.resolve({"socket": "/a.sock", "accesslog": ""})


def test_the_log_appends_whole_lines_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path, compile_format("{method} {status} {bytes}"))
    try:
        log.request_begins(ENVIRON)
        log.request_ends(404, 7)
        path.rename(tmp_path / "access.log.1")
        log.reopen()
        log.request_begins({**ENVIRON, "REQUEST_METHOD": "POST"})
        log.request_ends(201, 0)
    finally:
        log.close()
    assert (tmp_path / "access.log.1").read_text() == "GET 404 7\n"
    assert path.read_text() == "POST 201 0\n"


def test_the_docs_describe_every_field_and_the_default_format() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "access-log.rst").read_text()
    for name in FIELDS:
        assert f"   * - ``{{{name}}}``\n" in page, name
    assert f"\n   {DEFAULT_FORMAT}\n" in page


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "\n"),
        ("{status}", "200\n"),
        ("{host}", "example.org\n"),
        (
            "{request} {uri} {status} {host} {status} {uri}",
            "GET /shop/?q=1 HTTP/1.1 /shop/?q=1 200 example.org 200 /shop/?q=1\n",
        ),
        ("{tid}", f"{threading.get_native_id()}\n"),
    ],
)
def test_fields_in_any_number_and_order(text: str, expected: str) -> None:
    assert line(text) == expected
