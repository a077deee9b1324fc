"""A web server on another machine: runfcgi and its front end on hosts of their own.

Each test makes network namespaces (tests/support/netns.py) for an application server and a web
server, joined by a veth pair with addresses from 198.18.0.0/15 (IPv6: 2001:2::/48),
and starts runfcgi in one and nginx or Apache, from the recipes of
docs/deployment/other-hosts.rst, in the other. They show what the page says: SCGI and
AJP refuse a remote web server until allow= names it, a client outside allow= is refused
with one line in the log however often it tries, IPv6 and dual-stack clients are matched
as written, and Apache's balancer over two application servers keeps answering while one
of them is stopped in the middle of a load.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import netns
from tests.support.apache import Apache, vhost
from tests.support.clients import Response, ajp_request, fcgi_request, scgi_request
from tests.support.frontends import DOC_LISTEN, DOC_STATIC, Nginx, recipe
from tests.support.http import http_request
from tests.support.runner import Run, Runner

pytestmark = pytest.mark.e2e

WORKERS = ("method=prefork", "minspare=2", "maxspare=4", "maxchildren=8")
HTTP_PORT = 8080
NAMES = {"fcgi": "FastCGI", "scgi": "SCGI", "ajp": "AJP"}
REQUESTS: dict[str, Callable[..., Response]] = {
    "fcgi": fcgi_request,
    "scgi": scgi_request,
    "ajp": ajp_request,
}
# The balancer's load: this many requests from this many clients, within this time.
LOAD_REQUESTS = 300
LOAD_CLIENTS = 4
LOAD_SECONDS = 90.0
STOP_AFTER = 100


@pytest.fixture
def network() -> Iterator[netns.Network]:
    netns.require()
    with netns.Network() as made:
        yield made


@pytest.fixture
def tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def runner(tmp: Path, network: netns.Network) -> Iterator[Runner]:
    """Stopped before the namespaces are taken down (``network`` is set up first)."""
    started = Runner(tmp)
    yield started
    started.cleanup()


def serve_in(
    host: netns.Namespace, runner: Runner, protocol: str, address: tuple[str, int], *words: str
) -> Run:
    """runfcgi in the foreground on `host`, listening on `address`."""
    listen = f"[{address[0]}]" if ":" in address[0] else address[0]
    with host.inside():
        return runner.serve(
            f"protocol={protocol}", f"host={listen}", f"port={address[1]}", "daemonize=false",
            *WORKERS, *words, address=address,
        )  # fmt: skip


def stop(run: Run) -> None:
    run.signal(signal.SIGTERM)
    assert run.wait(30) == 0, run.describe()


def refusals(run: Run, peer: str) -> list[str]:
    """The server's refusal lines for `peer`, from its log (standard error)."""
    return [line for line in run.stderr.splitlines() if f"connection from {peer}:" in line]


def request_from(
    host: netns.Namespace, protocol: str, address: tuple[str, int], source: str
) -> Response:
    def ask() -> Response:
        with socket.create_connection(address, 10, source_address=(source, 0)) as sock:
            return REQUESTS[protocol](address, "GET", "/echo/", sock=sock, timeout=10)

    return host.call(ask)


def test_nginx_on_another_host_is_refused_by_default_and_served_with_allow(
    network: netns.Network, runner: Runner, tmp: Path, nginx_binary: str, static_root: Path
) -> None:
    app, web = network.host("app"), network.host("web")
    link = network.link(app, web)
    backend = (link.left_ip, 8025)
    site = recipe(
        "nginx-scgi-remote.conf",
        {
            DOC_LISTEN: f"listen 127.0.0.1:{HTTP_PORT};",
            "198.18.0.1:8025": f"{link.left_ip}:8025",
            DOC_STATIC: f"{static_root}/",
        },
    )
    with web.inside():
        nginx = Nginx(tmp / "nginx", site, HTTP_PORT).start()
    try:
        run = serve_in(app, runner, "scgi", backend)
        refused = web.call(lambda: http_request(HTTP_PORT, "GET", "/echo/", timeout=20))
        assert refused.status == 502
        assert refusals(run, link.right_ip) == [
            refusals(run, link.right_ip)[0].split("] Refused")[0]
            + f"] Refused SCGI connection from {link.right_ip}: only loopback clients may "
            "connect; allow= lets other addresses in"
        ], run.describe()
        stop(run)

        run = serve_in(app, runner, "scgi", backend, f"allow={link.right_ip}")
        served = web.call(lambda: http_request(HTTP_PORT, "GET", "/echo/?q=1", timeout=20))
        assert served.status == 200, served.body[:300]
        assert served.json()["get"] == {"q": ["1"]}
        static = web.call(lambda: http_request(HTTP_PORT, "GET", "/static/admin/css/base.css"))
        assert static.status == 200
        assert refusals(run, link.right_ip) == []
    finally:
        nginx.stop()


