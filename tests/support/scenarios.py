"""What a browser sees through a front end, the same checks for every server and recipe.

A front-end test module builds one ``Site`` per wiring in a module-scoped fixture named
``site`` and runs ``SCENARIOS[scenario](site)`` for every scenario the site's front end
can do (``Site.cannot`` names the others; tests/support/wiring.py's scenario_cases);
tests/e2e/conftest.py reads ``site`` and ``scenario`` from such tests to print the pass
table.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import django

from testproject.bigfile import SIZE as DOWNLOAD_SIZE
from testproject.bigfile import payload
from tests.support.http import Client, HttpResponse, http_request

MB = 1024 * 1024
UNICODE_PATH = "/caf%C3%A9/%C3%BCn%C3%AFcode/"
CONCURRENT = 8
# Generous for a loaded two-core machine, far below the 8 s of one-at-a-time.
CONCURRENT_LIMIT = 4.5
# A file collectstatic copies into STATIC_ROOT, and the stylesheets the admin links.
ADMIN_CSS = "admin/css/base.css"
ADMIN_CSS_SOURCE = Path(django.__file__).parent / "contrib" / "admin" / "static" / ADMIN_CSS
STYLESHEET = re.compile(rb'<link rel="stylesheet" href="([^"]*)"')


@dataclass(frozen=True)
class Site:
    frontend: str  # "nginx" | "apache" | "lighttpd"
    protocol: str  # "fcgi" | "scgi" | "ajp"
    variant: str  # how it is wired: "unix", "tcp", "keep-conn", "upstream3", ...
    mount: str  # "" when mounted at /, "/app" when mounted at /app/
    port: int  # the front end's HTTP port on 127.0.0.1
    streams: bool  # the front end passes a streamed response through unbuffered
    cannot: Mapping[str, str] = field(default_factory=dict)  # scenario -> reason

    @property
    def label(self) -> str:
        return f"{self.frontend} {self.protocol} {self.variant} {self.mount or '/'}"

    def url(self, path: str) -> str:
        """The path a browser requests for the project's ``path``."""
        return self.mount + path

    def absolute(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.mount}{path}"

    def request(self, method: str, path: str, **kwargs: Any) -> HttpResponse:
        kwargs.setdefault("timeout", 30)
        return http_request(self.port, method, self.url(path), **kwargs)


@functools.lru_cache(maxsize=8)
def body_and_hash(size: int) -> tuple[bytes, str]:
    data = payload(size, seed=size + 11)
    return data, hashlib.sha256(data).hexdigest()


def expect(response: HttpResponse, status: int) -> None:
    assert response.status == status, f"{response.status}: {response.body[:400]!r}"


def json_of(response: HttpResponse) -> Any:
    """The JSON a view answered; any other page (a wrong route, an error) fails with it."""
    expect(response, 200)
    assert response.header("Content-Type") == "application/json", response.body[:400]
    return response.json()


def get_with_query_string(site: Site) -> None:
    response = site.request("GET", "/echo/?a=1&b=two%20words&a=3")
    data = json_of(response)
    assert data["get"] == {"a": ["1", "3"], "b": ["two words"]}
    assert data["path"] == site.url("/echo/")
    assert data["path_info"] == "/echo/"
    assert data["script_name"] == site.mount
    assert data["reverse_echo"] == site.url("/echo/")
    assert data["reverse_unicode"] == site.url(UNICODE_PATH)
    assert data["absolute_uri"] == site.absolute("/echo/?a=1&b=two%20words&a=3")


def non_ascii_path(site: Site) -> None:
    response = site.request("GET", UNICODE_PATH)
    assert json_of(response) == {"route": "unicode", "path": site.url("/café/ünïcode/")}


def head(site: Site) -> None:
    response = site.request("HEAD", "/echo/")
    expect(response, 200)
    assert response.header("Content-Type") == "application/json"
    assert response.body == b""


