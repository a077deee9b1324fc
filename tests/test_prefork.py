"""The prefork server, run in a real process; flup's own class shows each bug it fixes.

What both process models do alike is in tests/test_process_models.py.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import threading
import time

import pytest
from flup.server import preforkserver

from django_runfcgi.workers import Limits
from django_runfcgi.workers.signals import SignalQueue
from tests.support import jobs
from tests.support.jobs import (
    ServerProcess,
    Servers,
    ask_all,
    assert_stopped_cleanly,
    connect,
    pid_of,
    read_line,
    read_to_end,
)
from tests.support.processes import leave_descriptors, wait_for, wakeups


def ours_and_flup(bug: str, *, race: bool = False) -> pytest.MarkDecorator:
    return jobs.ours_and_flup("prefork", bug, race=race)


def no_zombie_workers(server: ServerProcess) -> bool:
    return "Z" not in server.workers().values()


@ours_and_flup(
    "flup.rst#pool-growth: every worker looks idle, so the pool never grows past maxSpare"
)
def test_pool_grows_to_max_children_under_load(servers: Servers, model: str) -> None:
    server = servers.start(model, "minSpare=2", "maxSpare=5", "maxChildren=10")

    elapsed, replies = ask_all(server.path, ["sleep 1"] * 8)

    assert [reply[-1] for reply in replies] == ["done"] * 8
    assert len({pid_of(reply) for reply in replies}) == 8
    assert elapsed < 2.0


@ours_and_flup(
    "flup.rst#stop-signals: select() resumes after the signal; an idle master waits for a request"
)
def test_sigterm_stops_an_idle_master(servers: Servers, model: str) -> None:
    server = servers.start(model)
    # Let the master read the worker's "idle again" byte and go back to waiting.
    time.sleep(0.5)

    elapsed = server.stop(signal.SIGTERM, timeout=2.0)

    assert elapsed < 2.0
    assert_stopped_cleanly(server)


@pytest.mark.parametrize("target", ["master", "process group"])
@pytest.mark.parametrize("command", ["sleep 30", "stubborn 30"])
def test_sigint_stops_busy_workers_now(servers: Servers, command: str, target: str) -> None:
    """Workers get SIGINT (Ctrl-C reaches them too); one that ignores it is killed."""
    server = servers.start("prefork")
    with connect(server.path) as client:
        client.sendall(command.encode() + b"\n")
        assert read_line(client)

        if target == "process group":
            os.killpg(server.pid, signal.SIGINT)
        elapsed = server.stop(signal.SIGINT)

        assert read_to_end(client) == []
    assert elapsed < 3.0
    assert_stopped_cleanly(server)


def test_sigusr1_to_a_worker_calls_the_hook_between_requests(servers: Servers) -> None:
    server = servers.start("prefork", "minSpare=1", "maxSpare=1", "maxChildren=1")
    worker = pid_of(server.ask("pid"))

    os.kill(worker, signal.SIGUSR1)

    assert wait_for(lambda: f"usr1 in {worker}" in server.stdout, timeout=2.0)
    assert pid_of(server.ask("pid")) == worker
    server.stop(signal.SIGTERM)
    assert_stopped_cleanly(server)


def test_max_requests_recycles_workers(servers: Servers) -> None:
    """Workers leave without running the caller's code (flup's left through sys.exit(),
    which ran the caller's finally blocks in each)."""
    server = servers.start("prefork", "minSpare=1", "maxSpare=1", "maxChildren=1", "maxRequests=2")

    # Servers.start() has used the first worker's first request.
    pids = [pid_of(server.ask("pid")) for _ in range(5)]

    assert pids[0] != pids[1] == pids[2] != pids[3] == pids[4]
    assert wait_for(lambda: no_zombie_workers(server) and len(server.workers()) == 1, 2.0)
    server.stop(signal.SIGTERM)
    assert_stopped_cleanly(server)


def test_the_master_sleeps_while_the_pool_needs_no_change(servers: Servers) -> None:
    """The master is woken only to grow or shrink the pool, never for a request as such.

    Waking it twice per request cost about a fifth of the server's CPU time per request
    on a small view.
    """
    server = servers.start("prefork", "minSpare=1", "maxSpare=2", "maxChildren=2")
    requests = 100
    before = wakeups(server.pid)

    for _ in range(requests):
        assert server.ask("pid")

    assert wakeups(server.pid) - before < requests / 10


def test_a_connection_wakes_one_idle_worker(servers: Servers) -> None:
    """flup woke every idle worker for each connection; all but one found nothing."""
    server = servers.start("prefork", "minSpare=1", "maxSpare=8", "maxChildren=8")
    assert wait_for(lambda: len(server.workers()) == 8, timeout=5.0)
    requests = 100
    before = sum(wakeups(pid) for pid in server.workers())

    for _ in range(requests):
        assert server.ask("pid")

    # The worker that serves a connection may sleep two or three times on it; seven
    # others woken for nothing would add seven.
    assert sum(wakeups(pid) for pid in server.workers()) - before < 5 * requests


