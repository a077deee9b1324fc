"""What a client may send, and for how long: the real server against raw clients.

Each test plays a broken or hostile web server against ``manage.py runfcgi`` with small
bounds (readtimeout=1, maxheadsize=4096, maxheaders=40) and two workers, and checks what
an operator sees: the connection closed, one line in the log, and the workers free for
the next request. FastCGI runs on both process models and with both readers of
requests (the C accelerator and the pure Python one, RUNFCGI_PURE_PYTHON=1).
"""

from __future__ import annotations

import itertools
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from django_runfcgi.protocols.fastcgi import connection as fcgi
from tests.support.clients import ajp_request, connect, fcgi_request, raw_exchange, scgi_request
from tests.support.net import Address, free_port
from tests.support.runner import Run, Runner

READ_TIMEOUT = 1.0
BOUNDS = ["readtimeout=1", "maxheadsize=4096", "maxheaders=40"]
WORKERS = ["minspare=1", "maxspare=2", "maxchildren=2"]
SETTLE = 8.0
"""Upper bound for anything that should happen within a few read timeouts."""

HEADER = struct.Struct("!BBHHBx")
BEGIN_REQUEST, ABORT_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT = 1, 2, 3, 4, 5, 6
KEEP_CONN = 1


def record(kind: int, content: bytes = b"", request_id: int = 1) -> bytes:
    padding = -len(content) % 8
    return HEADER.pack(1, kind, request_id, len(content), padding) + content + bytes(padding)


def pairs(items: dict[str, str]) -> bytes:
    out = b""
    for name, value in items.items():
        for length in (len(name), len(value)):
            out += bytes([length]) if length < 128 else struct.pack("!I", length | 1 << 31)
        out += name.encode() + value.encode()
    return out


def head(path: str, *, method: str = "GET", length: int = 0, flags: int = 0) -> bytes:
    """FCGI_BEGIN_REQUEST and the parameters of a request, as nginx sends them."""
    params = {
        "REQUEST_METHOD": method,
        "REQUEST_URI": path,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "localhost",
        "CONTENT_TYPE": "application/octet-stream",
        "CONTENT_LENGTH": str(length),
    }
    begin = record(BEGIN_REQUEST, struct.pack("!HB5x", 1, flags))
    return begin + record(PARAMS, pairs(params)) + record(PARAMS)


def records_until_close(sock: socket.socket, timeout: float = SETTLE) -> list[tuple[int, bytes]]:
    """(type, content) of what the server sends until it closes (or resets) the
    connection; fails if it has not closed within `timeout`."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"the server did not close the connection within {timeout} s"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        data += chunk
    found = []
    pos = 0
    while pos + HEADER.size <= len(data):
        _, kind, _, length, padding = HEADER.unpack_from(data, pos)
        found.append((kind, data[pos + HEADER.size : pos + HEADER.size + length]))
        pos += HEADER.size + length + padding
    return found


def closed_within(sock: socket.socket, timeout: float) -> float:
    """Seconds until the server closes `sock`, reading and dropping what it sends."""
    started = time.monotonic()
    records_until_close(sock, timeout)
    return time.monotonic() - started


@dataclass
class Served:
    run: Run
    address: Address
    method: str
    reader: str

    def log_lines(self, since: int, pattern: str) -> list[str]:
        """The server's log lines written after offset `since` that match `pattern`."""
        text = self.run.err_path.read_bytes()[since:].decode(errors="replace")
        return [line for line in text.splitlines() if re.search(pattern, line)]

    def assert_no_traceback_but_djangos(self, since: int) -> None:
        """No line runfcgi writes (they carry its "[time] [pid] [level]" stamp) comes with
        a traceback. Django logs its own, with "Internal Server Error", for a view that
        was reading the body that failed (UnreadablePostError)."""
        text = self.run.err_path.read_bytes()[since:].decode(errors="replace")
        lines = text.splitlines()
        for line, following in itertools.pairwise(lines):
            if line.startswith("["):
                assert not following.startswith("Traceback"), text

    def log_size(self) -> int:
        return self.run.err_path.stat().st_size

    def wait_for_lines(self, since: int, pattern: str, count: int) -> list[str]:
        deadline = time.monotonic() + SETTLE
        while len(found := self.log_lines(since, pattern)) < count:
            assert time.monotonic() < deadline, (
                f"{count} log lines matching {pattern!r} expected, found {found}\n"
                + self.run.stderr[since:]
            )
            time.sleep(0.05)
        return found


