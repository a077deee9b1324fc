"""Through nginx with the documented FastCGI recipe (docs/configs/nginx-fastcgi.conf)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from testproject.bigfile import payload
from tests.conftest import Runner, free_port
from tests.e2e.http import http_request
from tests.frontends import DOC_LISTEN, DOC_SOCKET, Nginx, recipe


@pytest.fixture
def nginx_fastcgi(runner: Runner, nginx_binary: str) -> Iterator[int]:
    sock = str(runner.tmp / "fcgi.sock")
    runner.serve("daemonize=false", f"socket={sock}", address=sock)
    port = free_port()
    nginx = Nginx(
        runner.tmp / "nginx",
        recipe("nginx-fastcgi.conf", {DOC_LISTEN: f"listen 127.0.0.1:{port};", DOC_SOCKET: sock}),
        port,
    )
    nginx.start()
    try:
        yield port
    finally:
        nginx.stop()


def test_get_with_query_and_urls(nginx_fastcgi: int) -> None:
    response = http_request(nginx_fastcgi, "GET", "/echo/?a=1&b=x%20y")
    assert response.status == 200
    data = response.json()
    assert data["get"] == {"a": ["1"], "b": ["x y"]}
    assert data["path"] == "/echo/"
    assert data["reverse_echo"] == "/echo/"
    assert data["absolute_uri"] == f"http://127.0.0.1:{nginx_fastcgi}/echo/?a=1&b=x%20y"


def test_non_ascii_route(nginx_fastcgi: int) -> None:
    response = http_request(nginx_fastcgi, "GET", "/caf%C3%A9/%C3%BCn%C3%AFcode/")
    assert response.status == 200
    assert response.json()["path"] == "/café/ünïcode/"


def test_post_one_megabyte(nginx_fastcgi: int) -> None:
    body = payload(1024 * 1024, seed=3)
    response = http_request(nginx_fastcgi, "POST", "/echo/", body=body)
    assert response.status == 200
    assert response.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_index_page(nginx_fastcgi: int) -> None:
    response = http_request(nginx_fastcgi, "GET", "/")
    assert response.status == 200
    assert b"Served by runfcgi" in response.body