def post(size: int) -> Callable[[Site], None]:
    def check(site: Site) -> None:
        body, digest = body_and_hash(size)
        response = site.request(
            "POST",
            "/echo/",
            body=body,
            headers={"Content-Type": "application/octet-stream"},
            timeout=60,
        )
        data = json_of(response)
        assert (data["body_length"], data["body_sha256"]) == (size, digest)

    check.__name__ = f"post_{size}"
    return check


def chunked_request_body(site: Site) -> None:
    body, digest = body_and_hash(MB + 7)
    response = site.request(
        "POST",
        "/echo/",
        body=body,
        chunked=True,
        headers={"Content-Type": "application/octet-stream"},
    )
    data = json_of(response)
    assert (data["body_length"], data["body_sha256"]) == (len(body), digest)


def multipart_upload(site: Site) -> None:
    content, digest = body_and_hash(2 * MB)
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\nreport\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="doc"; filename="r.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = site.request(
        "POST",
        "/upload/",
        body=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    data = json_of(response)
    assert data["fields"] == {"title": "report"}
    assert data["files"]["doc"] == {"name": "r.bin", "size": len(content), "sha256": digest}


STREAM_CHUNKS = 4
STREAM_PAUSE = 0.3
STREAMED_LEAD = (STREAM_CHUNKS - 1) * STREAM_PAUSE


def stream_lead(site: Site, *, accel: bool = True) -> float:
    """How long before the view produced its last chunk the client had the first one.

    A streamed response gives about ``STREAMED_LEAD`` seconds, a buffered one a value
    at or below zero. ``accel`` makes the view send ``X-Accel-Buffering: no``, which
    only nginx reads.
    """
    query = f"n={STREAM_CHUNKS}&pause={STREAM_PAUSE}" + ("&accel=no" if accel else "")
    response = site.request("GET", f"/stream/?{query}")
    received = time.monotonic()
    expect(response, 200)
    lines = response.body.decode().splitlines()
    assert [line.split(" at ")[0] for line in lines] == [
        f"chunk {i}" for i in range(STREAM_CHUNKS)
    ]
    # Each line carries the time.monotonic() at which the view produced it; the clock
    # is the machine's, shared by the client, runfcgi and the front end.
    produced = [float(line.split(" at ")[1]) for line in lines]
    first_at, last_at = response.pieces[0][0], response.pieces[-1][0]
    # The latest moment the first piece can have arrived, from the client's clock.
    first_arrived = received - (last_at - first_at)
    return produced[-1] - first_arrived


def streaming_response(site: Site) -> None:
    lead = stream_lead(site)
    if site.streams:
        assert lead >= STREAM_PAUSE, (
            f"the first chunk reached the client {lead:+.2f} s before the last was produced "
            f"(streamed: about {STREAMED_LEAD:.1f} s), so the response was buffered"
        )


def host_with_port(site: Site) -> None:
    """The Host header reaches Django as sent, port included, whatever the server's name."""
    host = f"localhost:{site.port}"
    data = json_of(site.request("GET", "/echo/?h=1", headers={"Host": host}))
    assert data["meta"]["HTTP_HOST"] == host
    assert data["absolute_uri"] == f"http://{host}{site.url('/echo/?h=1')}"


def download(site: Site) -> None:
    response = site.request("GET", "/download/", timeout=60)
    expect(response, 200)
    assert len(response.body) == DOWNLOAD_SIZE
    expected = hashlib.sha256(payload(DOWNLOAD_SIZE)).hexdigest()
    assert hashlib.sha256(response.body).hexdigest() == expected