def start(
    tmp: Path,
    protocol: str,
    method: str,
    *,
    pure_python: bool = False,
    extra: tuple[str, ...] = (),
) -> tuple[Runner, Run, Address]:
    runner = Runner(tmp)
    words = [f"protocol={protocol}", f"method={method}", "daemonize=false", *WORKERS, *BOUNDS]
    env = {"RUNFCGI_PURE_PYTHON": "1"} if pure_python else {}
    if protocol != "fcgi":
        # Over TCP a client's reset reaches the server as one (a unix socket's is EPIPE).
        address: Address = ("127.0.0.1", free_port())
        bind = [f"host={address[0]}", f"port={address[1]}"]
    else:
        address = str(tmp / "app.sock")
        bind = [f"socket={address}"]
    run = runner.serve(*words, *extra, *bind, address=address, env=env)
    return runner, run, address


SERVERS = [
    pytest.param((method, reader), id=f"{method}-{reader}")
    for method in ("prefork", "threaded")
    for reader in ("c", "python")
]


@pytest.fixture(scope="module", params=SERVERS)
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    """A FastCGI server with small bounds and two workers."""
    method, reader = request.param
    if reader == "c" and fcgi._speedups is None:
        pytest.skip("the C accelerator is not built")
    tmp = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    runner, run, address = start(tmp, "fcgi", method, pure_python=reader == "python")
    try:
        yield Served(run, address, method, reader)
    finally:
        runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def both_workers_answer(served: Served) -> None:
    """Two requests of a second each are served side by side: neither worker is held by
    what came before (one worker would take them one after the other, two seconds)."""
    results: list[int] = []

    def one() -> None:
        results.append(fcgi_request(served.address, "GET", "/slow/", query="s=1").status)

    threads = [threading.Thread(target=one) for _ in range(2)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SETTLE)
    assert results == [200, 200]
    assert time.monotonic() - started < 1.8


# 1. A protocol error while the application reads the body.


def test_params_ended_twice_while_the_body_is_read(served: Served) -> None:
    """A second end of FCGI_PARAMS while the view reads the body started the request
    again inside itself, which then waited forever on the application lock: a worker
    lost per request. Now it is one log line and a closed connection, for each."""
    since = served.log_size()
    stream = (
        head("/echo/", method="POST", length=10)
        + record(STDIN, b"hello")
        + record(PARAMS)
        + record(STDIN, b"world")
        + record(STDIN)
    )
    held = [connect(served.address, SETTLE) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(stream)
        for sock in held:
            # No response: the connection is closed, not answered.
            assert [kind for kind, _ in records_until_close(sock)] == []
    finally:
        for sock in held:
            sock.close()
    lines = served.wait_for_lines(
        since,
        r"protocol error from .*FCGI_PARAMS for request 1 after the end of its parameters",
        2,
    )
    assert all(line.endswith("; connection closed") for line in lines)
    served.assert_no_traceback_but_djangos(since)
    both_workers_answer(served)


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        pytest.param(
            head("/echo/", method="POST", length=5)[:-8] + head("/")[:16],
            "FCGI_BEGIN_REQUEST for request 1, already active",
            id="begin-for-the-active-id",
        ),
        pytest.param(
            head("/echo/", method="POST", length=5)[:-8] + record(STDIN, b"hello"),
            "FCGI_STDIN for request 1 before the end of its FCGI_PARAMS",
            id="stdin-before-the-params-end",
        ),
        pytest.param(
            head("/echo/", method="POST", length=5) + record(STDIN, b"hello", 3),
            "FCGI_STDIN record for request 3, which was never begun",
            id="stdin-for-an-id-never-begun",
        ),
        pytest.param(
            head("/echo/", method="POST", length=5, flags=KEEP_CONN)
            + record(STDIN, b"hello")
            + record(STDIN)
            + record(STDIN, b"again"),
            "FCGI_STDIN record for request 1 after the end of its input",
            id="stdin-after-the-end-of-the-body",
        ),
    ],
)
def test_records_out_of_order_close_the_connection(
    served: Served, stream: bytes, message: str
) -> None:
    """What the specification does not allow: one log line, a closed connection."""
    since = served.log_size()
    with connect(served.address, SETTLE) as sock:
        sock.sendall(stream)
        records_until_close(sock)
    [line] = served.wait_for_lines(since, "protocol error from .*" + re.escape(message), 1)
    assert line.endswith("; connection closed")
    served.assert_no_traceback_but_djangos(since)
    both_workers_answer(served)


