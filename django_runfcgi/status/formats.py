"""The status page's formats: PHP-FPM's plain text, JSON and HTML, and OpenMetrics.

Text and HTML label the fields as PHP-FPM does ("accepted conn"), JSON with underscores
("accepted_conn"), each with PHP-FPM's units: a request's duration in microseconds,
its processor time as a percentage of that duration, memory in bytes. OpenMetrics, for
Prometheus, names each metric ``runfcgi_`` and the field, in the base units Prometheus
expects (seconds, bytes), with a HELP and a TYPE line each.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from django_runfcgi.status.figures import STATE_NAMES, PoolFigures, WorkerFigures

_POOL_FIELDS = (
    "pool",
    "process_manager",
    "start_time",
    "start_since",
    "accepted_conn",
    "listen_queue",
    "max_listen_queue",
    "listen_queue_len",
    "idle_processes",
    "active_processes",
    "total_processes",
    "max_active_processes",
    "max_children_reached",
    "slow_requests",
    "protocol",
    "version",
    "reloads",
    "recycled_maxrequests",
    "recycled_maxmemory",
)
_WORKER_FIELDS = (
    "pid",
    "state",
    "start_time",
    "start_since",
    "requests",
    "request_duration",
    "request_method",
    "request_uri",
    "content_length",
    "last_request_cpu",
    "last_request_memory",
)
_LABELS = {"request_uri": "request URI"}


def _label(name: str) -> str:
    return _LABELS.get(name, name.replace("_", " "))


def _pool_values(figures: PoolFigures) -> dict[str, Any]:
    """The pool's fields in PHP-FPM's units, the limits after them."""
    values: dict[str, Any] = {name: getattr(figures, name) for name in _POOL_FIELDS}
    values["start_time"] = int(figures.start_time)
    values.update(figures.limits)
    return values


def _worker_values(worker: WorkerFigures) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(worker, name) for name in _WORKER_FIELDS}
    values["start_time"] = int(worker.start_time)
    values["request_duration"] = round(worker.request_duration * 1e6)
    values["last_request_cpu"] = round(worker.last_request_cpu_percent, 2)
    return values


def _phpfpm_time(when: float) -> str:
    """PHP-FPM's start time: 21/Sep/2025:10:00:00 +0200."""
    return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(when))


def _text_value(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name == "start_time":
        return _phpfpm_time(value)
    if isinstance(value, float):
        return f"{value:.2f}" if name == "last_request_cpu" else f"{value:g}"
    return str(value)


def _text_lines(values: dict[str, Any]) -> Iterator[str]:
    for name, value in values.items():
        yield f"{_label(name) + ':':<22}{_text_value(name, value)}"


def text(figures: PoolFigures) -> bytes:
    lines = list(_text_lines(_pool_values(figures)))
    for worker in figures.processes or ():
        lines += ["", "*" * 24, *_text_lines(_worker_values(worker))]
    return ("\n".join(lines) + "\n").encode("utf-8", "replace")


def as_json(figures: PoolFigures) -> bytes:
    values = _pool_values(figures)
    if figures.processes is not None:
        values["processes"] = [_worker_values(worker) for worker in figures.processes]
    return json.dumps(values).encode()


def as_html(figures: PoolFigures) -> bytes:
    def row(name: str, value: Any, tag: str = "td") -> str:
        shown = html.escape(_text_value(name, value))
        return f"<tr><th>{html.escape(_label(name))}</th><{tag}>{shown}</{tag}></tr>"

    pool = "\n".join(row(name, value) for name, value in _pool_values(figures).items())
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>runfcgi status</title></head><body>',
        "<h1>runfcgi status</h1>",
        f'<table border="1">\n{pool}\n</table>',
    ]
    if figures.processes is not None:
        head = "".join(f"<th>{html.escape(_label(name))}</th>" for name in _WORKER_FIELDS)
        rows = []
        for worker in figures.processes:
            cells = "".join(
                f"<td>{html.escape(_text_value(name, value))}</td>"
                for name, value in _worker_values(worker).items()
            )
            rows.append(f"<tr>{cells}</tr>")
        body = "\n".join(rows)
        parts.append(f'<h2>Workers</h2>\n<table border="1">\n<tr>{head}</tr>\n{body}\n</table>')
    parts.append("</body></html>\n")
    return "\n".join(parts).encode("utf-8", "replace")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return "NaN" if math.isnan(value) else repr(float(value))


