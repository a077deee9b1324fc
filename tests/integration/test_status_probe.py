"""``manage.py runfcgi status``: the probe against real servers, and each way it ends.

Exit statuses: 0 the status page answered, 1 a bad option, 2 nothing to connect to, 3
no answer in time, 4 an answer that is not runfcgi's, 5 alive without a status page.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.doc_commands import DocCommand, commands
from tests.support.net import free_port
from tests.support.paths import TESTPROJECT
from tests.support.processes import wait_for
from tests.support.runner import Run, Runner

SERVERS = {
    "fcgi": ["protocol=fcgi"],
    "scgi": ["protocol=scgi"],
    "ajp": ["protocol=ajp"],
}


def probe(runner: Runner, *words: str, timeout: float = 30) -> Run:
    """``manage.py runfcgi status WORDS``, run to its end."""
    return runner.run("status", *words, timeout=timeout)


def bind_words(runner: Runner, protocol: str) -> list[str]:
    if protocol == "ajp":
        return ["host=127.0.0.1", f"port={free_port()}"]
    return [f"socket={runner.tmp / 'app.sock'}"]


def serve(runner: Runner, *words: str) -> Run:
    values = dict(word.split("=", 1) for word in words)
    if "socket" in values:
        address: str | tuple[str, int] = values["socket"]
    else:
        address = (values["host"], int(values["port"]))
    return runner.serve("daemonize=false", *words, address=address)


@pytest.mark.parametrize("protocol", ["fcgi", "scgi", "ajp"])
@pytest.mark.parametrize("method", ["prefork", "threaded"])
def test_the_servers_own_options_probe_it(runner: Runner, protocol: str, method: str) -> None:
    """The server's command line with ``status`` in front prints its status page."""
    words = [*SERVERS[protocol], f"method={method}", *bind_words(runner, protocol)]
    words += ["status=/status", "maxchildren=4"]
    serve(runner, *words)
    text = probe(runner, *words)
    assert text.proc.returncode == 0, text.describe()
    lines = text.stdout.splitlines()
    assert lines[1] == f"process manager:      {method}"
    assert f"protocol:             {protocol}" in lines
    assert text.stderr == ""
    as_json = probe(runner, *words, "--json", "--full")
    assert as_json.proc.returncode == 0, as_json.describe()
    data = json.loads(as_json.stdout)
    assert data["maxchildren"] == 4
    assert data["process_manager"] == method
    assert any(p["request_uri"] == "/status?json&full" for p in data["processes"])


def test_the_pidfile_finds_the_server_and_its_options(runner: Runner) -> None:
    """pidfile= alone: the server's socket from the process, status= from its command line."""
    pidfile = runner.tmp / "app.pid"
    sock = runner.tmp / "app.sock"
    # A relative socket path on the server's command line, started from another directory.
    workdir = runner.tmp / "elsewhere"
    workdir.mkdir()
    run = runner.start(
        "daemonize=false", "socket=../app.sock", f"pidfile={pidfile}", "status=/st", cwd=workdir
    )
    assert wait_for(pidfile.exists, 20), run.describe()
    assert wait_for(sock.exists, 20), run.describe()
    found = probe(runner, f"pidfile={pidfile}", "--json")
    assert found.proc.returncode == 0, found.describe()
    pool = json.loads(found.stdout)["pool"]
    assert pool.startswith("unix:")
    assert os.path.samefile(pool[len("unix:") :], sock)


@pytest.mark.parametrize(
    ("protocol", "alive"),
    [
        ("fcgi", "FCGI_GET_VALUES answered (FCGI_MAX_CONNS="),
        ("ajp", "CPing answered with CPong"),
        ("scgi", "the connection was accepted (SCGI has no liveness message"),
    ],
)
def test_without_a_status_page_it_reports_liveness(
    runner: Runner, protocol: str, alive: str
) -> None:
    words = [*SERVERS[protocol], *bind_words(runner, protocol)]
    serve(runner, *words)
    result = probe(runner, *words)
    assert result.proc.returncode == 5, result.describe()
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert " is alive: " + alive in line
    assert line.endswith(
        "but no status= given: start the server with status=PATH and give the probe the same."
    )
    # A status path the server does not have: Django answers it (404).
    wrong = probe(runner, *words, "status=/status")
    assert wrong.proc.returncode == 5, wrong.describe()
    assert "/status?json" not in wrong.stderr
    assert "/status answered 404 (text/html; charset=utf-8), not runfcgi's status page" in (
        wrong.stderr
    )


def test_ping_is_the_liveness_check_when_given(runner: Runner) -> None:
    words = ["protocol=scgi", *bind_words(runner, "scgi"), "ping=/ping"]
    serve(runner, *words)
    result = probe(runner, *words)
    assert result.proc.returncode == 5, result.describe()
    assert "is alive: /ping answered pong; but no status= given" in result.stderr


