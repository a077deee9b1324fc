"""Django's WSGI handler called in-process on a prepared environ: the most a server can get.

Prints one JSON object, view name -> requests per second on one core.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from typing import Any

from benchmarks.views import MEGABYTE

BASE_ENVIRON: dict[str, Any] = {
    "SCRIPT_NAME": "",
    "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8080",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "HTTP_HOST": "127.0.0.1:8080",
    "HTTP_USER_AGENT": "wrk",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": False,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
}

REQUESTS = {
    "hello": ("GET", "/hello/", b""),
    "sleep": ("GET", "/sleep/", b""),
    "big": ("GET", "/big/", b""),
    "post": ("POST", "/sink/", b"x" * MEGABYTE),
}


def respond(handler: Any, base: dict[str, Any], body: bytes = b"") -> None:
    """One request, as a server makes it: a fresh environ and body, the response read
    and closed; AssertionError unless it is a 200."""

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        if not status.startswith("200"):
            raise AssertionError(f"{base['PATH_INFO']} answered {status}")
        return lambda data: None

    environ = dict(base)
    environ["wsgi.input"] = io.BytesIO(body)
    result = handler(environ, start_response)
    for _chunk in result:
        pass
    result.close()


def measure(handler: Any, view: str, seconds: float) -> float:
    method, path, body = REQUESTS[view]
    base = dict(BASE_ENVIRON, REQUEST_METHOD=method, PATH_INFO=path, REQUEST_URI=path)
    if body:
        base.update(CONTENT_LENGTH=str(len(body)), CONTENT_TYPE="application/octet-stream")
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    now = started
    while now < deadline:
        respond(handler, base, body)
        count += 1
        now = time.perf_counter()
    return count / (now - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("views", nargs="*", default=list(REQUESTS))
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    from django.core.wsgi import get_wsgi_application

    handler = get_wsgi_application()
    measure(handler, "hello", min(args.seconds, 0.5))  # imports, URL resolver, caches
    print(json.dumps({view: measure(handler, view, args.seconds) for view in args.views}))


if __name__ == "__main__":
    main()