def test_the_pool_shrinks_back_to_max_spare_after_a_burst(servers: Servers) -> None:
    server = servers.start("prefork", "minSpare=2", "maxSpare=3", "maxChildren=8")

    _, replies = ask_all(server.path, ["sleep 0.5"] * 6)

    assert [reply[-1] for reply in replies] == ["done"] * 6
    assert len({pid_of(reply) for reply in replies}) == 6
    assert wait_for(lambda: len(server.workers()) == 3, timeout=3.0), server.workers()


def test_a_killed_worker_is_reaped_and_replaced(servers: Servers) -> None:
    server = servers.start("prefork", "minSpare=1", "maxSpare=2", "maxChildren=2")
    with connect(server.path) as client:
        client.sendall(b"sleep 30\n")
        worker = pid_of([read_line(client)])

        os.kill(worker, signal.SIGKILL)

        assert read_to_end(client) == []
    assert wait_for(lambda: worker not in server.workers(), timeout=2.0)
    assert pid_of(server.ask("pid")) != worker
    assert wait_for(lambda: no_zombie_workers(server) and len(server.workers()) == 2, 2.0)
    assert f"Worker process {worker} was killed by signal 9" in server.stderr
    server.stop(signal.SIGTERM)
    assert_stopped_cleanly(server)


def test_sock_timeout_is_not_an_option() -> None:
    """flup feeds sockTimeout to setblocking(), which blocks the workers' accept()
    (flup.rst#sock-timeout)."""
    preforkserver.PreforkServer(sockTimeout=5)

    with pytest.raises(TypeError):
        Limits(sockTimeout=5)  # type: ignore[call-arg]


def test_a_signal_sent_before_the_handlers_exist_is_queued_not_lost() -> None:
    """runfcgi blocks its signals before it announces itself; the queue takes them over.

    Without that, a HUP sent as soon as the pidfile appears killed the server.
    """
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        queue = SignalQueue([signal.SIGUSR1])
        try:
            assert queue.pop() == [signal.SIGUSR1]
        finally:
            queue.close()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGUSR1, previous)


def test_a_signal_after_the_stop_is_held_until_exit() -> None:
    """Once the server stopped, a second Ctrl-C or TERM must not cut the cleanup short.

    Under load the second INT of a double Ctrl-C came after run() returned and killed
    the process before it removed its pidfile and socket file.
    """
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    try:
        SignalQueue([signal.SIGUSR1]).close()
        os.kill(os.getpid(), signal.SIGUSR1)

        assert received == []
        assert signal.SIGUSR1 in signal.sigpending()
    finally:
        signal.sigtimedwait([signal.SIGUSR1], 0)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGUSR1, previous)


def test_a_signal_taken_by_another_thread_wakes_the_main_loop() -> None:
    """The kernel may give the process's signal to any thread, and the Python handler
    waits for the main thread to run: a server idle in select() ignored a TERM for good
    about once in 30 stops of a threaded server under load."""
    queue = SignalQueue([signal.SIGUSR1])
    try:
        ready = threading.Event()
        done = threading.Event()

        def other() -> None:
            ready.set()
            done.wait(5)

        thread = threading.Thread(target=other)
        thread.start()
        ready.wait(5)
        assert thread.ident is not None
        signal.pthread_kill(thread.ident, signal.SIGUSR1)

        readable, _, _ = select.select([queue.fd], [], [], 2.0)

        done.set()
        thread.join(5)
        assert readable == [queue.fd]
        assert queue.pop() == [signal.SIGUSR1]
    finally:
        queue.close()
        signal.sigtimedwait([signal.SIGUSR1], 0)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})


def test_a_worker_out_of_file_descriptors_waits_and_serves_on(servers: Servers) -> None:
    """accept() failing with EMFILE is logged and tried again; the worker used to die of
    it with a traceback, and its replacement could fail the same way."""
    server = servers.start("prefork", "minSpare=1", "maxSpare=1", "maxChildren=1")
    [worker] = server.workers()
    limits = leave_descriptors(worker, 0)
    with connect(server.path) as client:
        client.sendall(b"pid\n")
        assert wait_for(lambda: "Cannot accept a connection" in server.stderr, timeout=5.0)

        resource.prlimit(worker, resource.RLIMIT_NOFILE, limits)

        assert pid_of([read_line(client)]) == worker
    assert "[Errno 24] Too many open files; trying again" in server.stderr
    assert "Traceback" not in server.stderr
