"""The base of the front-end test modules (tests/e2e/test_nginx.py, test_apache.py and
test_lighttpd.py): a documented recipe wired to runfcgi backends behind a real web server.

A module lists its wirings and says, for one of them, how to start its backends and
which front end to run; ``serving()`` starts them in a directory of their own, builds
the ``Site`` the scenarios (tests/support/scenarios.py) are run against, and at the end
stops the front end and every backend. Each wiring is served once per module: a
module-scoped ``served`` fixture, parametrised over the wirings (ids from
``wiring_id``), yields what ``serving()`` gives; tests/e2e/conftest.py makes its
``site`` the fixture the scenario tests take.

A test that applies to some wirings only is parametrised over those (``on_wirings``),
and a scenario a front end cannot do by design is not run on it (``scenario_cases``):
no test is generated only to be skipped. The wirings are compared by identity, so that
pytest sees the same parameter in every test of a wiring and serves it once for them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from tests.support.frontends import Frontend
from tests.support.http import http_request
from tests.support.net import Address, free_port
from tests.support.processes import parent_of
from tests.support.runner import Runner, runner_in_tmp
from tests.support.scenarios import SCENARIOS, Site

# Enough workers for the eight concurrent requests of a scenario; a connection the front
# end keeps open holds no prefork worker while it waits for its next request.
WORKERS = ("method=prefork", "minspare=2", "maxspare=10", "maxchildren=20")


class Wiring(Protocol):
    """What every module's wirings say: the protocol, how it is wired, where it is mounted
    ("" at /), and the scenarios the front end cannot do by design, with the reason."""

    @property
    def protocol(self) -> str: ...

    @property
    def variant(self) -> str: ...

    @property
    def mount(self) -> str: ...

    @property
    def cannot(self) -> Mapping[str, str]: ...


def wiring_id(wiring: Wiring) -> str:
    return f"{wiring.protocol}-{wiring.variant}-{wiring.mount.strip('/') or 'root'}"


def on_wirings(wirings: Iterable[Wiring]) -> pytest.MarkDecorator:
    """Run a test on these of the module's wirings only."""
    chosen = list(wirings)
    return pytest.mark.parametrize(
        "served", chosen, indirect=True, scope="module", ids=[wiring_id(w) for w in chosen]
    )


def scenario_cases(wirings: Iterable[Wiring]) -> pytest.MarkDecorator:
    """Parametrise ``test_scenario(site, scenario)`` over every scenario each wiring's
    front end can do.

    Both parameters are module-scoped (the ``scenario`` fixture gives the name); each
    scenario parameter is the pair (name, wiring), so that no two cases share it and pytest
    groups the cases by wiring alone, rather than the same scenario of several wirings.
    """
    cases = [
        pytest.param(wiring, (name, wiring), id=f"{wiring_id(wiring)}-{name}")
        for wiring in wirings
        for name in SCENARIOS
        if name not in wiring.cannot
    ]
    return pytest.mark.parametrize(("served", "scenario"), cases, indirect=True, scope="module")


def start_backend(runner: Runner, protocol: str, transport: str, *words: str) -> Address:
    """A runfcgi backend with WORKERS, on a new unix socket in the runner's directory or on
    a free loopback port (``transport`` "unix" or "tcp"); returns its address."""
    words = ("daemonize=false", f"protocol={protocol}", *WORKERS, *words)
    if transport == "unix":
        sock = str(runner.tmp / f"{protocol}{len(runner.runs)}.sock")
        runner.serve(*words, f"socket={sock}", address=sock)
        return sock
    port = free_port()
    runner.serve(*words, "host=127.0.0.1", f"port={port}", address=("127.0.0.1", port))
    return ("127.0.0.1", port)


@dataclass
class Served:
    """A wiring being served: its site, the runner of its backends and its front end."""

    wiring: Any
    site: Site
    runner: Runner
    frontend: Frontend
    left: list[int] = field(default_factory=list)
    """Processes that outlived the front end's stop (lighttpd's, from ``bin-path``)."""

    @property
    def backend_pids(self) -> list[int]:
        return [run.proc.pid for run in self.runner.runs]

    @property
    def addresses(self) -> list[Address]:
        return [run.address for run in self.runner.runs if run.address is not None]


@contextmanager
def serving(
    wiring: Wiring,
    frontend_name: str,
    make_frontend: Callable[[Runner, int], Frontend],
    *,
    streams: bool = True,
) -> Iterator[Served]:
    """Serve ``wiring``: ``make_frontend(runner, port)`` starts the backends it needs with
    ``runner`` and returns the front end to run on ``port``, which is then started.
    ``streams``: the front end passes a streamed response on as it comes."""
    with runner_in_tmp() as runner:
        port = free_port()
        frontend: Frontend | None = None
        served: Served | None = None
        try:
            frontend = make_frontend(runner, port)
            frontend.start()
            site = Site(
                frontend_name,
                wiring.protocol,
                wiring.variant,
                wiring.mount,
                port,
                streams=streams,
                cannot=wiring.cannot,
            )
            served = Served(wiring, site, runner, frontend)
            yield served
        finally:
            if frontend is not None:
                left = frontend.stop()
                if served is not None and isinstance(left, list):
                    served.left = left


def every_backend_answers(served: Served) -> None:
    """Requests spread over the backends: each one's workers answer some."""
    answered: set[int] = set()
    for _ in range(3 * len(served.backend_pids)):
        response = http_request(served.site.port, "GET", served.site.url("/echo/"), timeout=10)
        assert response.status == 200
        answered.add(parent_of(response.json()["pid"]))
    assert answered == set(served.backend_pids)


def prefix_without_its_slash_redirects(site: Site) -> None:
    response = http_request(site.port, "GET", site.mount, timeout=10)
    assert response.status == 301
    assert response.header("Location") in (site.url("/"), site.absolute("/"))
