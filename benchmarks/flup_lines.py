"""Which of flup's lines run while runfcgi serves, per protocol.

Each protocol's gateway serves GET, POST with a body, HEAD, an application that raises
(500) and, where the protocol keeps connections, two requests on one connection, once as
a prefork worker runs it (one request at a time) and once as threads do; a line tracer
records every line of flup.server's functions that executes. The process models import
nothing from flup (the list of modules that do is printed first), so what runs is the
protocols' share.

    python -m benchmarks.flup_lines
"""

from __future__ import annotations

import ast
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flup.server

import django_runfcgi
from django_runfcgi import protocols
from tests.support.clients import ajp_request, fcgi_get_values, fcgi_request, scgi_request

FLUP = Path(flup.server.__file__).parent


def function_lines(path: Path) -> set[int]:
    """The lines of a module's function bodies that hold code (not docstrings)."""
    tree = ast.parse(path.read_text())
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            for statement in body:
                for sub in ast.walk(statement):
                    if isinstance(sub, ast.stmt):
                        lines.add(sub.lineno)
    return lines


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    if environ["PATH_INFO"] == "/fail/":
        raise RuntimeError("boom")
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello " + str(len(body)).encode()]


REQUESTS = {"fcgi": fcgi_request, "scgi": scgi_request, "ajp": ajp_request}


def exchanges(protocol: str, address: Any) -> Iterator[Any]:
    request = REQUESTS[protocol]
    yield request(address, "GET", "/")
    yield request(address, "POST", "/", body=b"x" * 100_000)
    yield request(address, "HEAD", "/")
    yield request(address, "GET", "/fail/")
    if protocol == "fcgi":
        values = fcgi_get_values(address, ["FCGI_MPXS_CONNS", "FCGI_MAX_CONNS"])
        assert values["FCGI_MPXS_CONNS"] == "0", values
    if protocol != "scgi":
        with socket.create_connection(address) as sock:
            extra = {"keep_conn": True} if protocol == "fcgi" else {}
            for _ in range(2):
                yield request(address, "GET", "/", sock=sock, **extra)


def serve(protocol: str, multiprocess: bool) -> dict[str, set[int]]:
    gateway = protocols.build(protocol, app, multiprocess=multiprocess)
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()[:2]
    ran: dict[str, set[int]] = {}
    stopping = threading.Event()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        filename = frame.f_code.co_filename
        if not filename.startswith(str(FLUP)):
            return None

        def lines(frame: Any, event: str, arg: Any) -> Any:
            if event == "line":
                ran.setdefault(Path(filename).name, set()).add(frame.f_lineno)
            return lines

        return lines

    def accept_all() -> None:
        threading.settrace(tracer)
        sys.settrace(tracer)
        while True:
            sock, addr = listener.accept()
            if stopping.is_set():
                sock.close()
                return
            with sock:
                gateway.connection(sock, addr).run()

    server = threading.Thread(target=accept_all)
    server.start()
    try:
        for response in exchanges(protocol, address):
            assert response.status in (200, 500), response.status
    finally:
        stopping.set()
        socket.create_connection(address).close()
        server.join(5)
        listener.close()
    return ran


def main() -> int:
    package = Path(django_runfcgi.__file__).parent
    importers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if re.search(r"^(from|import) flup", path.read_text(), re.MULTILINE)
    )
    print("runfcgi modules that import flup:", ", ".join(importers))
    modules = sorted(p for p in FLUP.glob("*.py") if p.name != "__init__.py")
    totals = {p.name: function_lines(p) for p in modules}
    total = sum(len(lines) for lines in totals.values())
    print(f"flup.server function lines: {total} in {len(modules)} modules")
    for protocol in ("fcgi", "scgi", "ajp"):
        for multiprocess, model in ((True, "prefork"), (False, "threaded")):
            ran = serve(protocol, multiprocess)
            counted = {name: lines & totals.get(name, set()) for name, lines in ran.items()}
            n = sum(len(lines) for lines in counted.values())
            where = ", ".join(f"{name} {len(lines)}" for name, lines in sorted(counted.items()))
            print(f"{protocol:5} {model:9} {n:4} lines ({100 * n / total:.1f}%): {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