def test_get_values_still_answered(served: Served) -> None:
    """Management records (request id 0) keep working, before a request on the same
    connection too."""
    query = record(9, pairs({"FCGI_MPXS_CONNS": ""}), 0)
    with connect(served.address, SETTLE) as sock:
        sock.sendall(query + head("/") + record(STDIN))
        found = records_until_close(sock)
    assert found[0] == (10, pairs({"FCGI_MPXS_CONNS": "0"}))
    assert found[-1][0] == END_REQUEST


# 2. Bounds on the request head.


def test_an_endless_params_stream_is_cut_at_maxheadsize(served: Served) -> None:
    """BEGIN_REQUEST and then FCGI_PARAMS without end: read as fast as it came, without a
    bound (200 MB held by a worker). Now the connection closes past maxheadsize."""
    since = served.log_size()
    piece = record(PARAMS, pairs({"HTTP_X": "x" * 1000}))
    sent = 0
    with connect(served.address, SETTLE) as sock:
        sock.sendall(record(BEGIN_REQUEST, struct.pack("!HB5x", 1, 0)))
        try:
            while sent < 50_000_000:
                sock.sendall(piece * 64)
                sent += len(piece) * 64
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            records_until_close(sock)
    assert sent < 10_000_000, f"{sent} bytes of FCGI_PARAMS were taken"
    served.wait_for_lines(since, r"FCGI_PARAMS of request 1 over maxheadsize=4096 bytes", 1)
    both_workers_answer(served)


def test_more_params_than_maxheaders_close_the_connection(served: Served) -> None:
    since = served.log_size()
    many = {f"HTTP_X_{i}": "" for i in range(41)}
    stream = record(BEGIN_REQUEST, struct.pack("!HB5x", 1, 0))
    stream += record(PARAMS, pairs({"REQUEST_METHOD": "GET", **many})) + record(PARAMS)
    with connect(served.address, SETTLE) as sock:
        sock.sendall(stream + record(STDIN))
        assert records_until_close(sock) == []
    served.wait_for_lines(since, r"more than maxheaders=40 name-value pairs", 1)
    assert fcgi_request(served.address, headers={f"X-{i}": "1" for i in range(20)}).status == 200


# 3. The read timeout.


def test_silent_and_half_sent_connections_are_closed_after_readtimeout(served: Served) -> None:
    """Connections that sent nothing, or half a record header, held their workers for
    good: with two workers, six of them stopped the server. Each is closed after
    readtimeout with a log line, and the request behind them is served."""
    since = served.log_size()
    bad = [connect(served.address, SETTLE) for _ in range(6)]
    try:
        for sock in bad[4:]:
            sock.sendall(head("/")[:4])
        started = time.monotonic()
        response = fcgi_request(served.address, "GET", "/", timeout=SETTLE)
        assert response.status == 200
        assert time.monotonic() - started < 6 * READ_TIMEOUT + 2
        for sock in bad:
            assert closed_within(sock, SETTLE) < SETTLE
    finally:
        for sock in bad:
            sock.close()
    lines = served.wait_for_lines(since, r"timed out: .* within readtimeout=1s", 6)
    assert all("; connection closed" in line for line in lines)


