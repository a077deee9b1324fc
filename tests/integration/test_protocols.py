"""Every protocol x method x transport, served by the real command, spoken to directly.

One server per combination (module-scoped, to keep the suite quick) answers every
scenario a front end will send it.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from testproject.bigfile import payload
from tests.support.clients import Response, ajp_request, fcgi_request, scgi_request
from tests.support.net import Address, free_port
from tests.support.runner import Runner, runner_in_tmp

CLIENTS: dict[str, Callable[..., Response]] = {
    "fcgi": fcgi_request,
    "scgi": scgi_request,
    "ajp": ajp_request,
}
COMBINATIONS = [
    (protocol, method, transport)
    for protocol in ("fcgi", "scgi", "ajp")
    for method in ("prefork", "threaded")
    for transport in ("tcp", "unix", "fd0")
    if not (protocol == "ajp" and transport != "tcp")
]
UNICODE_PATH = "/caf%C3%A9/%C3%BCn%C3%AFcode/"
MB = 1024 * 1024


@dataclass
class Served:
    protocol: str
    method: str
    transport: str
    address: Address
    runner: Runner

    def request(self, method: str = "GET", path: str = "/echo/", **kwargs: Any) -> Response:
        kwargs.setdefault("timeout", 60)
        return CLIENTS[self.protocol](self.address, method, path, **kwargs)


def start(runner: Runner, protocol: str, method: str, transport: str, *extra: str) -> Served:
    words = [f"protocol={protocol}", f"method={method}", "daemonize=false", *extra]
    if transport == "tcp":
        port = free_port()
        address: Address = ("127.0.0.1", port)
        runner.serve(*words, "host=127.0.0.1", f"port={port}", address=address)
    elif transport == "unix":
        address = str(runner.tmp / "app.sock")
        runner.serve(*words, f"socket={address}", address=address)
    else:
        # As mod_fcgid and lighttpd's bin-path do: a listening socket on standard input.
        address = str(runner.tmp / "inherited.sock")
        with socket.socket(socket.AF_UNIX) as listening:
            listening.bind(address)
            listening.listen(64)
            runner.serve(*words, address=address, stdin=listening.fileno())
    return Served(protocol, method, transport, address, runner)


@pytest.fixture(
    scope="module",
    params=COMBINATIONS,
    ids=["-".join(combination) for combination in COMBINATIONS],
)
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    with runner_in_tmp() as runner:
        yield start(runner, *request.param)


def test_get_with_query_string(served: Served) -> None:
    response = served.request("GET", "/echo/", query="a=1&b=two%20words&a=3")
    assert response.status == 200
    data = response.json()
    assert data["get"] == {"a": ["1", "3"], "b": ["two words"]}
    assert data["path"] == "/echo/"
    assert data["reverse_echo"] == "/echo/"


def test_non_ascii_path_reaches_its_route(served: Served) -> None:
    response = served.request("GET", UNICODE_PATH)
    assert response.status == 200, response.body[:500]
    assert response.json() == {"route": "unicode", "path": "/café/ünïcode/"}


def test_head_has_headers_and_no_body(served: Served) -> None:
    response = served.request("HEAD", "/echo/")
    assert response.status == 200
    assert response.body == b""
    assert response.header("Content-Type") == "application/json"


@pytest.mark.parametrize("size", [0, 1, MB, 50 * MB], ids=["0B", "1B", "1MB", "50MB"])
def test_post_body_arrives_whole(served: Served, size: int) -> None:
    body = payload(size, seed=size)
    response = served.request(
        "POST", "/echo/", body=body, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status == 200, response.body[:500]
    data = response.json()
    assert data["body_length"] == size
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_multipart_upload(served: Served) -> None:
    content = payload(3 * MB, seed=7)
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
    response = served.request(
        "POST",
        "/upload/",
        body=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status == 200, response.body[:500]
    data = response.json()
    assert data["fields"] == {"title": "report"}
    assert data["files"]["doc"] == {
        "name": "r.bin",
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }


def test_streaming_response_arrives_in_pieces(served: Served) -> None:
    response = served.request("GET", "/stream/", query="n=4&pause=0.3")
    assert response.status == 200
    assert response.body.decode().count("chunk") == 4
    first, last = response.chunk_times[0][0], response.chunk_times[-1][0]
    assert last - first >= 0.6, "the pieces arrived together: the response was buffered"


def test_file_download(served: Served) -> None:
    response = served.request("GET", "/download/")
    assert response.status == 200
    assert len(response.body) == 20 * MB
    assert hashlib.sha256(response.body).digest() == hashlib.sha256(payload(20 * MB)).digest()


def test_redirect_after_post(served: Served) -> None:
    response = served.request("POST", "/redirect/", body=b"x=1")
    assert response.status == 302
    assert response.header("Location") == "/echo/?redirected=1"


@pytest.mark.parametrize("code", [204, 418])
def test_status_codes(served: Served, code: int) -> None:
    response = served.request("GET", f"/status/{code}/")
    assert response.status == code


def test_cookies_both_ways(served: Served) -> None:
    response = served.request("GET", "/cookie/", headers={"Cookie": "basket=abc; theme=dark"})
    assert response.status == 200
    assert response.json() == {"basket": "abc", "theme": "dark"}
    cookies = [value for name, value in response.headers if name.lower() == "set-cookie"]
    assert len(cookies) == 2


def test_view_that_raises_is_a_500(served: Served) -> None:
    started = time.monotonic()
    response = served.request("GET", "/fail/", timeout=10)
    assert response.status == 500
    assert time.monotonic() - started < 5


def test_error_past_django_is_a_500_not_a_hang(served: Served) -> None:
    response = served.request("GET", "/fail-late/", timeout=10)
    assert response.status == 500
    assert b"Traceback" not in response.body


def test_view_that_ignores_a_large_body(served: Served) -> None:
    response = served.request("POST", "/ignore-body/", body=payload(20 * MB))
    assert response.status == 200
    assert response.body == b"ignored\n"
    # And the server is still fine afterwards.
    assert served.request("GET", "/echo/").status == 200


# AJP carries no SCRIPT_NAME: a mount prefix needs a setting on our side.
WITH_SCRIPT_NAME = [combination for combination in COMBINATIONS if combination[0] != "ajp"]


@pytest.mark.parametrize(
    "served",
    WITH_SCRIPT_NAME,
    indirect=True,
    scope="module",
    ids=["-".join(combination) for combination in WITH_SCRIPT_NAME],
)
def test_script_name_as_the_client_sent_it(served: Served) -> None:
    response = served.request("GET", "/app/echo/", script_name="/app")
    assert response.status == 200, response.body[:300]
    data = response.json()
    assert data["script_name"] == "/app"
    assert data["path_info"] == "/echo/"
    assert data["path"] == "/app/echo/"
    assert data["reverse_echo"] == "/app/echo/"


def test_concurrent_requests_are_all_answered(served: Served) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        status = served.request("GET", "/slow/", query="s=0.2").status
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [200] * 6


@pytest.mark.parametrize("protocol", ["fcgi", "scgi", "ajp"])
def test_debug_answers_errors_past_django_with_a_traceback(runner: Runner, protocol: str) -> None:
    served = start(runner, protocol, "prefork", "tcp", "debug=true")
    response = served.request("GET", "/fail-late/", timeout=10)
    assert response.status == 500
    assert b"fail_late raised on purpose" in response.body


def test_wsgi_process_model_flags(served: Served) -> None:
    meta = served.request("GET", "/echo/").json()["meta"]
    assert meta["wsgi.multiprocess"] is (served.method == "prefork")
    assert meta["wsgi.multithread"] is (served.method == "threaded")
