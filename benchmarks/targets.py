"""Which cells the benchmark measures, the table that compares them, and the targets.

Each Comparison pits one or more runfcgi servers against a baseline at a fixed set of
cells (view, connections). The cells of all comparisons are what a run measures by
default, each server only where a comparison needs it, which keeps a full run short;
the numbered comparisons carry a target that the summary after the table says is met
or not, cell by cell.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from benchmarks.wrk import SLOW_MS, Cell

Summary = dict[str, float | int]
CellKey = tuple[str, int]

HELLO = (("hello", 1), ("hello", 16), ("hello", 64))
# The cost of the server itself, then 1 MB answers and 1 MB request bodies under load.
PROTOCOL_CELLS = (*HELLO, ("big", 16), ("big", 64), ("post", 16), ("post", 64))
LOADED_HELLO = (("hello", 16), ("hello", 64))
VIEW_ORDER = ("hello", "sleep", "big", "post")


@dataclass(frozen=True)
class Target:
    """What each subject must show against the baseline in every cell, with no errors."""

    rps: float
    """Requests per second at least this times the baseline's."""
    p99: float | None = None
    """99th percentile latency at most this times the baseline's."""
    max_ms: float | None = None
    """The slowest request of all runs faster than this."""

    def words(self) -> str:
        parts = [f"req/s >= {self.rps:.2f}x"]
        if self.p99 is not None:
            parts.append(f"p99 <= {self.p99:.2f}x")
        if self.max_ms is not None:
            parts.append(f"max < {self.max_ms / 1000:g} s")
        return ", ".join(parts)

    def misses(self, subject: Summary, baseline: Summary) -> list[str]:
        """What the subject falls short of in one cell; empty when it meets the target."""
        missed = []
        if not float(subject["rps"]) >= self.rps * float(baseline["rps"]):
            missed.append("req/s")
        if self.p99 is not None and not float(subject["p99_ms"]) <= self.p99 * float(
            baseline["p99_ms"]
        ):
            missed.append("p99")
        if self.max_ms is not None and not float(subject["max_ms"]) < self.max_ms:
            missed.append("max")
        if subject["errors"]:
            missed.append("errors")
        return missed


@dataclass(frozen=True)
class Comparison:
    title: str
    subjects: tuple[str, ...]
    baseline: str
    cells: tuple[CellKey, ...]
    target: Target | None = None
    number: int | None = None
    """The target's number in the summary, for the comparisons that have one."""

    @property
    def servers(self) -> tuple[str, ...]:
        return (*self.subjects, self.baseline)


COMPARISONS = (
    Comparison(
        "FastCGI: runfcgi prefork against uWSGI's FastCGI mode",
        ("runfcgi-fcgi-prefork",),
        "uwsgi-fastcgi",
        PROTOCOL_CELLS,
        Target(rps=1.0, p99=1.0),
        1,
    ),
    Comparison(
        "SCGI: runfcgi prefork against uWSGI's SCGI mode",
        ("runfcgi-scgi-prefork",),
        "uwsgi-scgi",
        PROTOCOL_CELLS,
        Target(rps=1.0),
        2,
    ),
    Comparison(
        "One process: runfcgi threaded against one prefork worker",
        ("runfcgi-fcgi-threaded",),
        "runfcgi-fcgi-prefork-1",
        HELLO,
        Target(rps=0.9),
        3,
    ),
    Comparison(
        "Keep-conn: fastcgi_keep_conn on, nginx keepalive 1 and 8 (below and above the"
        " 2 workers), against a new connection per request",
        ("runfcgi-fcgi-keepconn-1", "runfcgi-fcgi-keepconn-8"),
        "runfcgi-fcgi-prefork",
        LOADED_HELLO,
        Target(rps=1.0, p99=1.5, max_ms=SLOW_MS),
        4,
    ),
    Comparison(
        "gunicorn (sync workers behind proxy_pass)",
        ("runfcgi-fcgi-prefork",),
        "gunicorn-sync",
        PROTOCOL_CELLS,
    ),
    Comparison(
        "uWSGI's own protocol (uwsgi_pass)",
        ("runfcgi-fcgi-prefork",),
        "uwsgi-native",
        PROTOCOL_CELLS,
    ),
)
TARGETED = tuple(c for c in COMPARISONS if c.target)
# What a run measures unless told otherwise: the servers the targets compare.
DEFAULT_SERVERS = tuple(dict.fromkeys(name for c in TARGETED for name in c.servers))
DEFAULT_VIEWS = tuple(
    v for v in VIEW_ORDER if any(v == cell[0] for c in TARGETED for cell in c.cells)
)


def plan(
    servers: Iterable[str], views: Iterable[str], levels: Iterable[int], *, grid: bool
) -> set[tuple[str, str, int]]:
    """(server, view, connections) to measure: with ``grid``, every combination;
    otherwise the cells that a comparison among the chosen servers needs."""
    servers, views, levels = list(servers), list(views), list(levels)
    if grid:
        return {(s, v, n) for s in servers for v in views for n in levels}
    return {
        (server, view, level)
        for comparison in COMPARISONS
        for server in comparison.servers
        for view, level in comparison.cells
        if server in servers and view in views and level in levels
    }


def _order(key: CellKey) -> tuple[int, int]:
    return VIEW_ORDER.index(key[0]), key[1]


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base and not math.isnan(value / base) else "-"