@pytest.mark.parametrize("protocol", ["scgi", "ajp", "fcgi"])
def test_a_client_outside_allow_is_refused_with_one_line(
    network: netns.Network, runner: Runner, protocol: str
) -> None:
    """Twenty connections from an address that is not listed: each is closed at once,
    and the log has one line for them all; the listed address is served meanwhile."""
    app, web = network.host("app"), network.host("web")
    link = network.link(app, web)
    outsider = link.extra_address(9)
    backend = (link.left_ip, 9000)
    run = serve_in(app, runner, protocol, backend, f"allow={link.right_ip}")
    assert request_from(web, protocol, backend, link.right_ip).status == 200
    closed = web.call(lambda: [netns.refused_at_once(backend, outsider) for _ in range(20)])
    assert closed == [True] * 20
    assert request_from(web, protocol, backend, link.right_ip).status == 200
    lines = refusals(run, outsider)
    assert len(lines) == 1, run.describe()
    assert lines[0].endswith(
        f"[WARNING] Refused {NAMES[protocol]} connection from {outsider}: not in allow="
    )


def _ifindex(host: netns.Namespace, dev: str) -> int:
    index: int = json.loads(host.ip("-j", "link", "show", dev))[0]["ifindex"]
    return index


def test_ipv6_dual_stack_and_link_local_clients(network: netns.Network, runner: Runner) -> None:
    """host=:: serves IPv6 and IPv4 clients; allow= takes IPv6 networks, IPv4 networks
    for the IPv4 clients (which the socket sees as ::ffff:198.18.x.y), and a link-local
    address with the interface it is on."""
    app, web = network.host("app"), network.host("web")
    link = network.link(app, web)
    outsider, outsider6 = link.extra_address(9), link.extra_address6(9)
    app.ip("-6", "addr", "add", "fe80::1/64", "dev", link.left_dev, "nodad")
    web.ip("-6", "addr", "add", "fe80::2/64", "dev", link.right_dev, "nodad")
    net6 = link.left_ip6.rsplit("::", 1)[0]
    backend6, backend4 = ("::", 9000), (link.left_ip, 9000)
    probe = (link.left_ip6, 9000)

    # FastCGI without allow=: every client, as Django 1.8's runfcgi; the log says so.
    run = serve_in(app, runner, "fcgi", probe)
    assert request_from(web, "fcgi", probe, outsider6).status == 200
    assert "lets in every client that can reach it; allow= names" in run.stderr
    stop(run)

    allow = f"allow={net6}::/126,198.18.{link.subnet}.0/30,fe80::2%{link.left_dev}"
    run = serve_in(app, runner, "scgi", backend6, allow)
    assert request_from(web, "scgi", probe, link.right_ip6).status == 200
    assert request_from(web, "scgi", backend4, link.right_ip).status == 200
    assert web.call(lambda: netns.refused_at_once(probe, outsider6))
    assert web.call(lambda: netns.refused_at_once(backend4, outsider))

    index = _ifindex(web, link.right_dev)

    def link_local() -> int:
        with socket.socket(socket.AF_INET6) as sock:
            sock.settimeout(10)
            sock.bind(("fe80::2", 0, 0, index))
            sock.connect(("fe80::1", 9000, 0, index))
            return scgi_request("", "GET", "/echo/", sock=sock, timeout=10).status

    assert web.call(link_local) == 200
    lines = [*refusals(run, outsider6), *refusals(run, outsider)]
    assert [line.split("] Refused ")[1] for line in lines] == [
        f"SCGI connection from {outsider6}: not in allow=",
        f"SCGI connection from {outsider}: not in allow=",
    ], run.describe()
    assert refusals(run, "fe80::2%" + link.left_dev) == []


@dataclass
class Outcome:
    index: int
    finished: float
    status: int
    release: str
    error: str = ""


