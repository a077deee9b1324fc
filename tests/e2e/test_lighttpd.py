"""Through lighttpd with the documented recipes (docs/configs/lighttpd-*.conf), at / and /app/.

Each recipe is served once per module: its runfcgi backend and lighttpd start together,
then every scenario runs against them. The wirings cover mod_fastcgi to a runfcgi on a
unix socket, mod_fastcgi starting runfcgi itself (``bin-path``, two processes), and
mod_scgi to a runfcgi on TCP, each at / and under /app/.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.frontends import DOC_SOCKET, DOC_STATIC, recipe
from tests.support.http import http_request
from tests.support.lighttpd import (
    DOC_AJP_PORT,
    DOC_MANAGE,
    DOC_PYTHON,
    DOC_SCGI_PORT,
    DOC_SETTINGS,
    DOC_SPAWN_SOCKET,
    Lighttpd,
)
from tests.support.paths import TESTPROJECT
from tests.support.processes import alive
from tests.support.runner import Runner
from tests.support.scenarios import SCENARIOS, Site
from tests.support.wiring import (
    Served,
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
    variant: str  # "unix", "tcp", or "bin-path" (lighttpd starts runfcgi itself)
    mount: str
    cannot: Mapping[str, str] = field(default_factory=dict)


WIRINGS = [
    Wiring("lighttpd-fastcgi.conf", "fcgi", "unix", ""),
    Wiring("lighttpd-fastcgi-prefix.conf", "fcgi", "unix", "/app"),
    Wiring("lighttpd-fastcgi-spawn.conf", "fcgi", "bin-path", ""),
    Wiring("lighttpd-fastcgi-spawn-prefix.conf", "fcgi", "bin-path", "/app"),
    Wiring("lighttpd-scgi.conf", "scgi", "tcp", ""),
    Wiring("lighttpd-scgi-prefix.conf", "scgi", "tcp", "/app"),
    Wiring("lighttpd-ajp.conf", "ajp", "tcp", ""),
    Wiring("lighttpd-ajp-prefix.conf", "ajp", "tcp", "/app"),
]


def serve(runner: Runner, wiring: Wiring) -> dict[str, str]:
    """Start the wiring's runfcgi backend; returns the recipe's lines to replace."""
    if wiring.variant == "bin-path":
        return {
            DOC_PYTHON: sys.executable,
            DOC_MANAGE: str(TESTPROJECT / "manage.py"),
            DOC_SETTINGS: '"testproject.settings"',
            DOC_SPAWN_SOCKET: str(runner.tmp / "spawn.sock"),
        }
    if wiring.variant == "unix":
        return {DOC_SOCKET: str(start_backend(runner, wiring.protocol, "unix"))}
    words = []
    if wiring.protocol == "ajp":
        # AJP has no SCRIPT_NAME: runfcgi takes the prefix from its option.
        words.append(f"scriptname={wiring.mount or '/'}")
    _, port = start_backend(runner, wiring.protocol, "tcp", *words)
    doc = DOC_AJP_PORT if wiring.protocol == "ajp" else DOC_SCGI_PORT
    return {doc: f'"port" => {port}'}


@pytest.fixture(scope="module", params=WIRINGS, ids=wiring_id)
def served(
    request: pytest.FixtureRequest, lighttpd_binary: str, static_root: Path
) -> Iterator[Served]:
    wiring: Wiring = request.param

    def lighttpd(runner: Runner, port: int) -> Lighttpd:
        replacements = serve(runner, wiring) | {DOC_STATIC: f"{static_root}/"}
        site_config = recipe(wiring.recipe, replacements)
        # lighttpd passes its environment on to what it starts: the test's tag and database.
        return Lighttpd(runner.tmp / "lighttpd", site_config, port, env=runner.env())

    with serving(wiring, "lighttpd", lighttpd, streams=True) as served:
        yield served
    assert served.left == [], f"still running after lighttpd stopped: {served.left}"


@scenario_cases(WIRINGS)
def test_scenario(site: Site, scenario: str) -> None:
    SCENARIOS[scenario](site)


@on_wirings(wiring for wiring in WIRINGS if wiring.mount)
def test_prefix_without_its_slash_redirects(site: Site) -> None:
    prefix_without_its_slash_redirects(site)


def test_no_error_logged(served: Served) -> None:
    """lighttpd logs nothing but its start after the scenarios ran."""
    lines = served.frontend.error_log().splitlines()
    assert [line for line in lines if "server started" not in line] == []


def test_short_body_reaches_django(served: Served) -> None:
    """Four bytes whose first two, read as an AJP data length, say zero (lighttpd's
    mod_ajp13 sends body packets without that length)."""
    body = b"\0\0ab"
    response = http_request(served.site.port, "POST", served.site.url("/echo/"), body=body)
    assert response.status == 200, response.body[:400]
    assert response.json()["body_length"] == len(body)


@on_wirings(wiring for wiring in WIRINGS if wiring.variant == "bin-path")
def test_spawned_backends_stop_with_lighttpd(served: Served) -> None:
    """Runs last for each wiring: lighttpd's TERM ends the runfcgi processes it started."""
    assert http_request(served.site.port, "GET", served.site.url("/echo/")).status == 200
    assert isinstance(served.frontend, Lighttpd)
    spawned = served.frontend.spawned()
    assert len(spawned) == 2  # "max-procs" => 2
    started = time.monotonic()
    assert served.frontend.stop() == []
    assert [pid for pid in spawned if alive(pid)] == []
    assert time.monotonic() - started < 10
