"""Through Apache httpd 2.4 with the documented recipes (docs/configs/apache-*, mysite.fcgi,
htaccess), at / and /app/.

Each wiring is served once per module: its runfcgi backends and Apache start together,
then every scenario runs against them. The wirings cover mod_proxy_fcgi over a unix
socket and TCP, mod_proxy_scgi, mod_proxy_ajp behind mod_proxy_balancer over two
backends, and mod_fcgid spawning mysite.fcgi from a shared host's ``.htaccess``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.apache import (
    DOC_AJP_FIRST,
    DOC_AJP_SECOND,
    DOC_FCGI_TCP,
    DOC_PROJECT,
    DOC_PYTHON,
    DOC_SCGI_TCP,
    DOC_SETTINGS,
    Apache,
    vhost,
)
from tests.support.frontends import DOC_SOCKET, DOC_STATIC, recipe
from tests.support.http import http_request
from tests.support.paths import TESTPROJECT
from tests.support.processes import alive
from tests.support.runner import Runner
from tests.support.scenarios import SCENARIOS, Site
from tests.support.wiring import (
    Served,
    every_backend_answers,
    on_wirings,
    scenario_cases,
    serving,
    start_backend,
    wiring_id,
)

pytestmark = pytest.mark.e2e

CHUNKED_REFUSED = "mod_proxy_scgi answers 411 Length Required to a chunked request body"
FCGID_BURST = (
    "mod_fcgid gives each mysite.fcgi process one request at a time and starts more "
    "processes only after requests have waited for one, so a burst queues until the pool grew"
)


@dataclass(frozen=True, eq=False)
class Wiring:
    recipe: str
    protocol: str
    variant: str
    mount: str
    transport: str  # "unix", "tcp" or "fcgid" (Apache starts mysite.fcgi itself)
    backends: int = 1
    streams: bool = True
    cannot: Mapping[str, str] = field(default_factory=dict)
    host: str = ""  # main-server settings of a shared host (mod_fcgid)
    mpm: str = "event"


WIRINGS = [
    Wiring("apache-fcgi.conf", "fcgi", "unix", "", "unix"),
    Wiring("apache-fcgi-prefix.conf", "fcgi", "tcp", "/app", "tcp"),
    Wiring(
        "apache-scgi.conf", "scgi", "proxy", "", "tcp", cannot={"chunked-body": CHUNKED_REFUSED}
    ),
    Wiring(
        "apache-scgi-prefix.conf",
        "scgi",
        "proxy",
        "/app",
        "tcp",
        cannot={"chunked-body": CHUNKED_REFUSED},
    ),
    Wiring(
        "apache-ajp-balancer.conf",
        "ajp",
        "balancer",
        "",
        "tcp",
        backends=2,
    ),
    Wiring(
        "apache-ajp-balancer-prefix.conf",
        "ajp",
        "balancer",
        "/app",
        "tcp",
        backends=2,
        # One site under the prefork MPM, where every Apache process has its own pool.
        mpm="prefork",
    ),
    # A host that lets responses stream, and one with mod_fcgid's default 64 KiB buffer.
    Wiring(
        "htaccess",
        "fcgi",
        "fcgid",
        "",
        "fcgid",
        host="FcgidOutputBufferSize 0",
        cannot={"concurrent-slow": FCGID_BURST},
    ),
    Wiring(
        "htaccess",
        "fcgi",
        "fcgid",
        "/app",
        "fcgid",
        streams=False,
        cannot={"concurrent-slow": FCGID_BURST},
    ),
]

TCP_DOCS = {
    "fcgi": (DOC_FCGI_TCP,),
    "scgi": (DOC_SCGI_TCP,),
    "ajp": (DOC_AJP_FIRST, DOC_AJP_SECOND),
}


def serve(runner: Runner, wiring: Wiring) -> dict[str, str]:
    """Start the wiring's runfcgi backends; returns the recipe's addresses to replace."""
    replacements: dict[str, str] = {}
    words = []
    if wiring.protocol == "scgi" or (wiring.protocol == "ajp" and wiring.mount):
        # mod_proxy_scgi sends the whole path as SCRIPT_NAME, AJP no SCRIPT_NAME at all.
        words.append(f"scriptname={wiring.mount or '/'}")
    for index in range(wiring.backends):
        address = start_backend(runner, wiring.protocol, wiring.transport, *words)
        if isinstance(address, str):
            replacements[DOC_SOCKET] = address
        else:
            replacements[TCP_DOCS[wiring.protocol][index]] = f"127.0.0.1:{address[1]}"
    return replacements


def shared_host(runner: Runner, wiring: Wiring, port: int, static_root: Path) -> tuple[str, str]:
    """A document root holding the documented .htaccess and mysite.fcgi, and STATIC_ROOT
    beside them; returns the host's site and main-server settings, as a shared host would
    have them."""
    htdocs = runner.tmp / "htdocs"
    directory = htdocs / wiring.mount.lstrip("/")
    directory.mkdir(parents=True)
    shutil.copytree(static_root, directory / "static")
    (directory / ".htaccess").write_text(recipe("htaccess", {}))
    script = directory / "mysite.fcgi"
    script.write_text(
        recipe(
            "mysite.fcgi",
            {
                DOC_PYTHON: f"#!{sys.executable}",
                DOC_PROJECT: str(TESTPROJECT),
                DOC_SETTINGS: '"testproject.settings"',
            },
        )
    )
    script.chmod(0o755)
    env = runner.env()
    site = f"""
