"""The threaded server, run in a real process; flup's own class shows each bug it fixes.

What both process models do alike is in tests/test_process_models.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from flup.server import threadedserver

from django_runfcgi.workers import Limits
from django_runfcgi.workers.threaded import ThreadedServer
from tests.support import jobs
from tests.support.jobs import (
    LineJob,
    Servers,
    ask_all,
    assert_stopped_cleanly,
    connect,
    read_line,
    read_to_end,
)
from tests.support.processes import leave_descriptors, task_status, wakeups


def ours_and_flup(bug: str, *, race: bool = False) -> pytest.MarkDecorator:
    return jobs.ours_and_flup("threaded", bug, race=race)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(
            lambda: ThreadedServer(jobs.Jobs(LineJob), Limits(maxchildren=5)),
            id="threaded",
        ),
        pytest.param(
            lambda: threadedserver.ThreadedServer(jobClass=LineJob, maxThreads=5),
            id="flup-threaded",
            marks=pytest.mark.xfail(
                reason=(
                    "flup.rst#thread-constructor: setDaemon() warns, and threads start in "
                    "the constructor"
                ),
                strict=True,
            ),
        ),
    ],
)
def test_constructor_neither_warns_nor_starts_threads(build: Callable[[], object]) -> None:
    """Warnings are errors here; a thread started before a fork would warn on 3.12+."""
    before = threading.active_count()

    build()

    assert threading.active_count() == before


@ours_and_flup(
    "flup.rst#thread-burst: a burst is queued onto threads that are already busy", race=True
)
def test_a_burst_gets_a_thread_per_request(servers: Servers, model: str) -> None:
    server = servers.start(model, "maxThreads=50")

    elapsed, replies = ask_all(server.path, ["sleep 1"] * 10)

    assert [reply[-1] for reply in replies] == ["done"] * 10
    assert len({reply[0] for reply in replies}) == 10
    assert elapsed < 1.5


def test_queued_quick_requests_stay_on_one_thread(servers: Servers) -> None:
    """Requests that only compute are served one after another by the thread that is
    already running: spread over threads they compete for the GIL, which cost the
    one-process server about half its throughput (flup handed every connection from its
    main thread to another thread)."""
    server = servers.start("threaded")

    for _ in range(3):
        _, replies = ask_all(server.path, ["pid"] * 30)

        # Handed from thread to thread, the busiest of 5 to 7 threads served about 8.
        assert max(Counter(reply[0] for reply in replies).values()) >= 25
        time.sleep(0.3)


def test_an_idle_server_stops_waking(servers: Servers) -> None:
    """The thread that looks for requests waiting on I/O stops waking a second after
    the last request: an idle server uses no processor time."""
    server = servers.start("threaded", "minSpare=2", "maxSpare=5")
    for _ in range(20):
        assert server.ask("pid")
    time.sleep(1.5)
    before = wakeups(server.pid, threads=True)

    time.sleep(1.0)
    idle = wakeups(server.pid, threads=True) - before
    for _ in range(50):
        assert server.ask("pid")
    serving = wakeups(server.pid, threads=True) - before - idle

    assert idle <= 2
    # What counts the wake-ups sees the threads that serve.
    assert serving >= 50


def test_out_of_file_descriptors_it_serves_on_once_some_are_free(servers: Servers) -> None:
    """accept() failing with EMFILE is logged, and the connections left waiting are
    served once running ones close; the failure used to end the server."""
    server = servers.start("threaded", "maxThreads=10")
    # Room for two connections: the others wait for those to close.
    leave_descriptors(server.pid, 2)

    _, replies = ask_all(server.path, ["sleep 0.5"] * 6, timeout=15.0)

    assert [reply[-1] for reply in replies] == ["done"] * 6
    assert "Cannot accept a connection: [Errno 24] Too many open files" in server.stderr
    assert server.ask("pid")


def blocked_signals(pid: int, tid: int) -> set[int]:
    mask = int(task_status(pid, tid, "SigBlk"), 16)
    return {number + 1 for number in range(64) if mask >> number & 1}


def test_only_the_main_thread_takes_stop_signals(servers: Servers) -> None:
    """A stop signal the kernel gave to a pool thread ran its handler only once the main
    thread woke for something else: an idle server once ignored a TERM for good."""
    server = servers.start("threaded", "minSpare=3", "maxSpare=5")
    threads = [int(tid) for tid in os.listdir(f"/proc/{server.pid}/task")]
    stop_signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}
    assert len(threads) > 1

    for tid in threads:
        blocked = blocked_signals(server.pid, tid)
        if tid == server.pid:
            assert not blocked & stop_signals
        else:
            assert stop_signals <= blocked, f"thread {tid} blocks only {sorted(blocked)}"


def test_connections_wait_while_every_thread_is_busy(servers: Servers) -> None:
    """flup closed the connections it had no thread for."""
    server = servers.start("threaded", "minSpare=1", "maxSpare=2", "maxThreads=2")
    first = [connect(server.path) for _ in range(2)]
    try:
        for client in first:
            client.sendall(b"sleep 1\n")
            assert read_line(client)  # Both threads are busy now.

        elapsed, replies = ask_all(server.path, ["sleep 1"] * 2)

        assert [read_to_end(client) for client in first] == [["done"], ["done"]]
    finally:
        for client in first:
            client.close()
    assert [reply[-1:] for reply in replies] == [["done"], ["done"]]
    assert 1.5 < elapsed < 3.0


def test_sigint_gives_requests_one_second(servers: Servers) -> None:
    server = servers.start("threaded")
    with connect(server.path) as client:
        client.sendall(b"sleep 30\n")
        assert read_line(client)

        elapsed = server.stop(signal.SIGINT)

        assert read_to_end(client) == []
    assert 1.0 <= elapsed < 3.0
    assert_stopped_cleanly(server)


@pytest.mark.parametrize(
    ("limit", "value"),
    [("maxchildren", 0), ("shutdowntimeout", -1), ("requesttimeout", -1)],
)
def test_rejects_impossible_limits(limit: str, value: int) -> None:
    with pytest.raises(ValueError, match=limit):
        Limits(**{limit: value})
