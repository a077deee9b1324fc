"""The slow-request log's parts in this process: what an entry shows of what a client
sent, and the watch on requests that run in threads of the test."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from django_runfcgi import slowlog
from django_runfcgi.slowlog import SlowLogFile, SlowRequests, escape


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("/slow/?s=1", "/slow/?s=1"),
        ("", "-"),
        ("/a b", "/a\\x20b"),
        ("/a\r\nX-Injected: 1", "/a\\x0d\\x0aX-Injected:\\x201"),
        ("/back\\slash", "/back\\x5cslash"),
        ("/caf\xc3\xa9", "/caf\\xc3\\xa9"),  # UTF-8 bytes, as WSGI decodes them (latin-1)
        ("/\x00\x1b\x7f", "/\\x00\\x1b\\x7f"),
        ("/\u20ac", "/?"),  # not from the wire: replaced
    ],
)
def test_escape(text: str, shown: str) -> None:
    assert escape(text, 100) == shown


def test_escape_cuts_at_the_limit() -> None:
    assert escape("/" + "x" * 20, 10) == "/" + "x" * 9 + "..."
    assert escape("/" + "x" * 9, 10) == "/" + "x" * 9


class Collected(SlowLogFile):
    def __init__(self) -> None:
        super().__init__(None)
        self.entries: list[str] = []

    def write(self, entry: bytes) -> None:
        self.entries.append(entry.decode())


def serve(watch: SlowRequests, seconds: float, depth: int = 0) -> None:
    """A request in this thread: a view that sleeps, `depth` calls down."""
    watch.request_begins({"REQUEST_METHOD": "GET", "REQUEST_URI": "/sleepy/", "QUERY_STRING": ""})
    try:
        deep_view(seconds, depth)
    finally:
        watch.request_ends(200, 0)


def deep_view(seconds: float, depth: int) -> None:
    if depth:
        deep_view(seconds, depth - 1)
    else:
        time.sleep(seconds)


SLEEP_LINE = deep_view.__code__.co_firstlineno + 4


def test_only_the_slow_request_is_logged_and_counted_once() -> None:
    file = Collected()
    counted: list[int] = []
    watch = SlowRequests(0.2, file, counted.append)
    serve(watch, 0.0)
    thread = threading.Thread(target=serve, args=(watch, 0.7))
    thread.start()
    thread.join(5)
    serve(watch, 0.0)
    time.sleep(0.4)
    [entry] = file.entries
    assert " Slow request: GET /sleepy/ running 0.2 s (slowlog=0.2), thread " in entry
    assert f"thread {thread.native_id};" in entry
    assert entry.rstrip().splitlines()[-2:] == [
        f'  File "{__file__}", line {SLEEP_LINE}, in deep_view',
        "    time.sleep(seconds)",
    ]
    assert counted == [thread.ident]


def test_a_deep_stack_shows_its_most_recent_calls() -> None:
    file = Collected()
    watch = SlowRequests(0.1, file, None)
    serve(watch, 0.3, depth=slowlog.STACK_FRAMES * 2)
    [entry] = file.entries
    lines = entry.rstrip().splitlines()
    assert lines[1].startswith("  ... ")
    assert lines[1].endswith(" older calls left out")
    assert int(lines[1].split()[1]) > slowlog.STACK_FRAMES
    assert lines[-2:] == [
        f'  File "{__file__}", line {SLEEP_LINE}, in deep_view',
        "    time.sleep(seconds)",
    ]


def test_the_file_is_reopened_on_its_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "slow.log"
    file = SlowLogFile(path)
    try:
        fd = file.fd
        file.write(b"one\n")
        path.rename(tmp_path / "slow.log.1")
        file.reopen()
        file.write(b"two\n")
        assert file.fd == fd
        assert (tmp_path / "slow.log.1").read_text() == "one\n"
        assert path.read_text() == "two\n"
    finally:
        file.close()
