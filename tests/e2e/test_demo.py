"""The README's demo: the test project behind nginx, styled admin included, then Control-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.http import http_request
from tests.support.net import free_port
from tests.support.paths import ROOT


def test_demo_serves_the_project_and_its_static_files(nginx_binary: str, tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        demo = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "demo.py")],
            env={
                "DEMO_PORT": str(port),
                "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
            },
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while "The demo is up" not in out.read_text() and time.monotonic() < deadline:
            assert demo.poll() is None, out.read_text()
            time.sleep(0.1)
        assert f"http://127.0.0.1:{port}/" in out.read_text(), out.read_text()
        assert http_request(port, "GET", "/echo/").status == 200
        login = http_request(port, "GET", "/admin/login/")
        assert login.status == 200
        sheets = re.findall(r'href="(/static/admin/css/[^"]+\.css)"', login.body.decode())
        assert sheets, login.body[:500]
        for sheet in sheets:
            css = http_request(port, "GET", sheet)
            assert css.status == 200, sheet
            assert (css.header("Content-Type") or "").startswith("text/css"), sheet
    finally:
        demo.send_signal(signal.SIGINT)
        status = demo.wait(timeout=40)
    assert status == 0, out.read_text()
