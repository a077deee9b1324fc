"""Through nginx with the documented recipes (docs/configs/nginx-*.conf), at / and /app/.

Each wiring is served once per module: its runfcgi backends and nginx start together,
then every scenario runs against them. FastCGI and SCGI each run over a unix socket and
over TCP, FastCGI also with kept-open connections (``fastcgi_keep_conn``) and with an
upstream of three backends, and every one of them both at / and under /app/. A recipe
is written with one kind of address; the other kind replaces it, as a user would.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Address, Runner, free_port
from tests.e2e.http import http_request
from tests.e2e.scenarios import SCENARIOS, STREAM_PAUSE, Site, stream_lead
from tests.frontends import (
    DOC_LISTEN,
    DOC_SCGI_SOCKET,
    DOC_SOCKET,
    DOC_STATIC,
    DOC_TCP,
    Nginx,
    recipe,
)
from tests.process_jobs import parent_of, wait_for

pytestmark = pytest.mark.e2e

# Enough workers for the eight concurrent requests of a scenario, plus the connections
# nginx keeps open (each holds a prefork worker while it waits for the next request).
WORKERS = ("method=prefork", "minspare=2", "maxspare=10", "maxchildren=20")


# Measured with nginx 1.22: not a documented promise, so the docs say to send the header.
KEPT_CONNECTIONS_STREAM = (
    "over kept connections (fastcgi_keep_conn on) nginx passes a response on as it "
    "arrives even with buffering on"
)


@dataclass(frozen=True)
class Wiring:
    recipe: str
    protocol: str
    mount: str
    written: str  # the recipe's own address: "unix" or "tcp"
    transport: str  # the address the test serves on: "unix" or "tcp"
    keep_conn: bool = False
    backends: int = 1
    options: tuple[str, ...] = ()
    """runfcgi options beyond the workers."""

    @property
    def variant(self) -> str:
        if self.backends > 1:
            return f"upstream{self.backends}-{self.transport}"
        return self.transport + ("-keep-conn" if self.keep_conn else "")


def both_transports(
    recipe: str, protocol: str, mount: str, written: str, keep_conn: bool = False
) -> list[Wiring]:
    """The recipe with its own kind of address and with the other kind."""
    return [Wiring(recipe, protocol, mount, written, t, keep_conn) for t in ("unix", "tcp")]


WIRINGS = [
    *both_transports("nginx-fastcgi.conf", "fcgi", "", "unix"),
    *both_transports("nginx-fastcgi-prefix.conf", "fcgi", "/app", "unix"),
    *both_transports("nginx-fastcgi-keepalive.conf", "fcgi", "", "tcp", keep_conn=True),
    *both_transports("nginx-fastcgi-keepalive-prefix.conf", "fcgi", "/app", "tcp", keep_conn=True),
    Wiring("nginx-fastcgi-upstream.conf", "fcgi", "", "tcp", "tcp", keep_conn=True, backends=3),
    Wiring(
        "nginx-fastcgi-upstream-prefix.conf",
        "fcgi",
        "/app",
        "tcp",
        "tcp",
        keep_conn=True,
        backends=3,
    ),
    *both_transports("nginx-scgi.conf", "scgi", "", "unix"),
    *both_transports("nginx-scgi-prefix.conf", "scgi", "/app", "tcp"),
]


@dataclass
class Served:
    wiring: Wiring
    site: Site
    runner: Runner
    addresses: list[Address]
    backend_pids: list[int]


def serve(runner: Runner, wiring: Wiring) -> dict[str, str]:
    """Start the wiring's runfcgi backends; returns the recipe's addresses to replace."""
    replacements: dict[str, str] = {}
    words = ["daemonize=false", f"protocol={wiring.protocol}", *WORKERS, *wiring.options]
    for index in range(wiring.backends):
        if wiring.transport == "unix":
            sock = str(runner.tmp / f"{wiring.protocol}{index}.sock")
            runner.serve(*words, f"socket={sock}", address=sock)
            address = f"unix:{sock}"
        else:
            port = free_port()
            runner.serve(*words, "host=127.0.0.1", f"port={port}", address=("127.0.0.1", port))
            address = f"127.0.0.1:{port}"
        if wiring.written == "unix":
            doc = DOC_SOCKET if wiring.protocol == "fcgi" else DOC_SCGI_SOCKET
            replacements[f"unix:{doc}"] = address
        else:
            replacements[DOC_TCP[index]] = address
    return replacements


@contextmanager
def serving(wiring: Wiring, nginx_binary: str, static_root: Path) -> Iterator[Served]:
    """runfcgi and nginx running the wiring, all stopped and removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    runner = Runner(tmp)
    nginx: Nginx | None = None
    try:
        replacements = serve(runner, wiring)
        port = free_port()
        replacements[DOC_LISTEN] = f"listen 127.0.0.1:{port};"
        replacements[DOC_STATIC] = f"{static_root}/"
        nginx = Nginx(tmp / "nginx", recipe(wiring.recipe, replacements), port).start()
        site = Site(
            "nginx",
            wiring.protocol,
            wiring.variant,
            wiring.mount,
            port,
            # Buffered by default; the scenario's view sends X-Accel-Buffering: no.
            streams=True,
        )
        addresses = [run.address for run in runner.runs if run.address is not None]
        yield Served(wiring, site, runner, addresses, [run.proc.pid for run in runner.runs])
    finally:
        if nginx is not None:
            nginx.stop()
        runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(
    scope="module",
    params=WIRINGS,
    ids=lambda w: f"{w.protocol}-{w.variant}-{w.mount.strip('/') or 'root'}",
)
def served(
    request: pytest.FixtureRequest, nginx_binary: str, static_root: Path
) -> Iterator[Served]:
    with serving(request.param, nginx_binary, static_root) as served:
        yield served