def redirect_after_post(site: Site) -> None:
    response = site.request(
        "POST",
        "/redirect/",
        body=b"x=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    expect(response, 302)
    location = response.header("Location")
    assert location in (site.url("/echo/?redirected=1"), site.absolute("/echo/?redirected=1"))
    target = urlsplit(urljoin(site.absolute("/redirect/"), location))
    assert (target.hostname, target.port) == ("127.0.0.1", site.port)
    followed = http_request(site.port, "GET", f"{target.path}?{target.query}", timeout=30)
    data = json_of(followed)
    assert (data["path"], data["get"]) == (site.url("/echo/"), {"redirected": ["1"]})


def no_content(site: Site) -> None:
    response = site.request("GET", "/status/204/")
    expect(response, 204)
    assert response.body == b""


def server_error(site: Site) -> None:
    started = time.monotonic()
    response = site.request("GET", "/fail/", timeout=10)
    expect(response, 500)
    assert time.monotonic() - started < 5


def cookies(site: Site) -> None:
    response = site.request("GET", "/cookie/?flavour=ginger", headers={"Cookie": "basket=abc"})
    assert json_of(response) == {"basket": "abc"}
    set_cookies = response.header_list("Set-Cookie")
    jar = dict(cookie.split(";")[0].split("=", 1) for cookie in set_cookies)
    assert jar == {"flavour": "ginger", "second": "two"}
    sent = "; ".join(f"{name}={value}" for name, value in jar.items())
    echoed = json_of(site.request("GET", "/echo/", headers={"Cookie": sent}))
    assert echoed["cookies"] == {"flavour": "ginger", "second": "two"}


def keep_alive(site: Site) -> None:
    with Client(site.port, timeout=30) as client:
        statuses = [
            client.request("GET", site.url("/echo/?n=1")),
            client.request("POST", site.url("/echo/"), body=b"x" * 5000),
            client.request("HEAD", site.url("/echo/")),
            client.request("GET", site.url("/status/204/")),
            client.request("GET", site.url(UNICODE_PATH)),
            client.request("GET", site.url("/")),
        ]
        assert [r.status for r in statuses] == [200, 200, 200, 204, 200, 200]
        assert statuses[1].json()["body_length"] == 5000
        assert b"Served by runfcgi" in statuses[-1].body
        assert [r.will_close for r in statuses] == [False] * len(statuses)
        assert client.connections == 1


def concurrent_slow_requests(site: Site) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        status = site.request("GET", "/slow/?s=1", timeout=20).status
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one) for _ in range(CONCURRENT)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=25)
    elapsed = time.monotonic() - started
    assert results == [200] * CONCURRENT
    assert elapsed < CONCURRENT_LIMIT, f"{CONCURRENT} one-second requests took {elapsed:.1f} s"


def expect_stylesheet(response: HttpResponse) -> None:
    """A stylesheet a browser applies: text/css, served by the front end from STATIC_ROOT."""
    expect(response, 200)
    assert (response.header("Content-Type") or "").split(";")[0] == "text/css"
    # Django's middleware adds this header to every response it makes.
    assert response.header("X-Frame-Options") is None, "served by Django, not the front end"


def static_file(site: Site) -> None:
    response = site.request("GET", f"/static/{ADMIN_CSS}")
    expect_stylesheet(response)
    assert response.body == ADMIN_CSS_SOURCE.read_bytes()


def admin_stylesheet_link(site: Site) -> None:
    """The admin's pages link their stylesheets under the mount, where they are served."""
    page = site.request("GET", "/admin/login/")
    expect(page, 200)
    links = [link.decode() for link in STYLESHEET.findall(page.body)]
    assert site.url(f"/static/{ADMIN_CSS}") in links
    assert [link for link in links if not link.startswith(site.url("/static/admin/"))] == []
    for link in links:
        expect_stylesheet(http_request(site.port, "GET", link, timeout=30))


SCENARIOS: dict[str, Callable[[Site], None]] = {
    "get": get_with_query_string,
    "host-with-port": host_with_port,
    "non-ascii-path": non_ascii_path,
    "head": head,
    "post-0B": post(0),
    "post-1MB": post(MB),
    "post-50MB": post(50 * MB),
    "chunked-body": chunked_request_body,
    "multipart": multipart_upload,
    "streaming": streaming_response,
    "download-20MB": download,
    "redirect-after-post": redirect_after_post,
    "204": no_content,
    "500": server_error,
    "cookies": cookies,
    "keep-alive": keep_alive,
    "concurrent-slow": concurrent_slow_requests,
    "static-file": static_file,
    "admin-stylesheet": admin_stylesheet_link,
}
