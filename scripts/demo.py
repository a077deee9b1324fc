"""Start runfcgi and nginx with the documented recipe, print the URL, wait for Control-C.

The test project's static files (the admin's among them) are collected first and nginx
serves them from the recipe's ``location /static/``, as a deployment would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.frontends import DOC_LISTEN, DOC_SOCKET, DOC_STATIC, Nginx, recipe  # noqa: E402


def wait_for_socket(path: Path, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"runfcgi exited with status {server.returncode}")
        with socket.socket(socket.AF_UNIX) as probe:
            if probe.connect_ex(str(path)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"runfcgi did not listen on {path} within {timeout} s")


def stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Control-C, and TERM from whoever started the demo, both stop it cleanly.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    port = int(os.environ.get("DEMO_PORT", "8000"))
    directory = Path(tempfile.mkdtemp(prefix="runfcgi-demo-", dir="/tmp"))
    sock = directory / "fcgi.sock"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "testproject"))
    env["TESTPROJECT_DB"] = str(directory / "db.sqlite3")
    env["TESTPROJECT_STATIC_ROOT"] = str(directory / "static")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity=0"],
        cwd=ROOT / "testproject",
        env=env,
        check=True,
    )
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runfcgi", f"socket={sock}", "daemonize=false", "umask=000"],
        cwd=ROOT / "testproject",
        env=env,
        start_new_session=True,
    )
    nginx = Nginx(
        directory / "nginx",
        recipe(
            "nginx-fastcgi.conf",
            {
                DOC_LISTEN: f"listen 127.0.0.1:{port};",
                DOC_SOCKET: str(sock),
                DOC_STATIC: f"{directory / 'static'}/",
            },
        ),
        port,
    )
    try:
        wait_for_socket(sock, server)
        nginx.start()
        print(f"\nThe demo is up: http://127.0.0.1:{port}/  (Control-C to stop)\n", flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        nginx.stop()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
