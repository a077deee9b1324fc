"""The status page and ping through real nginx, Apache httpd and lighttpd, with the docs'
recipes that expose them to this machine only (docs/configs/*-status.conf), and the
docs' Prometheus scrape settings (docs/configs/prometheus-runfcgi.yml).

A client on 127.0.0.1 gets them; one from 127.0.0.2 (another address of loopback, as a
client from another machine would be seen) is refused, and still reaches the site.
"""

from __future__ import annotations

import http.client
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.support.apache import Apache, vhost
from tests.support.frontends import DOC_LISTEN, DOC_SOCKET, DOC_STATIC, Frontend, Nginx, recipe
from tests.support.lighttpd import Lighttpd
from tests.support.net import free_port
from tests.support.paths import CONFIGS
from tests.support.runner import Runner

pytestmark = pytest.mark.e2e


# What Prometheus 2.x sends as Accept when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def get(port: int, path: str, source: str = "127.0.0.1") -> tuple[int, str, bytes]:
    """GET from the `source` address: status, content type, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Accept": PROMETHEUS_ACCEPT})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


def nginx_site(port: int, sock: str, static: Path) -> Nginx | Apache | Lighttpd:
    replacements = {
        DOC_LISTEN: f"listen 127.0.0.1:{port};",
        f"unix:{DOC_SOCKET}": f"unix:{sock}",
        DOC_STATIC: f"{static}/",
    }
    return Nginx(
        Path(tempfile.mkdtemp(prefix="rf-nginx-", dir="/tmp")),
        recipe("nginx-fastcgi-status.conf", replacements),
        port,
    )


def apache_site(port: int, sock: str, static: Path) -> Nginx | Apache | Lighttpd:
    replacements = {**vhost(port), DOC_SOCKET: sock, DOC_STATIC: f"{static}/"}
    return Apache(
        Path(tempfile.mkdtemp(prefix="rf-apache-", dir="/tmp")),
        recipe("apache-fcgi-status.conf", replacements),
        port,
    )


def lighttpd_site(port: int, sock: str, static: Path) -> Nginx | Apache | Lighttpd:
    replacements = {DOC_SOCKET: sock, DOC_STATIC: f"{static}/"}
    return Lighttpd(
        Path(tempfile.mkdtemp(prefix="rf-lighttpd-", dir="/tmp")),
        recipe("lighttpd-fastcgi-status.conf", replacements),
        port,
    )


SITES: dict[str, tuple[Callable[[int, str, Path], Nginx | Apache | Lighttpd], str]] = {
    "nginx": (nginx_site, "nginx_binary"),
    "apache": (apache_site, "apache_binary"),
    "lighttpd": (lighttpd_site, "lighttpd_binary"),
}


@contextmanager
def started(frontend: Nginx | Apache | Lighttpd) -> Iterator[Frontend]:
    try:
        frontend.start()
        yield frontend
    finally:
        frontend.stop()


def scrape_settings() -> tuple[str, str]:
    """metrics_path and the query its params make, from the documented prometheus.yml."""
    text = (CONFIGS / "prometheus-runfcgi.yml").read_text()
    path = re.search(r"^\s*metrics_path: (\S+)$", text, re.MULTILINE)
    params = re.findall(r"^\s+(\w+): \[\"(.*?)\"\]$", text, re.MULTILINE)
    assert path is not None, text
    assert params, text
    return path.group(1), "&".join(f"{name}={value}" for name, value in params)


@pytest.mark.parametrize("name", list(SITES))
def test_the_status_page_through_the_documented_recipe(
    request: pytest.FixtureRequest, runner: Runner, static_root: Path, name: str
) -> None:
    make, binary = SITES[name]
    request.getfixturevalue(binary)
    sock = str(runner.tmp / "fcgi.sock")
    runner.serve("daemonize=false", f"socket={sock}", "status=/status", "ping=/ping", address=sock)
    port = free_port()
    with started(make(port, sock, static_root)) as frontend:
        status, content_type, body = get(port, "/status")
        assert status == 200, frontend.error_log()
        assert content_type.startswith("text/plain")
        assert body.decode().splitlines()[0] == f"pool:                 unix:{sock}"
        status, content_type, body = get(port, "/status?json&full")
        assert (status, content_type) == (200, "application/json")
        data = json.loads(body)
        assert data["process_manager"] == "prefork"
        assert any(p["request_uri"] == "/status?json&full" for p in data["processes"])
        path, query = scrape_settings()
        status, content_type, body = get(port, f"{path}?{query}")
        assert status == 200
        assert content_type.startswith("application/openmetrics-text")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert families["runfcgi_accepted_conn"].samples[0].value >= 3
        assert get(port, "/status?html")[1] == "text/html; charset=utf-8"
        assert get(port, "/ping")[::2] == (200, b"pong")
        assert get(port, "/")[0] == 200
        # From any other address: refused by the web server, while the site is served.
        for path in ("/status", "/status?json", "/ping"):
            assert get(port, path, source="127.0.0.2")[0] == 403, path
        assert get(port, "/", source="127.0.0.2")[0] == 200