def test_nothing_listening(runner: Runner) -> None:
    refused = probe(runner, "protocol=ajp", "host=127.0.0.1", f"port={free_port()}")
    assert refused.proc.returncode == 2
    assert refused.stderr.strip().endswith(": connection refused.")
    missing = probe(runner, f"socket={runner.tmp / 'none.sock'}", "status=/status")
    assert missing.proc.returncode == 2
    assert missing.stderr.strip() == f"FastCGI on unix:{runner.tmp / 'none.sock'}: no such socket."


def test_a_pidfile_without_a_server(runner: Runner) -> None:
    pidfile = runner.tmp / "app.pid"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    pidfile.write_text(f"{gone.pid}\n")
    stale = probe(runner, f"pidfile={pidfile}")
    assert stale.proc.returncode == 2
    assert (
        stale.stderr.strip()
        == f"No server is running as PID {gone.pid} (pidfile {str(pidfile)!r})."
    )
    # This test's own process is alive, and is no runfcgi.
    pidfile.write_text(f"{os.getpid()}\n")
    other = probe(runner, f"pidfile={pidfile}")
    assert other.proc.returncode == 4
    assert other.stderr.strip() == (
        f"PID {os.getpid()} (pidfile {str(pidfile)!r}) is not a runfcgi server."
    )
    absent = probe(runner, f"pidfile={runner.tmp / 'none.pid'}")
    assert absent.proc.returncode == 2
    assert "no server running" in absent.stderr


@contextmanager
def listener(answer: bytes | None) -> Iterator[int]:
    """A TCP port whose program accepts and sends `answer` then closes; None: it never
    accepts (connections wait in its queue, unanswered)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        stop = threading.Event()

        def serve() -> None:
            sock.settimeout(0.1)
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.recv(65536)
                    assert answer is not None
                    conn.sendall(answer)

        thread = threading.Thread(target=serve, daemon=True)
        if answer is not None:
            thread.start()
        try:
            yield sock.getsockname()[1]
        finally:
            stop.set()
            if answer is not None:
                thread.join(5)


def test_no_answer_in_time(runner: Runner) -> None:
    with listener(None) as port:
        late = probe(runner, "host=127.0.0.1", f"port={port}", "status=/s", "--timeout", "1")
    assert late.proc.returncode == 3, late.describe()
    assert late.stderr.strip() == (
        f"FastCGI on 127.0.0.1:{port}: no answer within 1 s while waiting for the answer."
    )


@pytest.mark.parametrize("protocol", ["fcgi", "scgi", "ajp"])
def test_an_answer_that_is_not_runfcgis(runner: Runner, protocol: str) -> None:
    """An HTTP server where the probe expected this protocol."""
    with listener(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") as port:
        other = probe(
            runner, f"protocol={protocol}", "host=127.0.0.1", f"port={port}", "status=/s"
        )
    assert other.proc.returncode == 4, other.describe()
    [line] = other.stderr.splitlines()
    assert line.startswith(
        f"{ {'fcgi': 'FastCGI', 'scgi': 'SCGI', 'ajp': 'AJP'}[protocol] } on 127.0.0.1:{port}: "
    )


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([], "runfcgi status needs the server's address: host= and port=, socket=, or pidfile="),
        (["socket=/tmp/x.sock", "--timeout", "0"], "--timeout must be above 0 seconds."),
        (["socket=/tmp/x.sock", "--timeout", "soon"], "--timeout='soon' is not a number of"),
        (["socket=/tmp/x.sock", "status=x"], "status='x' is not a URL path"),
        (["socket=/tmp/x.sock", "host=::1"], "Use either socket= or host=/port=, not both."),
        (["bogus=1"], "Unknown option 'bogus'."),
    ],
)
def test_bad_options_are_one_line(runner: Runner, words: list[str], message: str) -> None:
    result = probe(runner, *words)
    assert result.proc.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"CommandError: {message}")


def test_probe_words_are_the_probes_own(runner: Runner) -> None:
    result = runner.run("socket=/tmp/x.sock", "--full")
    assert result.proc.returncode == 1
    assert result.stderr.strip() == "CommandError: --full applies to 'runfcgi status' only."


def test_help_lists_the_probe(runner: Runner) -> None:
    result = subprocess.run(
        [sys.executable, str(TESTPROJECT / "manage.py"), "runfcgi", "--help"],
        capture_output=True,
        text=True,
        env=runner.env(),
        timeout=30,
        check=True,
    )
    assert "With status: one entry per worker (?full)." in result.stdout
    assert "--timeout SECONDS" in result.stdout


DOCS = Path(__file__).resolve().parents[2] / "docs"
DOC_RUN = "/run/mysite/"


def test_docs_show_the_exit_statuses() -> None:
    page = (DOCS / "status.rst").read_text()
    for code in range(6):
        assert f"``{code}``" in page


def documented_server(runner: Runner) -> tuple[Run, list[str]]:
    """The page's own command that turns the status page on, with its paths in the
    test's directory, in the foreground."""
    [start] = [
        c
        for c in commands((DOCS / "status.rst",))
        if "status=/status" in c.words and "ping=/ping" in c.words
    ]
    words = [word.replace(DOC_RUN, f"{runner.tmp}/") for word in start.words]
    run = runner.serve(*words, "daemonize=false", address=str(runner.tmp / "fcgi.sock"))
    return run, words


