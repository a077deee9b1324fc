"""Through nginx with the documented recipes (docs/configs/nginx-*.conf), at / and /app/.

Each recipe is served once per module: its runfcgi backends and nginx start together,
then every scenario runs against them. Six wirings cover FastCGI over a unix socket and
TCP, with kept-open connections, an upstream of three backends, and SCGI over a unix
socket and TCP, each protocol and transport both at / and under /app/.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Runner, free_port
from tests.e2e.http import http_request
from tests.e2e.scenarios import SCENARIOS, Site
from tests.frontends import DOC_LISTEN, DOC_SCGI_SOCKET, DOC_SOCKET, DOC_TCP, Nginx, recipe
from tests.process_jobs import parent_of

pytestmark = pytest.mark.e2e

# Enough workers for the eight concurrent requests of a scenario, plus the connections
# nginx keeps open (each holds a prefork worker while it waits for the next request).
WORKERS = ("method=prefork", "minspare=2", "maxspare=10", "maxchildren=20")


@dataclass(frozen=True)
class Wiring:
    recipe: str
    protocol: str
    variant: str
    mount: str
    transport: str  # "unix" or "tcp"
    backends: int = 1


WIRINGS = [
    Wiring("nginx-fastcgi.conf", "fcgi", "unix", "", "unix"),
    Wiring("nginx-fastcgi-prefix.conf", "fcgi", "unix", "/app", "unix"),
    Wiring("nginx-fastcgi-keepalive.conf", "fcgi", "tcp-keep-conn", "", "tcp"),
    Wiring("nginx-fastcgi-upstream.conf", "fcgi", "upstream3", "/app", "tcp", backends=3),
    Wiring("nginx-scgi.conf", "scgi", "unix", "", "unix"),
    Wiring("nginx-scgi-prefix.conf", "scgi", "tcp", "/app", "tcp"),
]


@dataclass
class Served:
    site: Site
    runner: Runner
    backend_pids: list[int]


def serve(runner: Runner, wiring: Wiring) -> dict[str, str]:
    """Start the wiring's runfcgi backends; returns the recipe's addresses to replace."""
    replacements: dict[str, str] = {}
    words = ["daemonize=false", f"protocol={wiring.protocol}", *WORKERS]
    for index in range(wiring.backends):
        if wiring.transport == "unix":
            sock = str(runner.tmp / f"{wiring.protocol}{index}.sock")
            runner.serve(*words, f"socket={sock}", address=sock)
            doc = DOC_SOCKET if wiring.protocol == "fcgi" else DOC_SCGI_SOCKET
            replacements[doc] = sock
        else:
            port = free_port()
            runner.serve(*words, "host=127.0.0.1", f"port={port}", address=("127.0.0.1", port))
            replacements[DOC_TCP[index]] = f"127.0.0.1:{port}"
    return replacements


@pytest.fixture(
    scope="module",
    params=WIRINGS,
    ids=lambda w: f"{w.protocol}-{w.variant}-{w.mount.strip('/') or 'root'}",
)
def served(request: pytest.FixtureRequest, nginx_binary: str) -> Iterator[Served]:
    wiring: Wiring = request.param
    tmp = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    runner = Runner(tmp)
    nginx: Nginx | None = None
    try:
        replacements = serve(runner, wiring)
        port = free_port()
        replacements[DOC_LISTEN] = f"listen 127.0.0.1:{port};"
        nginx = Nginx(tmp / "nginx", recipe(wiring.recipe, replacements), port).start()
        site = Site(
            "nginx",
            wiring.protocol,
            wiring.variant,
            wiring.mount,
            port,
            # nginx buffers responses unless the view sends X-Accel-Buffering: no.
            streams=False,
        )
        yield Served(site, runner, [run.proc.pid for run in runner.runs])
    finally:
        if nginx is not None:
            nginx.stop()
        runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


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