def load(web: netns.Namespace, stop: Run) -> tuple[list[Outcome], float]:
    """LOAD_REQUESTS GETs through the web server from LOAD_CLIENTS clients at once, all
    within LOAD_SECONDS. Once STOP_AFTER have been answered, `stop` is sent TERM; the
    requests from the second STOP_AFTER on wait until it has exited, so that the last
    ones find it gone. Returns the outcomes and when it exited."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    taken = iter(range(LOAD_REQUESTS))
    deadline = time.monotonic() + LOAD_SECONDS
    exited = threading.Event()
    exit_time: list[float] = []

    def stopper() -> None:
        stop.signal(signal.SIGTERM)
        stop.wait(min(30.0, deadline - time.monotonic()))
        exit_time.append(time.monotonic())
        exited.set()

    def client(_: int) -> None:
        while time.monotonic() < deadline:
            with lock:
                index = next(taken, None)
            if index is None:
                return
            if index >= 2 * STOP_AFTER and not exited.wait(deadline - time.monotonic()):
                return
            try:
                response = http_request(
                    HTTP_PORT, "GET", f"/echo/?n={index}", timeout=deadline - time.monotonic()
                )
                release = response.json()["release"] if response.status == 200 else ""
                outcome = Outcome(index, time.monotonic(), response.status, release)
            except (OSError, ValueError) as err:
                outcome = Outcome(index, time.monotonic(), 0, "", repr(err))
            with lock:
                outcomes.append(outcome)
                if len(outcomes) == STOP_AFTER:
                    threading.Thread(target=stopper, daemon=True).start()

    threads = netns.in_threads(web, LOAD_CLIENTS, client)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 5)
    assert not any(thread.is_alive() for thread in threads), "a client outlived the load"
    assert exited.wait(5), "the backend did not exit"
    assert stop.proc.returncode == 0, stop.describe()
    return sorted(outcomes, key=lambda outcome: outcome.index), exit_time[0]


def test_apache_balancer_over_two_hosts_survives_a_stopped_backend(
    network: netns.Network,
    runner: Runner,
    tmp: Path,
    apache_binary: str,
    static_root: Path,
) -> None:
    web = network.host("web")
    hosts = [network.host("app1"), network.host("app2")]
    links = [network.link(host, web) for host in hosts]
    backends = [(link.left_ip, 8009) for link in links]
    releases = []
    for index in (1, 2):
        release = tmp / f"release-app{index}"
        release.write_text(f"app{index}")
        releases.append({"TESTPROJECT_RELEASE_FILE": str(release)})
    site = recipe(
        "apache-ajp-remote-balancer.conf",
        {
            "198.18.0.11:8009": f"{links[0].left_ip}:8009",
            "198.18.0.12:8009": f"{links[1].left_ip}:8009",
            DOC_STATIC: f"{static_root}/",
        }
        | vhost(HTTP_PORT),
    )

    def start_apache(name: str) -> Apache:
        with web.inside():
            return Apache(tmp / name, site, HTTP_PORT).start()

    def start_backends(*, allowing: bool) -> list[Run]:
        runs = []
        for host, backend, link, env in zip(hosts, backends, links, releases, strict=True):
            allow = [f"allow={link.right_ip}"] if allowing else []
            with host.inside():
                run = runner.serve(
                    "protocol=ajp", f"host={backend[0]}", f"port={backend[1]}",
                    "daemonize=false", *WORKERS, *allow, env=env, address=backend,
                )  # fmt: skip
            runs.append(run)
        return runs

    # By default AJP refuses the web server: Apache answers 503, each backend logs it.
    runs = start_backends(allowing=False)
    apache = start_apache("apache-refused")
    try:
        refused = web.call(lambda: http_request(HTTP_PORT, "GET", "/echo/", timeout=20))
        assert refused.status == 503
        for run, link in zip(runs, links, strict=True):
            assert refusals(run, link.right_ip), run.describe()
    finally:
        apache.stop()
    for run in runs:
        stop(run)

    runs = start_backends(allowing=True)
    apache = start_apache("apache")
    try:
        seen = {
            web.call(lambda: http_request(HTTP_PORT, "GET", "/echo/", timeout=20)).json()[
                "release"
            ]
            for _ in range(6)
        }
        assert seen == {"app1", "app2"}

        started = time.monotonic()
        outcomes, exited = load(web, runs[0])
        took = time.monotonic() - started
        assert len(outcomes) == LOAD_REQUESTS, f"{len(outcomes)} requests in {took:.1f} s"
        assert took < LOAD_SECONDS
        # A worker of the stopping backend that has accepted a connection waits for
        # its request even after answering Apache's CPING: nothing fails.
        failures = [outcome for outcome in outcomes if outcome.status != 200]
        log = apache.error_log()
        assert failures == [], log
        assert "read response failed from " + backends[1][0] not in log
        served = [outcome.release for outcome in outcomes]
        assert set(served[:STOP_AFTER]) == {"app1", "app2"}
        assert set(served[2 * STOP_AFTER :]) == {"app2"}
        assert all(outcome.finished > exited for outcome in outcomes[2 * STOP_AFTER :])
    finally:
        apache.stop()