def test_a_head_sent_too_slowly_is_closed(served: Served) -> None:
    """A head that trickles in a byte at a time must still be whole within readtimeout."""
    since = served.log_size()
    stream = head("/")
    with connect(served.address, SETTLE) as sock:
        started = time.monotonic()
        try:
            for byte in stream:
                sock.sendall(bytes([byte]))
                time.sleep(0.2)
                if time.monotonic() - started > 3 * READ_TIMEOUT:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        records_until_close(sock)
        assert time.monotonic() - started < 3 * READ_TIMEOUT
    served.wait_for_lines(since, r"no complete request head came within readtimeout=1s", 1)


def test_a_body_that_stalls_is_closed(served: Served) -> None:
    """The view reads a body whose web server stops sending: the connection is closed
    after readtimeout, without a response, and the worker is free."""
    since = served.log_size()
    with connect(served.address, SETTLE) as sock:
        sock.sendall(head("/echo/", method="POST", length=100) + record(STDIN, b"x" * 10))
        assert closed_within(sock, SETTLE) < READ_TIMEOUT + 2
    served.wait_for_lines(since, r"timed out: the request stalled", 1)
    both_workers_answer(served)


def test_a_kept_connection_may_stay_idle_between_requests(served: Served) -> None:
    """nginx's fastcgi_keep_conn: the idle time between requests is not a stall."""
    with connect(served.address, SETTLE) as sock:
        first = fcgi_request(served.address, "GET", "/", sock=sock, keep_conn=True)
        time.sleep(2.5 * READ_TIMEOUT)
        second = fcgi_request(served.address, "GET", "/", sock=sock, keep_conn=True)
    assert (first.status, second.status) == (200, 200)


# 4. FCGI_ABORT_REQUEST.


def test_abort_while_the_body_is_read_ends_the_request_at_once(served: Served) -> None:
    """The worker kept waiting for the body after FCGI_ABORT_REQUEST; now the request ends
    with FCGI_END_REQUEST, without the view's response, and the connection closes."""
    with connect(served.address, SETTLE) as sock:
        sock.sendall(head("/echo/", method="POST", length=100) + record(STDIN, b"x" * 10))
        time.sleep(0.2)
        sock.sendall(record(ABORT_REQUEST))
        started = time.monotonic()
        found = records_until_close(sock)
        assert time.monotonic() - started < 0.9 * READ_TIMEOUT
    assert [kind for kind, _ in found] == [STDOUT, END_REQUEST]
    assert found[-1][1] == struct.pack("!LB3x", 0, 0)
    both_workers_answer(served)


def test_abort_after_a_response_that_ignored_the_body_frees_the_worker(served: Served) -> None:
    """A view that ignores the body answers at once; the abort that follows ends the
    wait for the rest of the body (it held the worker for 10 s)."""
    with connect(served.address, SETTLE) as sock:
        sock.sendall(head("/ignore-body/", method="POST", length=100) + record(STDIN, b"x" * 10))
        data = b""
        while HEADER.pack(1, END_REQUEST, 1, 8, 0) not in data:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        sock.sendall(record(ABORT_REQUEST))
        assert closed_within(sock, SETTLE) < 0.9 * READ_TIMEOUT
        both_workers_answer(served)
    assert b"ignored" in data


def test_a_body_left_unsent_after_the_response_frees_the_worker(served: Served) -> None:
    """Without an abort, the wait for the rest of an ignored body ends after readtimeout
    of silence, not after 10 s."""
    with connect(served.address, SETTLE) as sock:
        sock.sendall(head("/ignore-body/", method="POST", length=100) + record(STDIN, b"x" * 10))
        assert b"ignored" in b"".join(content for _, content in records_until_close(sock))
        time.sleep(READ_TIMEOUT + 0.5)
        both_workers_answer(served)


# SCGI and AJP: the shared timeout, and SCGI's head.


@pytest.fixture(scope="module", params=["prefork", "threaded"])
def scgi(request: pytest.FixtureRequest) -> Iterator[Served]:
    tmp = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    runner, run, address = start(tmp, "scgi", request.param)
    try:
        yield Served(run, address, request.param, "python")
    finally:
        runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def netstring(headers: dict[str, str]) -> bytes:
    block = b"".join(
        name.encode() + b"\0" + value.encode("latin-1") + b"\0" for name, value in headers.items()
    )
    return b"%d:%s," % (len(block), block)


