"""HTTPS through Apache httpd's mod_ssl and mod_proxy_ajp, with ProxyPass's secret=, from
the recipe docs/configs/apache-ajp-tls.conf.

The test makes a self-signed certificate with the openssl command and starts one runfcgi
with secret= and one Apache serving the recipe three times, on three ports: with the
same secret, with another one, and without secret=.
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.apache import DOC_AJP_FIRST, Apache
from tests.support.binaries import require
from tests.support.frontends import DOC_STATIC, recipe
from tests.support.http import HttpResponse, http_request
from tests.support.net import free_port
from tests.support.runner import Runner

pytestmark = pytest.mark.e2e

RECIPE = "apache-ajp-tls.conf"
DOC_TLS_VHOST = "<VirtualHost *:443>"
DOC_CERT = "/etc/ssl/certs/www.example.com.pem"
DOC_KEY = "/etc/ssl/private/www.example.com.key"
DOC_SECRET = "3f6c0a9e1b7d4c2f8e5a6b1d0c9f7e3a"
DOC_SECRET_LINE = f" \\\n        secret={DOC_SECRET}"


@dataclass
class Served:
    apache: Apache
    runner: Runner
    tls: ssl.SSLContext
    right: int  # the ports of the three sites
    wrong: int
    none: int

    def get(
        self,
        port: int,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpResponse:
        return http_request(
            port, method, path, body=body, headers=headers, timeout=30, tls=self.tls
        )


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    openssl = require("openssl", "openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def site(
    *, port: int, backend: str, cert: Path, key: Path, static: Path, secret: str | None
) -> str:
    secret_line = {DOC_SECRET_LINE: ""} if secret is None else {DOC_SECRET: secret}
    return recipe(
        RECIPE,
        {
            DOC_TLS_VHOST: f"<VirtualHost 127.0.0.1:{port}>",
            DOC_CERT: str(cert),
            DOC_KEY: str(key),
            DOC_AJP_FIRST: backend,
            DOC_STATIC: f"{static}/",
            **secret_line,
        },
    )


@pytest.fixture(scope="module")
def served(apache_binary: str, static_root: Path) -> Iterator[Served]:
    tmp = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    runner = Runner(tmp)
    apache: Apache | None = None
    try:
        cert, key = certificate(tmp)
        secret = secrets.token_hex(16)
        backend_port = free_port()
        runner.serve(
            "protocol=ajp",
            "method=prefork",
            "daemonize=false",
            "host=127.0.0.1",
            f"port={backend_port}",
            f"secret={secret}",
            address=("127.0.0.1", backend_port),
        )
        backend = f"127.0.0.1:{backend_port}"
        right, wrong, none = free_port(), free_port(), free_port()
        sites = [
            site(port=port, backend=backend, cert=cert, key=key, static=static_root, secret=sent)
            for port, sent in ((right, secret), (wrong, secrets.token_hex(16)), (none, None))
        ]
        apache = Apache(
            tmp / "apache",
            "\n".join(sites),
            right,
            modules=("socache_shmcb", "ssl"),
            main=f"Listen 127.0.0.1:{wrong}\nListen 127.0.0.1:{none}",
        ).start()
        tls = ssl.create_default_context(cafile=str(cert))
        yield Served(apache, runner, tls, right, wrong, none)
    finally:
        if apache is not None:
            apache.stop()
        runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def test_https_request_is_secure_with_its_absolute_url(served: Served) -> None:
    """Every HTTPS request answered 503: the SSL key size Apache sends crashed flup's
    decoder. Django learns the scheme from AJP itself: no SECURE_PROXY_SSL_HEADER."""
    response = served.get(served.right, "GET", "/echo/?a=1")
    assert response.status == 200, response.body[:300]
    data = response.json()
    assert data["is_secure"] is True
    assert data["absolute_uri"] == f"https://127.0.0.1:{served.right}/echo/?a=1"
    assert data["get"] == {"a": ["1"]}


def test_mod_ssl_variables_reach_the_environ(served: Served) -> None:
    meta = served.get(served.right, "GET", "/meta/").json()
    assert meta["HTTPS"] == "on"
    assert meta["SSL_CIPHER"]
    assert int(meta["SSL_CIPHER_USEKEYSIZE"]) >= 128
    assert meta["SSL_PROTOCOL"].startswith("TLSv1.")
    assert meta["SSL_SESSION_ID"]
    assert not [key for key in meta if "SECRET" in key.upper()]


def test_patch_works(served: Served) -> None:
    """PATCH has no AJP method code: Apache sends it as a stored method (it was a 500)."""
    response = served.get(
        served.right,
        "PATCH",
        "/echo/",
        body=b'{"name": "new"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 200, response.body[:300]
    assert (response.json()["method"], response.json()["body_length"]) == ("PATCH", 15)


def test_static_files_are_served_by_apache(served: Served) -> None:
    response = served.get(served.right, "GET", "/static/admin/css/base.css")
    assert response.status == 200
    assert response.header("Content-Type") == "text/css"


@pytest.mark.parametrize("which", ["wrong", "none"])
def test_without_the_right_secret_apache_answers_403(served: Served, which: str) -> None:
    port = served.wrong if which == "wrong" else served.none
    for method in ("GET", "POST"):
        response = served.get(port, method, "/echo/", body=b"x" * 1000)
        assert response.status == 403, response.body[:300]
    # The backend refused them; it still serves the site with the secret.
    assert served.get(served.right, "GET", "/echo/").status == 200


def test_no_error_logged(served: Served) -> None:
    """Apache logs no proxy error: the 403s are answers, not failures."""
    errors = [line for line in served.apache.error_log().splitlines() if ":error]" in line]
    assert errors == []