<VirtualHost 127.0.0.1:{port}>
    DocumentRoot {htdocs}
    <Directory {htdocs}>
        AllowOverride FileInfo Options=ExecCGI
        Require all granted
    </Directory>
    <FilesMatch "^\\.ht">
        Require all denied
    </FilesMatch>
</VirtualHost>
"""
    main = "\n".join(
        [
            wiring.host,
            # Large enough for the 50 MB upload (the default is 128 KiB).
            "FcgidMaxRequestLen 104857600",
            *(
                f"FcgidInitialEnv {name} {env[name]}"
                for name in ("RUNFCGI_TEST_TAG", "TESTPROJECT_DB", "PYTHONUNBUFFERED")
            ),
        ]
    )
    return site, main


@pytest.fixture(scope="module", params=WIRINGS, ids=wiring_id)
def served(
    request: pytest.FixtureRequest, apache_binary: str, static_root: Path
) -> Iterator[Served]:
    wiring: Wiring = request.param

    def apache(runner: Runner, port: int) -> Apache:
        main = ""
        if wiring.transport == "fcgid":
            site_config, main = shared_host(runner, wiring, port, static_root)
        else:
            replacements = serve(runner, wiring) | vhost(port) | {DOC_STATIC: f"{static_root}/"}
            site_config = recipe(wiring.recipe, replacements)
        return Apache(runner.tmp / "apache", site_config, port, mpm=wiring.mpm, main=main)

    with serving(wiring, "apache", apache, streams=wiring.streams) as served:
        yield served


@scenario_cases(WIRINGS)
def test_scenario(site: Site, scenario: str) -> None:
    SCENARIOS[scenario](site)


@on_wirings(wiring for wiring in WIRINGS if wiring.backends > 1)
def test_balancer_spreads_requests_over_backends(served: Served) -> None:
    every_backend_answers(served)


@on_wirings(wiring for wiring in WIRINGS if wiring.variant == "fcgid")
def test_fcgid_starts_a_new_script_after_kill(served: Served) -> None:
    """The shared-hosting restart: TERM the script, the next request starts a new one."""
    first = http_request(served.site.port, "GET", served.site.url("/echo/"), timeout=10)
    assert first.status == 200
    old = first.json()["pid"]
    os.kill(old, signal.SIGTERM)
    deadline = time.monotonic() + 10
    # mod_fcgid reaps its children only now and then: a zombie counts as gone.
    while alive(old) and time.monotonic() < deadline:
        time.sleep(0.05)
    again = http_request(served.site.port, "GET", served.site.url("/echo/"), timeout=20)
    assert again.status == 200
    assert again.json()["pid"] != old


def test_no_error_logged(served: Served) -> None:
    """Apache logs no proxy or fcgid error after the scenarios ran."""
    errors = [line for line in served.frontend.error_log().splitlines() if ":error]" in line]
    assert errors == []
