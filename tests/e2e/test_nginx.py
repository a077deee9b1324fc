"""Through nginx with the documented recipes (docs/configs/nginx-*.conf), at / and /app/.

Each wiring is served once per module: its runfcgi backends and nginx start together,
then every scenario runs against them. FastCGI and SCGI each run over a unix socket and
over TCP, FastCGI also with kept-open connections (``fastcgi_keep_conn``) and with an
upstream of three backends, and every one of them both at / and under /app/. A recipe
is written with one kind of address; the other kind replaces it, as a user would.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.frontends import (
    DOC_LISTEN,
    DOC_SCGI_SOCKET,
    DOC_SOCKET,
    DOC_STATIC,
    DOC_TCP,
    Nginx,
    recipe,
)
from tests.support.http import http_request
from tests.support.net import Address, free_port
from tests.support.processes import wait_for
from tests.support.runner import Runner
from tests.support.scenarios import SCENARIOS, STREAM_PAUSE, Site, stream_lead
from tests.support.wiring import (
    Served,
    every_backend_answers,
    on_wirings,
    prefix_without_its_slash_redirects,
    scenario_cases,
    serving,
    start_backend,
    wiring_id,
)

pytestmark = pytest.mark.e2e


@dataclass(frozen=True, eq=False)
class Wiring:
    recipe: str
    protocol: str
    mount: str
    written: str  # the recipe's own address: "unix" or "tcp"
    transport: str  # the address the test serves on: "unix" or "tcp"
    keep_conn: bool = False
    backends: int = 1
    cannot: Mapping[str, str] = field(default_factory=dict, compare=False)
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


def serve(runner: Runner, wiring: Wiring) -> dict[str, str]:
    """Start the wiring's runfcgi backends; returns the recipe's addresses to replace."""
    replacements: dict[str, str] = {}
    for index in range(wiring.backends):
        address = start_backend(runner, wiring.protocol, wiring.transport, *wiring.options)
        upstream = f"unix:{address}" if isinstance(address, str) else "{}:{}".format(*address)
        if wiring.written == "unix":
            doc = DOC_SOCKET if wiring.protocol == "fcgi" else DOC_SCGI_SOCKET
            replacements[f"unix:{doc}"] = upstream
        else:
            replacements[DOC_TCP[index]] = upstream
    return replacements


@contextmanager
def serving_nginx(wiring: Wiring, static_root: Path) -> Iterator[Served]:
    """runfcgi and nginx running the wiring, all stopped and removed afterwards."""

    def nginx(runner: Runner, port: int) -> Nginx:
        replacements = serve(runner, wiring)
        replacements[DOC_LISTEN] = f"listen 127.0.0.1:{port};"
        replacements[DOC_STATIC] = f"{static_root}/"
        return Nginx(runner.tmp / "nginx", recipe(wiring.recipe, replacements), port)

    # Buffered by default; the scenario's view sends X-Accel-Buffering: no.
    with serving(wiring, "nginx", nginx, streams=True) as served:
        yield served


@pytest.fixture(scope="module", params=WIRINGS, ids=wiring_id)
def served(
    request: pytest.FixtureRequest, nginx_binary: str, static_root: Path
) -> Iterator[Served]:
    with serving_nginx(request.param, static_root) as served:
        yield served


@scenario_cases(WIRINGS)
def test_scenario(site: Site, scenario: str) -> None:
    SCENARIOS[scenario](site)


def test_every_backend_answers(served: Served) -> None:
    """With an upstream of three, round robin reaches each backend's workers."""
    every_backend_answers(served)


@on_wirings(wiring for wiring in WIRINGS if wiring.mount)
def test_prefix_without_its_slash_redirects(site: Site) -> None:
    prefix_without_its_slash_redirects(site)


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


@on_wirings(wiring for wiring in WIRINGS if not wiring.keep_conn)
def test_streamed_response_is_buffered_unless_the_view_asks(served: Served) -> None:
    """The recipes keep nginx's buffering on, as the docs say.

    Not over kept connections (fastcgi_keep_conn on): there nginx 1.22 was measured to
    pass a response on as it arrives even with buffering on. That is not a documented
    promise, so the docs say to send the header.
    """
    lead = stream_lead(served.site, accel=False)
    assert lead < STREAM_PAUSE, f"streamed ({lead:.2f} s) without X-Accel-Buffering: no"


def test_location_without_buffering_streams(nginx_binary: str, static_root: Path) -> None:
    """nginx-fastcgi-streaming.conf: fastcgi_buffering off for the URLs under /stream/."""
    wiring = Wiring("nginx-fastcgi-streaming.conf", "fcgi", "", "unix", "unix")
    with serving_nginx(wiring, static_root) as served:
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
    with serving_nginx(wiring, static_root) as served:
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


BURST_REQUESTS = 200
BURST_CLIENTS = 8
BURST_SLOWEST = 2.0


def test_kept_connections_beyond_the_workers_hold_no_request(
    runner: Runner, nginx_binary: str
) -> None:
    """nginx keeps more connections (keepalive 8) than runfcgi has workers (2): a burst
    from more concurrent clients than workers is served with no request waiting behind
    a connection that idles between its requests.

    Each worker serves whichever of its kept connections, and the listening socket,
    has a request; a worker that served a kept connection until nginx closed it left the
    connections beyond the workers' number in the accept queue, with their requests.
    """
    backend, port = free_port(), free_port()
    runner.serve(
        "daemonize=false",
        "host=127.0.0.1",
        f"port={backend}",
        "method=prefork",
        "minspare=2",
        "maxspare=2",
        "maxchildren=2",
        address=("127.0.0.1", backend),
    )
    config = recipe(
        "nginx-fastcgi-keepalive.conf",
        {
            DOC_LISTEN: f"listen 127.0.0.1:{port};",
            DOC_TCP[0]: f"127.0.0.1:{backend}",
            "keepalive 4;": "keepalive 8;",
        },
    )
    nginx = Nginx(runner.tmp / "nginx", config, port)
    nginx.start()
    failed = threading.Event()

    def timed_request(_: int) -> tuple[str, float]:
        if failed.is_set():
            return "not sent", 0.0  # One failure fails the test: no need to wait for more.
        started = time.monotonic()
        try:
            outcome = str(http_request(port, "GET", "/echo/", timeout=BURST_SLOWEST + 1).status)
        except OSError as err:
            outcome = type(err).__name__
        took = time.monotonic() - started
        if outcome != "200" or took > BURST_SLOWEST:
            failed.set()
        return outcome, took

    try:
        with ThreadPoolExecutor(BURST_CLIENTS) as pool:
            results = list(pool.map(timed_request, range(BURST_REQUESTS)))
    finally:
        nginx.stop()
    outcomes = Counter(outcome for outcome, _ in results)
    slowest = max(took for _, took in results)
    assert outcomes == {"200": BURST_REQUESTS}, outcomes
    assert slowest <= BURST_SLOWEST, f"a request took {slowest:.2f} s"