SCGI_GET = {
    "CONTENT_LENGTH": "0",
    "SCGI": "1",
    "REQUEST_METHOD": "GET",
    "REQUEST_URI": "/",
    "SERVER_NAME": "localhost",
    "SERVER_PORT": "80",
    "SERVER_PROTOCOL": "HTTP/1.1",
}


def test_scgi_content_length_in_other_digits_is_a_protocol_error(scgi: Served) -> None:
    """The byte 0xB2, '²' in latin-1, passed str.isdigit() and int() raised ValueError:
    a 14-line traceback."""
    since = scgi.log_size()
    raw_exchange(scgi.address, netstring({**SCGI_GET, "CONTENT_LENGTH": "²"}), timeout=SETTLE)
    [line] = scgi.wait_for_lines(since, r"SCGI protocol error", 1)
    assert "CONTENT_LENGTH is '²', not a number of bytes" in line
    assert "Traceback" not in scgi.run.stderr[since:]


def test_scgi_client_reset_mid_response_logs_no_traceback(scgi: Served) -> None:
    """A web server that resets the connection while a large response is sent: flup
    logged a 14-line traceback, FastCGI nothing. Now both say nothing at WARNING."""
    since = scgi.log_size()
    with connect(scgi.address, SETTLE) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(netstring({**SCGI_GET, "REQUEST_URI": "/download/?size=20000000"}))
        assert sock.recv(4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    for _ in range(2):
        assert scgi_request(scgi.address, timeout=SETTLE).status == 200
    time.sleep(0.5)
    assert "Traceback" not in scgi.run.stderr[since:]


@pytest.mark.parametrize(
    ("stream", "pattern"),
    [
        (b"", r"SCGI connection .* timed out: no complete request came within readtimeout"),
        (b"123:CONTENT_LENGTH\0", r"timed out: no complete request head came within"),
        (b"9999999:", r"headers netstring of 99999... bytes is over maxheadsize=4096"),
        (
            netstring({**SCGI_GET, **{f"HTTP_X_{i}": "" for i in range(40)}}),
            r"more than maxheaders=40 headers",
        ),
    ],
    ids=["silent", "half-a-header", "over-maxheadsize", "over-maxheaders"],
)
def test_scgi_heads_are_bounded(scgi: Served, stream: bytes, pattern: str) -> None:
    since = scgi.log_size()
    with connect(scgi.address, SETTLE) as sock:
        sock.sendall(stream)
        assert closed_within(sock, SETTLE) < READ_TIMEOUT + 2
    scgi.wait_for_lines(since, pattern, 1)


def test_scgi_body_that_stalls_is_closed(scgi: Served) -> None:
    since = scgi.log_size()
    post = {**SCGI_GET, "CONTENT_LENGTH": "100", "REQUEST_METHOD": "POST", "REQUEST_URI": "/echo/"}
    with connect(scgi.address, SETTLE) as sock:
        sock.sendall(netstring(post) + b"x" * 10)
        assert closed_within(sock, SETTLE) < READ_TIMEOUT + 2
    scgi.wait_for_lines(since, r"SCGI connection .* timed out: the request stalled", 1)
    assert "Exception caught from handler" not in scgi.run.stderr[since:]


@pytest.fixture(scope="module")
def ajp() -> Iterator[Served]:
    tmp = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    runner, run, address = start(tmp, "ajp", "prefork")
    try:
        yield Served(run, address, "prefork", "python")
    finally:
        runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def test_ajp_silent_connection_is_closed_and_a_kept_one_may_idle(ajp: Served) -> None:
    """AJP gets the read timeout from the shared connection code: a connection that
    sends nothing is closed, one idle between requests (Apache's pool) is not."""
    since = ajp.log_size()
    with connect(ajp.address, SETTLE) as silent:
        assert closed_within(silent, SETTLE) < READ_TIMEOUT + 2
    ajp.wait_for_lines(since, r"AJP connection .* timed out: no complete request came", 1)
    with connect(ajp.address, SETTLE) as kept:
        assert ajp_request(ajp.address, sock=kept).reuse
        time.sleep(2.5 * READ_TIMEOUT)
        assert ajp_request(ajp.address, sock=kept, timeout=SETTLE).status == 200