@pytest.fixture(scope="module")
def site(served: Served) -> Site:
    return served.site


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario(site: Site, scenario: str) -> None:
    SCENARIOS[scenario](site)


def test_every_backend_answers(served: Served) -> None:
    """With an upstream of three, round robin reaches each backend's workers."""
    answered: set[int] = set()
    for _ in range(3 * len(served.backend_pids)):
        response = http_request(served.site.port, "GET", served.site.url("/echo/"), timeout=10)
        assert response.status == 200
        answered.add(parent_of(response.json()["pid"]))
    assert answered == set(served.backend_pids)


def test_prefix_without_its_slash_redirects(site: Site) -> None:
    if not site.mount:
        pytest.skip("mounted at /")
    response = http_request(site.port, "GET", site.mount, timeout=10)
    assert response.status == 301
    assert response.header("Location") in (site.url("/"), site.absolute("/"))


def open_connections(address: Address) -> int:
    """Connections runfcgi has accepted on ``address`` and not yet closed."""
    if isinstance(address, str):
        # Num RefCount Protocol Flags Type St Inode Path: an accepted socket carries the
        # listening socket's path, in state 03 (connected).
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
        return sum(1 for line in lines if line.split()[5:8:2] == ["03", address])
    # sl local_address rem_address st: the accepted end has the server's port, state 01.
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    local = f"0100007F:{address[1]:04X}"
    return sum(1 for line in lines if line.split()[1] == local and line.split()[3] == "01")


def test_connections_stay_open_only_with_keep_conn(served: Served) -> None:
    """fastcgi_keep_conn keeps connections to runfcgi open; otherwise each one closes.

    With keep_conn, a kept connection can still close when the prefork master retires a
    spare worker after the earlier scenarios' bursts: three rounds of requests are
    allowed for one to end with a connection held.
    """

    def held_after_requests() -> int:
        for _ in range(3):
            assert http_request(served.site.port, "GET", served.site.url("/echo/")).status == 200
        return sum(open_connections(address) for address in served.addresses)

    if served.wiring.keep_conn:
        assert any(held_after_requests() >= 1 for _ in range(3)), (
            "nginx closed its connections to runfcgi"
        )
    else:
        held_after_requests()
        assert wait_for(
            lambda: sum(open_connections(address) for address in served.addresses) == 0,
            timeout=5,
        ), "connections left open"


def test_streamed_response_is_buffered_unless_the_view_asks(served: Served) -> None:
    """The recipes keep nginx's buffering on, as the docs say."""
    if served.wiring.keep_conn:
        pytest.skip(KEPT_CONNECTIONS_STREAM)
    lead = stream_lead(served.site, accel=False)
    assert lead < STREAM_PAUSE, f"streamed ({lead:.2f} s) without X-Accel-Buffering: no"


def test_location_without_buffering_streams(nginx_binary: str, static_root: Path) -> None:
    """nginx-fastcgi-streaming.conf: fastcgi_buffering off for the URLs under /stream/."""
    wiring = Wiring("nginx-fastcgi-streaming.conf", "fcgi", "", "unix", "unix")
    with serving(wiring, nginx_binary, static_root) as served:
        lead = stream_lead(served.site, accel=False)
        assert lead >= STREAM_PAUSE, f"buffered: the first chunk led the last by {lead:.2f} s"
        SCENARIOS["get"](served.site)


def test_backends_stop_promptly_while_nginx_holds_connections(served: Served) -> None:
    """Runs last for each wiring: TERM ends runfcgi even with kept-open connections."""
    for _ in range(4):
        assert http_request(served.site.port, "GET", served.site.url("/echo/")).status == 200
    started = time.monotonic()
    for run in served.runner.runs:
        run.signal(signal.SIGTERM)
    for run in served.runner.runs:
        assert run.wait(timeout=15) == 0, run.describe()
    assert time.monotonic() - started < 10


def test_kept_connections_idle_past_readtimeout_still_serve(
    nginx_binary: str, static_root: Path
) -> None:
    """readtimeout bounds a request's head and body, not the idle time of a connection
    nginx keeps (upstream keepalive, fastcgi_keep_conn on): after idling past it, the
    same connections serve again, a POST with a body too, and none was cut."""
    wiring = Wiring(
        "nginx-fastcgi-keepalive.conf",
        "fcgi",
        "",
        "tcp",
        "tcp",
        keep_conn=True,
        options=("readtimeout=1",),
    )
    with serving(wiring, nginx_binary, static_root) as served:
        for _ in range(3):
            assert http_request(served.site.port, "GET", served.site.url("/echo/")).status == 200
        assert sum(open_connections(address) for address in served.addresses) >= 1
        time.sleep(2.5)
        assert sum(open_connections(address) for address in served.addresses) >= 1
        for _ in range(3):
            posted = http_request(
                served.site.port, "POST", served.site.url("/echo/"), body=b"b" * 100_000
            )
            assert (posted.status, posted.json()["body_length"]) == (200, 100_000)
        assert "timed out" not in served.runner.runs[0].stderr
