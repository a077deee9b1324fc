"""The real ``manage.py runfcgi protocol=ajp`` on the test project, spoken to as Apache's
mod_proxy_ajp speaks: request attributes, HTTPS, PATCH, a secret and malformed heads.
"""

from __future__ import annotations

import struct

from tests.clients import ajp_request, connect
from tests.conftest import Run, Runner, free_port
from tests.test_ajp_request import APACHE_TLS, APACHE_TLS_NAMED, MALFORMED, SECRET, SPOOFED
from tests.test_compat_ajp import exchange


def start(runner: Runner, *words: str) -> tuple[Run, tuple[str, int]]:
    address = ("127.0.0.1", free_port())
    run = runner.serve(
        "protocol=ajp",
        "method=threaded",
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
