"""What both process models do alike, each run in a real process (tests/support/jobs.py);
flup's own class shows the bugs that are fixed. tests/test_prefork.py and
tests/test_threaded.py hold what one model does its own way."""

from __future__ import annotations

import os
import signal

import pytest

from tests.support.jobs import (
    Servers,
    assert_stopped_cleanly,
    both_models,
    connect,
    pid_of,
    read_line,
    read_to_end,
)
from tests.support.processes import wait_for

# How soon each model has stopped after a stop signal with nothing left to serve.
IDLE_STOP_SECONDS = {"prefork": 2.0, "threaded": 1.0}


@both_models()
@pytest.mark.parametrize(
    ("signum", "hup"),
    [
        pytest.param(signal.SIGTERM, False, id="TERM"),
        pytest.param(signal.SIGINT, False, id="INT"),
        pytest.param(signal.SIGHUP, True, id="HUP"),
    ],
)
def test_stop_signals_and_what_run_returns(
    servers: Servers, model: str, signum: int, hup: bool
) -> None:
    server = servers.start(model)

    elapsed = server.stop(signum, timeout=2.0)

    assert elapsed < IDLE_STOP_SECONDS[model]
    assert f"run returned {hup} in {server.pid}" in server.stdout
    assert_stopped_cleanly(server)


@pytest.mark.parametrize(
    ("model", "target"),
    [("prefork", "master"), ("prefork", "process group"), ("threaded", "master")],
)
def test_sigterm_lets_the_request_in_progress_finish(
    servers: Servers, model: str, target: str
) -> None:
    """run() returns only after the running request has finished
    (flup.rst#threaded-shutdown). A process manager may signal a prefork server's whole
    group; its workers must stop gracefully too."""
    server = servers.start(model)
    with connect(server.path) as client:
        client.sendall(b"sleep 1\n")
        assert read_line(client)  # The request has started.

        if target == "process group":
            os.killpg(server.pid, signal.SIGTERM)
        elapsed = server.stop(signal.SIGTERM)

        assert read_to_end(client) == ["done"]
    assert elapsed < 2.5
    assert_stopped_cleanly(server)


@pytest.mark.parametrize(
    ("model", "busy"),
    [
        pytest.param("prefork", False, id="prefork-idle"),
        pytest.param("prefork", True, id="prefork-busy"),
        pytest.param("threaded", False, id="threaded-idle"),
        pytest.param("threaded", True, id="threaded-busy"),
        pytest.param(
            "flup-threaded",
            False,
            id="flup-threaded-idle",
            marks=pytest.mark.xfail(
                reason="flup flup.rst#persistent-shutdown: shutdown() joins a persistent "
                "connection's thread forever",
                strict=True,
            ),
        ),
    ],
)
def test_sigterm_ends_persistent_connections(servers: Servers, model: str, busy: bool) -> None:
    """stop_when_idle() lets the connection end long before shutdownTimeout (30 s)."""
    server = servers.start(model, "job=persistent")
    with connect(server.path) as client:
        client.sendall(b"pid\n")
        assert read_line(client)
        if busy:
            client.sendall(b"sleep 1\n")
            assert read_line(client)

        elapsed = server.stop(signal.SIGTERM, timeout=4.0)

        assert read_to_end(client) == (["done"] if busy else [])
    assert elapsed < (2.5 if busy or model == "prefork" else 2.0)
    assert_stopped_cleanly(server)


# What each model does with the requests still running when shutdownTimeout is up.
AT_THE_SHUTDOWN_TIMEOUT = {"prefork": "killing them.", "threaded": "leaving them."}


@both_models()
def test_shutdown_timeout_bounds_the_wait(servers: Servers, model: str) -> None:
    server = servers.start(model, "shutdownTimeout=1")
    with connect(server.path) as client:
        client.sendall(b"sleep 30\n")
        assert read_line(client)

        elapsed = server.stop(signal.SIGTERM)

        assert read_to_end(client) == []
    assert 1.0 <= elapsed < 3.0
    assert "still running 1.0 s after the stop signal" in server.stderr
    assert AT_THE_SHUTDOWN_TIMEOUT[model] in server.stderr
    assert_stopped_cleanly(server)


@both_models()
def test_sigint_during_a_graceful_stop_stops_now(servers: Servers, model: str) -> None:
    server = servers.start(model, "shutdownTimeout=30")
    with connect(server.path) as client:
        client.sendall(b"sleep 30\n")
        assert read_line(client)
        server.proc.send_signal(signal.SIGTERM)
        assert not wait_for(lambda: server.proc.poll() is not None, timeout=0.5)

        elapsed = server.stop(signal.SIGINT)

        assert read_to_end(client) == []
    assert elapsed < 3.0
    assert_stopped_cleanly(server)


@both_models(
    prefork="flup.rst#sigusr1: SIGUSR1 sends a str on a socket; the TypeError kills the master"
)
def test_sigusr1_leaves_the_server_serving(servers: Servers, model: str) -> None:
    server = servers.start(model)

    server.proc.send_signal(signal.SIGUSR1)
    first = server.ask("pid")
    second = server.ask("pid")

    assert first
    assert second
    assert not wait_for(lambda: server.proc.poll() is not None, timeout=0.5)
    assert wait_for(lambda: f"usr1 in {server.pid}" in server.stdout, timeout=2.0)
    assert server.ask("sleep 0.1")[-1] == "done"
    server.stop(signal.SIGTERM)
    assert_stopped_cleanly(server)


# One worker process for prefork, so that the request after the failure meets the same one.
ONE_WORKER = {"prefork": ("minSpare=1", "maxSpare=1", "maxChildren=1")}


@both_models()
def test_a_job_that_raises_is_logged_and_the_server_serves_on(
    servers: Servers, model: str
) -> None:
    """flup's prefork worker let the exception out, into the caller's code; its threaded
    server swallowed it without a word."""
    server = servers.start(model, *ONE_WORKER.get(model, ()))

    failed = server.ask("raise")
    after = server.ask("sleep 0.1")

    assert failed
    assert after[-1] == "done"
    assert pid_of(after) == pid_of(failed)
    assert server.stderr.count("Traceback") == 1
    assert "RuntimeError: job failed on purpose" in server.stderr
    server.stop(signal.SIGTERM)
    assert_stopped_cleanly(server)