def _slow(share: float) -> str:
    if share == 0:
        return "0"
    return "<0.01" if share < 0.01 else f"{share:.2f}"


HEAD = (
    f"{'server':24} {'view':5} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    f" {'max ms':>8} {'>2s %':>6} {'errors':>6} {'RSS MB':>7} {'/base req/s':>11} {'/base p99':>9}"
)


def _row(cell: Cell, base: Summary | None) -> str:
    s = cell.summary()
    ratios = ""
    if base is not None:
        ratios = (
            f" {_ratio(float(s['rps']), float(base['rps'])):>11}"
            f" {_ratio(float(s['p99_ms']), float(base['p99_ms'])):>9}"
        )
    return (
        f"{cell.server:24} {cell.view:5} {cell.connections:>5} {s['rps']:>9.1f}"
        f" {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['max_ms']:>8.1f}"
        f" {_slow(float(s['slow_pct'])):>6} {s['errors']:>6} {s['rss_mb']:>7.1f}{ratios}"
    )


def table(cells: list[Cell]) -> str:
    """One section per comparison that was measured, each cell's subjects with their
    ratios to the baseline, which follows them; then the cells no comparison shows."""
    found = {(c.server, c.view, c.connections): c for c in cells}
    shown: set[tuple[str, str, int]] = set()
    sections = []
    for comparison in COMPARISONS:
        keys = {(view, n) for (server, view, n) in found if server in comparison.subjects}
        if not any((comparison.baseline, *key) in found for key in keys):
            continue
        lines = [
            f"{comparison.title}; /base: ratio to {comparison.baseline}",
            HEAD,
            "-" * len(HEAD),
        ]
        for number, key in enumerate(sorted(keys, key=_order)):
            members = [found.get((server, *key)) for server in comparison.servers]
            base = members[-1].summary() if members[-1] else None
            if number:
                lines.append("")
            for cell in members:
                if cell is not None:
                    lines.append(_row(cell, None if cell is members[-1] else base))
                    shown.add((cell.server, *key))
        sections.append("\n".join(lines))
    rest = sorted(
        (cell for key, cell in found.items() if key not in shown),
        key=lambda c: (_order((c.view, c.connections)), c.server),
    )
    if rest:
        lines = ["Other cells", HEAD, "-" * len(HEAD)]
        lines.extend(_row(cell, None) for cell in rest)
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


@dataclass(frozen=True)
class Verdict:
    comparison: Comparison
    cells: list[tuple[str, str, int, Summary, Summary, list[str]]]
    """subject, view, connections, its summary, the baseline's, what it missed."""

    @property
    def planned(self) -> int:
        return len(self.comparison.cells) * len(self.comparison.subjects)

    @property
    def met(self) -> bool:
        return len(self.cells) == self.planned and not any(c[5] for c in self.cells)

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.comparison.number,
            "title": self.comparison.title,
            "rule": self.comparison.target.words() if self.comparison.target else "",
            "met": self.met,
            "cells_measured": len(self.cells),
            "cells_planned": self.planned,
            "cells": [
                {
                    "server": subject,
                    "baseline": self.comparison.baseline,
                    "view": view,
                    "connections": level,
                    "rps_ratio": float(s["rps"]) / float(b["rps"]) if b["rps"] else None,
                    "p99_ratio": float(s["p99_ms"]) / float(b["p99_ms"]) if b["p99_ms"] else None,
                    "max_ms": s["max_ms"],
                    "missed": missed,
                }
                for subject, view, level, s, b, missed in self.cells
            ],
        }


def verdicts(cells: list[Cell]) -> list[Verdict]:
    summaries = {(c.server, c.view, c.connections): c.summary() for c in cells}
    found = []
    for comparison in TARGETED:
        assert comparison.target is not None
        measured = []
        for subject in comparison.subjects:
            for view, level in comparison.cells:
                s = summaries.get((subject, view, level))
                b = summaries.get((comparison.baseline, view, level))
                if s is not None and b is not None:
                    measured.append((subject, view, level, s, b, comparison.target.misses(s, b)))
        found.append(Verdict(comparison, measured))
    return found


def summary(results: list[Verdict]) -> str:
    """Each target, its cells with the measured ratios, and whether it is met."""
    lines = ["Targets (from the medians above; every cell must meet the target, with no errors)"]
    for verdict in results:
        comparison = verdict.comparison
        assert comparison.target is not None
        short = any(cell[5] for cell in verdict.cells)
        if not verdict.cells:
            state = "not measured"
        else:
            state = "NOT MET" if short else "met" if verdict.met else "incomplete"
            if len(verdict.cells) < verdict.planned:
                state += f" ({len(verdict.cells)} of {verdict.planned} cells measured)"
        subjects = " and ".join(comparison.subjects)
        lines.append("")
        lines.append(
            f"({comparison.number}) {subjects} against {comparison.baseline}:"
            f" {comparison.target.words()}: {state}"
        )
        for subject, view, level, s, b, missed in verdict.cells:
            lines.append(
                f"    {subject:24} {view:5} {level:>3}"
                f"  req/s {_ratio(float(s['rps']), float(b['rps'])):>6}"
                f"  p99 {_ratio(float(s['p99_ms']), float(b['p99_ms'])):>6}"
                f"  max {float(s['max_ms']):8.1f} ms"
                f"  {'not met: ' + ', '.join(missed) if missed else 'met'}"
            )
    return "\n".join(lines)