PROBES = commands((DOCS / "status.rst",), probes=True)


def test_the_page_shows_probes() -> None:
    assert len(PROBES) >= 2
    assert any("pidfile=" in command.text for command in PROBES)


@pytest.mark.parametrize("command", PROBES, ids=lambda command: command.where)
def test_documented_probe_runs_as_written(runner: Runner, command: DocCommand) -> None:
    documented_server(runner)
    words = [word.replace(DOC_RUN, f"{runner.tmp}/") for word in command.words]
    result = runner.run(*words)
    assert result.proc.returncode == 0, f"{command.where}\n{result.describe()}"
    if "--json" in words:
        assert json.loads(result.stdout)["pool"] == f"unix:{runner.tmp / 'fcgi.sock'}"
    else:
        assert result.stdout.startswith(f"pool:                 unix:{runner.tmp}/fcgi.sock\n")


def unit(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DOCS / "configs" / name).read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def documented_argv(line: str, runner: Runner) -> list[str]:
    """A unit's command line, run here: the venv's python is this one, the project the
    test project, /run/mysite/ the test's directory."""
    argv = shlex.split(line.replace(DOC_RUN, f"{runner.tmp}/"))
    assert argv[:3] == ["/srv/mysite/venv/bin/python", "manage.py", "runfcgi"], argv
    return [sys.executable, str(TESTPROJECT / "manage.py"), *argv[2:]]


def test_documented_systemd_probes(runner: Runner) -> None:
    """The drop-in's ExecStart serves with a status page and its ExecStartPost passes;
    the health check passes while the server runs, and fails with 2 once it is gone."""
    dropin = unit("mysite-status.conf")
    assert dropin["ExecStart"][0] == ""  # resets mysite.service's own command
    serve_argv = documented_argv(dropin["ExecStart"][1], runner)
    sock = runner.tmp / "fcgi.sock"
    run = runner.serve(
        command=[*serve_argv, f"socket={sock}", "daemonize=false"], address=str(sock)
    )
    health = unit("mysite-health.service")
    for line in (dropin["ExecStartPost"][0], health["ExecStart"][0]):
        result = subprocess.run(
            documented_argv(line, runner),
            capture_output=True,
            text=True,
            env=runner.env(),
            cwd=TESTPROJECT,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, (line, result.stdout, result.stderr)
        assert result.stdout.startswith(f"pool:                 unix:{sock}\n")
    run.signal(signal.SIGTERM)
    run.wait(30)
    gone = subprocess.run(
        documented_argv(health["ExecStart"][0], runner),
        capture_output=True,
        text=True,
        env=runner.env(),
        cwd=TESTPROJECT,
        timeout=60,
        check=False,
    )
    assert gone.returncode == 2, gone.stderr
    # The health check's ExecStopPost restarts the site for 2, 3 and 4, not for 5.
    [stop_post] = health["ExecStopPost"]
    assert "2|3|4)" in stop_post
    assert "$$EXIT_STATUS" in stop_post


def test_documented_units_pass_systemd_analyze_verify(short_tmp: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd).")
    configs = DOCS / "configs"
    service = (configs / "mysite.service").read_text() + (
        configs / "mysite-status.conf"
    ).read_text()
    files = {
        "mysite.service": service,
        "mysite.socket": (configs / "mysite.socket").read_text(),
        "mysite-health.service": (configs / "mysite-health.service").read_text(),
        "mysite-health.timer": (configs / "mysite-health.timer").read_text(),
    }
    for name, text in files.items():
        (short_tmp / name).write_text(text.replace("/srv/mysite/venv/bin/python", sys.executable))
    result = subprocess.run(
        [analyze, "verify", *(str(short_tmp / name) for name in files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.strip() == "", output


def test_ajp_with_a_secret(runner: Runner) -> None:
    """The probe sends the secret= of the server's options, as Apache's ProxyPass does."""
    words = ["protocol=ajp", *bind_words(runner, "ajp"), "status=/status"]
    serve(runner, *words, "secret=s3cret")
    answered = probe(runner, *words, "secret=s3cret", "--json")
    assert answered.proc.returncode == 0, answered.describe()
    refused = probe(runner, *words)
    assert refused.proc.returncode == 5, refused.describe()
    assert refused.stderr.strip().endswith(
        "is alive: CPing answered with CPong; but /status answered 403: the server wants "
        "a secret; give the probe the server's secret=."
    )


def test_the_wrong_protocol(runner: Runner) -> None:
    """A FastCGI server probed as SCGI: it closes on the netstring, which is no answer."""
    words = [*bind_words(runner, "fcgi"), "status=/status"]
    serve(runner, *words)
    wrong = probe(runner, *words, "protocol=scgi")
    assert wrong.proc.returncode == 4, wrong.describe()
    assert wrong.stderr.strip() == (
        f"SCGI on unix:{runner.tmp / 'app.sock'}: the connection was closed without an "
        "answer (not a runfcgi server of this protocol, or this client is not allowed: "
        "allow=)."
    )
