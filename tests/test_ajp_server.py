"""The real ``manage.py runfcgi protocol=ajp`` on the test project, spoken to as Apache's
mod_proxy_ajp speaks: request attributes, HTTPS, PATCH, ``secret=`` and malformed heads.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import sys
import time
from pathlib import Path

import pytest

from tests.support.clients import Response, ajp_request, connect
from tests.support.net import free_port
from tests.support.paths import TESTPROJECT
from tests.support.runner import Run, Runner
from tests.test_ajp_request import APACHE_TLS, APACHE_TLS_NAMED, MALFORMED, SECRET, SPOOFED
from tests.test_compat_ajp import exchange

WARNING = "AJP listens on"
NAMESPACE_HOST = "198.18.0.1"


def start(runner: Runner, *words: str, method: str = "threaded") -> tuple[Run, tuple[str, int]]:
    address = ("127.0.0.1", free_port())
    run = runner.serve(
        "protocol=ajp",
        f"method={method}",
        "daemonize=false",
        f"host={address[0]}",
        f"port={address[1]}",
        *words,
        address=address,
    )
    return run, address


def lines(run: Run, text: str) -> list[str]:
    return [line for line in run.stderr.splitlines() if text in line]


def test_attributes_cannot_log_in_reroute_or_switch_to_https(runner: Runner) -> None:
    _, address = start(runner)
    # PATH_INFO=/fail/ re-routed the request to a view that raises.
    response = ajp_request(address, "GET", "/meta/", params=SPOOFED)
    assert response.status == 200, response.body[:300]
    meta = response.json()
    assert meta["PATH_INFO"] == "/meta/"
    assert "REMOTE_USER" not in meta
    assert (meta["HTTP_HOST"], meta["REMOTE_ADDR"]) == ("localhost", "127.0.0.1")
    assert meta["wsgi.url_scheme"] == "http"
    assert meta["AJP_REMOTE_USER"] == "admin"


def test_https_from_apache_is_secure(runner: Runner) -> None:
    _, address = start(runner)
    response = ajp_request(
        address,
        "GET",
        "/echo/",
        query="a=1",
        is_ssl=True,
        attributes=APACHE_TLS,
        params=APACHE_TLS_NAMED,
    )
    assert response.status == 200, response.body[:300]
    data = response.json()
    assert data["is_secure"] is True
    assert data["absolute_uri"] == "https://localhost/echo/?a=1"


def test_patch_reaches_the_view(runner: Runner) -> None:
    _, address = start(runner)
    response = ajp_request(address, "PATCH", "/echo/", body=b'{"name": "new"}')
    assert response.status == 200, response.body[:300]
    assert (response.json()["method"], response.json()["body_length"]) == ("PATCH", 15)


def test_a_secret_sent_to_a_server_without_one_is_served(runner: Runner) -> None:
    run, address = start(runner)
    response = ajp_request(address, "GET", "/meta/", secret=SECRET)
    assert response.status == 200
    assert SECRET not in response.body.decode()
    assert lines(run, "refused with 403") == []


@pytest.mark.parametrize(("sent", "status"), [(SECRET, 200), (None, 403), ("guess", 403)])
def test_secret_option(runner: Runner, sent: str | None, status: int) -> None:
    run, address = start(runner, f"secret={SECRET}")
    response: Response = ajp_request(address, "POST", "/echo/", body=b"x" * 10, secret=sent)
    assert response.status == status
    refused = lines(run, "refused with 403")
    assert len(refused) == (status == 403)
    assert SECRET not in run.stderr
    assert ajp_request(address, "GET", "/echo/", secret=SECRET).status == 200


def test_malformed_head_costs_one_log_line(runner: Runner) -> None:
    run, address = start(runner)
    with connect(address, timeout=10) as sock:
        data = MALFORMED["two-content-lengths"]
        answer = exchange(sock, [b"\x12\x34" + struct.pack(">H", len(data)) + data], lambda n: [])
    assert answer.closed
    assert ajp_request(address, "GET", "/echo/", timeout=10).status == 200
    [line] = lines(run, "AJP protocol error")
    assert "two Content-Length headers" in line
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (
            ["protocol=scgi", "host=127.0.0.1", "port=8025", "secret=abc"],
            "secret= applies to protocol=ajp only; protocol=scgi has no secret.",
        ),
        (
            ["protocol=ajp", "host=127.0.0.1", "port=8009", "secret=two words"],
            "secret= takes printable ASCII characters without spaces",
        ),
        (["protocol=ajp", "host=127.0.0.1", "port=8009", "secret="], "secret= needs a value"),
    ],
    ids=["scgi", "space", "empty"],
)
def test_bad_secret_is_one_line(runner: Runner, words: list[str], message: str) -> None:
    run = runner.run(*words, "daemonize=false")
    assert run.proc.returncode == 1
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("CommandError: ")
    assert message in line


def test_no_warning_on_loopback(runner: Runner) -> None:
    run, address = start(runner)
    assert ajp_request(address, timeout=10).status == 200
    assert lines(run, WARNING) == []


@pytest.fixture
def namespace() -> list[str]:
    """A command prefix running its command in a new network namespace where
    198.18.0.1 is a local address that is not loopback."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        reason = "a network namespace needs root, unshare and ip"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    setup = f'ip link set lo up && ip addr add {NAMESPACE_HOST}/32 dev lo && exec "$@"'
    return ["unshare", "--net", "sh", "-c", setup, "sh"]


@pytest.mark.parametrize("secret", [None, SECRET], ids=["without-secret", "with-secret"])
def test_warning_beyond_loopback_without_secret(
    runner: Runner, namespace: list[str], secret: str | None, short_tmp: Path
) -> None:
    """One line on the terminal, before the server detaches."""
    port = 8009
    manage = TESTPROJECT / "manage.py"
    words = [f"host={NAMESPACE_HOST}", f"port={port}", f"pidfile={short_tmp / 'ajp.pid'}"]
    if secret is not None:
        words.append(f"secret={secret}")
    run = runner.run(
        command=[*namespace, sys.executable, str(manage), "runfcgi", "protocol=ajp", *words],
        timeout=60,
    )
    assert run.proc.returncode == 0, run.describe()
    warned = lines(run, WARNING)
    if secret is not None:
        assert warned == []
        return
    [line] = warned
    assert line.endswith(
        f"[WARNING] AJP listens on {NAMESPACE_HOST}:{port}, beyond loopback, without "
        "secret=: whoever may connect can send requests as if they came through the web "
        "server. Set secret= here and the same secret= in Apache's ProxyPass or "
        "BalancerMember."
    )
    assert "Serving over AJP 1.3" in run.stdout


def test_a_request_after_a_cping_is_served_during_a_stop(runner: Runner) -> None:
    """Apache's ProxyPass ping= sends CPING, then the request: a worker that answered
    the CPING of a connection accepted before a stop serves the request that follows,
    instead of closing (Apache answered 500 to it)."""
    run, address = start(runner, "maxchildren=1", "minspare=1", "maxspare=1", method="prefork")
    with connect(address) as sock:
        sock.sendall(b"\x12\x34\x00\x01\x0a")
        assert sock.recv(5) == b"AB\x00\x01\x09"
        run.signal(signal.SIGTERM)
        time.sleep(0.5)

        response = ajp_request(address, "GET", "/echo/", sock=sock)

    assert response.status == 200
    assert run.wait(10) == 0