class _Metrics:
    """OpenMetrics text: one family after another, each with its HELP and TYPE."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: list[tuple[dict[str, str], float]],
        unit: str | None = None,
    ) -> None:
        full = f"runfcgi_{name}"
        self.lines.append(f"# TYPE {full} {kind}")
        if unit is not None:
            self.lines.append(f"# UNIT {full} {unit}")
        self.lines.append(f"# HELP {full} {help_text}")
        suffix = {"counter": "_total", "info": "_info"}.get(kind, "")
        for labels, value in samples:
            shown = ",".join(f'{key}="{_escape_label(item)}"' for key, item in labels.items())
            self.lines.append(
                f"{full}{suffix}{'{' + shown + '}' if shown else ''} {_number(value)}"
            )

    def one(
        self, name: str, kind: str, help_text: str, value: float | None, unit: str | None = None
    ) -> None:
        self.family(name, kind, help_text, [] if value is None else [({}, value)], unit)


def openmetrics(figures: PoolFigures) -> bytes:
    out = _Metrics()
    labels = {
        "pool": figures.pool,
        "process_manager": figures.process_manager,
        "protocol": figures.protocol,
        "version": figures.version,
    }
    out.family("server", "info", "The server: what it serves and how.", [(labels, 1)])
    out.one(
        "start_time_seconds",
        "gauge",
        "When the server started (Unix time); a reload keeps it.",
        figures.start_time,
        "seconds",
    )
    out.one("accepted_conn", "counter", "Connections accepted.", figures.accepted_conn)
    out.one(
        "listen_queue",
        "gauge",
        "Connections waiting in the listen queue for a worker.",
        figures.listen_queue,
    )
    out.one(
        "max_listen_queue",
        "gauge",
        "The most connections seen waiting in the listen queue.",
        figures.max_listen_queue,
    )
    out.one(
        "listen_queue_len",
        "gauge",
        "How many connections the listen queue holds (the backlog).",
        figures.listen_queue_len,
    )
    out.one("idle_processes", "gauge", "Workers waiting for a connection.", figures.idle_processes)
    out.one("active_processes", "gauge", "Workers serving a connection.", figures.active_processes)
    out.one("total_processes", "gauge", "Workers alive.", figures.total_processes)
    out.one(
        "max_active_processes",
        "gauge",
        "The most workers serving connections at once.",
        figures.max_active_processes,
    )
    out.one(
        "max_children_reached",
        "counter",
        "Times every worker the pool may have was busy while connections waited.",
        figures.max_children_reached,
    )
    out.one(
        "slow_requests",
        "counter",
        "Requests that ran longer than the slow-request limit.",
        figures.slow_requests,
    )
    out.one("reloads", "counter", "Reloads (HUP) since the server started.", figures.reloads)
    out.family(
        "recycled_workers",
        "counter",
        "Prefork workers replaced after maxrequests requests or above maxmemory.",
        [
            ({"reason": "maxrequests"}, figures.recycled_maxrequests),
            ({"reason": "maxmemory"}, figures.recycled_maxmemory),
        ],
    )
    out.family(
        "limit",
        "gauge",
        "The pool's limits as configured (options of the same names).",
        [({"limit": name}, value) for name, value in figures.limits.items()],
    )
    if figures.processes is not None:
        _worker_metrics(out, figures.processes)
    out.lines.append("# EOF")
    return ("\n".join(out.lines) + "\n").encode("utf-8", "replace")


def _worker_metrics(out: _Metrics, workers: tuple[WorkerFigures, ...]) -> None:
    def each(value: Callable[[WorkerFigures], float]) -> list[tuple[dict[str, str], float]]:
        return [({"pid": str(worker.pid)}, value(worker)) for worker in workers]

    out.family(
        "worker_state",
        "gauge",
        "1 for each worker's state.",
        [
            ({"pid": str(worker.pid), "state": state}, int(worker.state == state))
            for worker in workers
            for state in STATE_NAMES
        ],
    )
    out.family(
        "worker_start_time_seconds",
        "gauge",
        "When the worker started (Unix time).",
        each(lambda worker: worker.start_time),
        "seconds",
    )
    out.family(
        "worker_requests", "counter", "Requests the worker served.", each(lambda w: w.requests)
    )
    out.family(
        "worker_request_duration_seconds",
        "gauge",
        "Duration of the request in progress, or of the last one.",
        each(lambda worker: worker.request_duration),
        "seconds",
    )
    out.family(
        "worker_content_length_bytes",
        "gauge",
        "Request body length of the request in progress, or of the last one.",
        each(lambda worker: worker.content_length),
        "bytes",
    )
    out.family(
        "worker_last_request_cpu_seconds",
        "gauge",
        "Processor time of the worker's last finished request.",
        each(lambda worker: worker.last_request_cpu),
        "seconds",
    )
    out.family(
        "worker_last_request_memory_bytes",
        "gauge",
        "Peak resident memory of the worker's process at the end of its last request.",
        each(lambda worker: worker.last_request_memory),
        "bytes",
    )


RENDERERS: dict[str, tuple[str, Callable[[PoolFigures], bytes]]] = {
    "text": ("text/plain; charset=utf-8", text),
    "json": ("application/json", as_json),
    "html": ("text/html; charset=utf-8", as_html),
    "openmetrics": ("application/openmetrics-text; version=1.0.0; charset=utf-8", openmetrics),
}
"""Each format by its query-string word: the content type and the rendering."""
