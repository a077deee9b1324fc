"""Workers recycled under nginx's kept connections (``fastcgi_keep_conn on``): each
finishes its request and closes the connection between requests, so nginx fails none."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from tests.support.frontends import DOC_LISTEN, DOC_TCP, Nginx, recipe
from tests.support.http import http_request
from tests.support.net import free_port
from tests.support.runner import Runner

RECYCLES = 1000
REQUESTS = 20_000  # a bound that a healthy run does not reach
CLIENTS = 2
SECONDS = 300.0


@pytest.mark.e2e
@pytest.mark.parametrize("limit", ["maxrequests=1", "maxmemory=1"])
def test_a_thousand_recycles_through_kept_connections_fail_no_request(
    runner: Runner, nginx_binary: str, limit: str
) -> None:
    """maxrequests=1 recycles a worker after its request; so does maxmemory=1 (every
    worker holds more than a megabyte). A request nginx has already sent on the kept
    connection is served first, never dropped: a worker may serve a few."""
    backend, port = free_port(), free_port()
    runner.serve(
        "daemonize=false",
        "host=127.0.0.1",
        f"port={backend}",
        "maxspare=4",
        "minspare=2",
        "maxchildren=8",
        limit,
        address=("127.0.0.1", backend),
    )
    config = recipe(
        "nginx-fastcgi-keepalive.conf",
        {DOC_LISTEN: f"listen 127.0.0.1:{port};", DOC_TCP[0]: f"127.0.0.1:{backend}"},
    )
    nginx = Nginx(runner.tmp / "nginx", config, port)
    nginx.start()
    outcomes: Counter[str] = Counter()
    pids: set[int] = set()
    lock = threading.Lock()
    deadline = time.monotonic() + SECONDS

    def browse() -> None:
        for _ in range(REQUESTS // CLIENTS):
            with lock:
                if len(pids) > RECYCLES or time.monotonic() > deadline:
                    return
            try:
                response = http_request(port, "GET", "/echo/", timeout=30)
                outcome = str(response.status)
                pid = response.json()["pid"] if response.status == 200 else 0
            except (OSError, ValueError) as err:
                outcome, pid = type(err).__name__, 0
            with lock:
                outcomes[outcome] += 1
                pids.add(pid)

    try:
        clients = [threading.Thread(target=browse) for _ in range(CLIENTS)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(SECONDS + 30)
    finally:
        nginx.stop()
    took = SECONDS - (deadline - time.monotonic())
    print(f"{limit}: {len(pids)} workers served {dict(outcomes)} requests in {took:.0f} s")
    assert set(outcomes) == {"200"}, outcomes
    # Each worker but the ones serving at the end was recycled.
    assert len(pids) > RECYCLES
