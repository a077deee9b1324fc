"""The status page's formats and its WSGI routing, on known figures."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as prometheus_text

from django_runfcgi.protocols.wsgi import Environ
from django_runfcgi.status import formats
from django_runfcgi.status.figures import Counts, History, PoolFigures, WorkerFigures
from django_runfcgi.status.page import Status, StatusPage, wanted
from django_runfcgi.workers import Limits

WORKER = WorkerFigures(
    pid=4242,
    state="Idle",
    start_time=1_700_000_000.0,
    start_since=60,
    requests=7,
    request_duration=0.25,
    request_method="POST",
    request_uri='/a?b=<c>&d="e"',
    content_length=12,
    last_request_cpu=0.05,
    last_request_memory=50 << 20,
)
FIGURES = PoolFigures(
    pool="unix:/run/mysite/fcgi.sock",
    process_manager="prefork",
    start_time=1_700_000_000.5,
    start_since=60,
    accepted_conn=10,
    listen_queue=1,
    max_listen_queue=3,
    listen_queue_len=128,
    idle_processes=1,
    active_processes=2,
    total_processes=3,
    max_active_processes=3,
    max_children_reached=2,
    slow_requests=0,
    protocol="fcgi",
    version="0.1.0",
    reloads=1,
    recycled_maxrequests=4,
    recycled_maxmemory=1,
    limits={"maxchildren": 3, "minspare": 1, "requesttimeout": 2.5},
    processes=(WORKER,),
)


def test_text_is_phpfpms_layout() -> None:
    lines = formats.text(FIGURES).decode().splitlines()
    assert lines[:3] == [
        "pool:                 unix:/run/mysite/fcgi.sock",
        "process manager:      prefork",
        lines[2],
    ]
    assert lines[2].startswith("start time:           14/Nov/2023:")
    assert "accepted conn:        10" in lines
    assert "max children reached: 2" in lines
    assert "recycled maxrequests: 4" in lines
    assert "recycled maxmemory:   1" in lines
    assert "requesttimeout:       2.5" in lines
    worker = lines[lines.index("*" * 24) + 1 :]
    assert worker[0] == "pid:                  4242"
    assert "request duration:     250000" in worker  # microseconds, as PHP-FPM
    assert 'request URI:          /a?b=<c>&d="e"' in worker
    assert "last request cpu:     20.00" in worker  # percent of the request's duration


def test_json_uses_underscores_and_phpfpms_units() -> None:
    data = json.loads(formats.as_json(FIGURES))
    assert data["accepted_conn"] == 10
    assert data["start_time"] == 1_700_000_000
    assert data["maxchildren"] == 3
    [worker] = data["processes"]
    assert worker["request_duration"] == 250000
    assert worker["last_request_cpu"] == 20.0
    assert worker["request_method"] == "POST"
    unknown = json.loads(formats.as_json(_without_queue()))
    assert unknown["listen_queue"] is None
    assert "processes" not in unknown


def _without_queue() -> PoolFigures:
    values = dict(FIGURES.__dict__, listen_queue=None, listen_queue_len=None, processes=None)
    return PoolFigures(**values)


def test_html_escapes_what_came_from_the_wire() -> None:
    page = formats.as_html(FIGURES).decode()
    assert "<td>/a?b=&lt;c&gt;&amp;d=&quot;e&quot;</td>" in page
    assert "<th>accepted conn</th><td>10</td>" in page


def test_openmetrics_parses_with_both_prometheus_parsers() -> None:
    text = formats.openmetrics(FIGURES).decode()
    assert text.endswith("# EOF\n")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["runfcgi_accepted_conn"].samples[0].value == 10
    assert families["runfcgi_max_children_reached"].type == "counter"
    assert families["runfcgi_start_time_seconds"].unit == "seconds"
    recycled = families["runfcgi_recycled_workers"].samples
    assert {s.labels["reason"]: s.value for s in recycled} == {"maxrequests": 4, "maxmemory": 1}
    durations = families["runfcgi_worker_request_duration_seconds"].samples
    assert [(s.labels, s.value) for s in durations] == [({"pid": "4242"}, 0.25)]
    # The classic Prometheus text parser (a scraper without OpenMetrics) reads it too.
    classic = {family.name for family in prometheus_text(text)}
    assert "runfcgi_listen_queue" in classic
    # An unknown listen queue has no sample rather than a made-up 0.
    unknown = {
        f.name: f
        for f in text_string_to_metric_families(formats.openmetrics(_without_queue()).decode())
    }
    assert unknown["runfcgi_listen_queue"].samples == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ("text", False)),
        ("full", ("text", True)),
        ("json", ("json", False)),
        ("full&json", ("json", True)),
        ("json&full", ("json", True)),
        ("html&full=1", ("html", True)),
        ("openmetrics", ("openmetrics", False)),
        ("xml", ("text", False)),
    ],
)
def test_query_words_as_phpfpm(query: str, expected: tuple[str, bool]) -> None:
    assert wanted(query) == expected


class FixedSource:
    def status_counts(self) -> Counts:
        return Counts(
            idle=1, total=2, accepted=5, slow=0, max_active=2, max_children_reached=0,
            max_listen_queue=0,
        )  # fmt: skip

    def workers(self) -> list[WorkerFigures]:
        return [WORKER]


def test_other_paths_get_the_applications_own_response_object() -> None:
    """The application's iterable reaches the protocol as it is: a one-item list keeps
    its Content-Length and single send (tests/test_compat.py)."""
    returned: list[bytes] = [b"hello"]

    def application(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        return returned

    status = Status(
        status_path="/status",
        ping_path="/ping",
        protocol="fcgi",
        process_manager="prefork",
        limits=Limits(),
        history=History(start_time=1_700_000_000.0),
    )
    page = StatusPage(application, status)
    seen: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen.append(status)

    environ = {"SCRIPT_NAME": "", "PATH_INFO": "/status/", "QUERY_STRING": ""}
    assert page(environ, start_response) is returned
    # Before the process model serves, the page says so instead of inventing figures.
    environ["PATH_INFO"] = "/status"
    assert b"not available" in b"".join(page(environ, start_response))
    assert seen[-1] == "503 Service Unavailable"
    environ["PATH_INFO"] = "/ping"
    assert page(environ, start_response) == [b"pong"]
    # SCRIPT_NAME and PATH_INFO joined: a site mounted at /app has its page at /app/status.
    environ.update(SCRIPT_NAME="/app", PATH_INFO="/status")
    assert page(environ, start_response) is returned


def test_figures_join_the_pool_the_queue_and_the_history() -> None:
    status = Status(
        status_path="/status",
        ping_path=None,
        protocol="scgi",
        process_manager="threaded",
        limits=Limits(maxchildren=7),
        history=History(start_time=1_700_000_000.0, reloads=2),
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        port = sock.getsockname()[1]
        status.serving(sock, FixedSource())
        with socket.create_connection(sock.getsockname()):
            figures = status.figures(full=True)
    assert figures is not None
    assert figures.pool == f"127.0.0.1:{port}"
    assert (figures.listen_queue, figures.listen_queue_len) == (1, 5)
    assert figures.max_listen_queue == 1
    assert (figures.idle_processes, figures.active_processes) == (1, 1)
    assert figures.reloads == 2
    assert figures.limits["maxchildren"] == 7
    assert figures.processes == (WORKER,)
    status.stopped()
    assert status.figures(full=False) is None
    after = status.history_after_reload()
    assert (after.reloads, after.accepted_conn, after.start_time) == (3, 5, 1_700_000_000.0)


def _documented_sample(page: str, first: str) -> str:
    """The first code block of docs/status.rst that begins with `first`."""
    for block in page.split(".. code-block:: ")[1:]:
        lines = []
        for line in block.split("\n\n", 1)[1].splitlines():
            if line and not line.startswith("   "):
                break
            lines.append(line[3:])
        text = "\n".join(lines).strip()
        if text.startswith(first):
            return text
    raise AssertionError(f"docs/status.rst shows no sample starting {first!r}")


def test_the_documented_samples_show_every_field_in_the_pages_order() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "status.rst").read_text()
    status = Status(
        status_path="/status",
        ping_path=None,
        protocol="fcgi",
        process_manager="prefork",
        limits=Limits(),
    )
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("\0runfcgi-status-formats-test")
        sock.listen(1)
        status.serving(sock, FixedSource())
        figures = status.figures(full=False)
    assert figures is not None
    served = formats.text(figures).decode().splitlines()
    shown = _documented_sample(page, "pool:").split("\n\n")[0].splitlines()
    assert [line.partition(":")[0] for line in shown] == [
        line.partition(":")[0] for line in served
    ]
    documented = json.loads(_documented_sample(page, '{"pool"'))
    assert list(documented) == list(json.loads(formats.as_json(figures)))
