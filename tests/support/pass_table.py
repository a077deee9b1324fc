"""The end-to-end pass table: one row per site, one column per scenario.

Every scenario test (a test with a ``site`` fixture holding a ``Site`` and a ``scenario``
fixture naming the scenario) is recorded, and so are the scenarios its site cannot do by
design. tests/e2e/conftest.py prints the table at the end of the run, and writes it to
the file named by RUNFCGI_E2E_TABLE if that is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.support.scenarios import SCENARIOS, Site

TABLE_VARIABLE = "RUNFCGI_E2E_TABLE"
Key = tuple[str, str, str, str]  # front end, protocol, wiring, mount
# A failure's message is cut to this many characters in the table's notes.
REASON_LENGTH = 160


@dataclass(frozen=True)
class Cell:
    """One scenario on one site: "ok", "FAIL", "xfail", "cannot", "skip" or "XPASS"."""

    mark: str
    reason: str = ""

    @property
    def bad(self) -> bool:
        return self.mark not in ("ok", "ok, buffered")


Results = dict[Key, dict[str, Cell]]


def skip_message(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return message.removeprefix("Skipped: ")


def failure_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else report.longreprtext
    first = message.strip().splitlines()[0] if message.strip() else report.when
    return first if len(first) <= REASON_LENGTH else first[: REASON_LENGTH - 3] + "..."


def cell_of(report: pytest.TestReport, site: Site, scenario: str) -> Cell:
    """What a report says about a scenario, in the words the docs use for it."""
    expected = getattr(report, "wasxfail", None)
    if expected is not None:
        # pytest.xfail("...") reports "reason: ..."; an xfail marker reports its reason.
        reason = str(expected).removeprefix("reason: ")
        return Cell("XPASS" if report.passed else "xfail", reason)
    if report.passed:
        buffered = scenario == "streaming" and not site.streams
        return Cell("ok, buffered" if buffered else "ok")
    if report.skipped:
        return Cell("skip", skip_message(report))
    return Cell("FAIL", failure_message(report))


def record(results: Results, item: pytest.Item, report: pytest.TestReport) -> None:
    """Note a scenario test's outcome; the scenarios its site cannot do are noted too."""
    funcargs = getattr(item, "funcargs", {})
    site, scenario = funcargs.get("site"), funcargs.get("scenario")
    recorded = report.when == "call" or report.outcome != "passed"
    if recorded and isinstance(site, Site) and isinstance(scenario, str):
        key = (site.frontend, site.protocol, site.variant, site.mount or "/")
        row = results.setdefault(key, {})
        # The first bad outcome of a test (setup, call, teardown) is the one shown.
        if scenario not in row or not row[scenario].bad:
            row[scenario] = cell_of(report, site, scenario)
        for name, reason in site.cannot.items():
            row.setdefault(name, Cell("cannot", reason))


def pass_table(results: Results) -> list[str]:
    """A markdown grid, one row per site and one column per scenario, then its notes.

    A cell that is not a pass names a numbered note giving the reason in full, so the
    grid stays narrow enough to read while every reason is still shown.
    """
    names = list(SCENARIOS)
    for row in results.values():
        names += [name for name in row if name not in names]
    notes: dict[tuple[str, str], int] = {}

    def text(cell: Cell | None) -> str:
        if cell is None:
            return "-"
        if not cell.bad:
            return cell.mark
        number = notes.setdefault((cell.mark, cell.reason), len(notes) + 1)
        return f"{cell.mark} [{number}]"

    head = ["front end", "protocol", "wiring", "mount", *names]
    rows = [
        [*key, *(text(row.get(name)) for name in names)] for key, row in sorted(results.items())
    ]
    widths = [max(len(line[i]) for line in [head, *rows]) for i in range(len(head))]

    def format_line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    lines = [format_line(head), rule, *(format_line(row) for row in rows)]
    if notes:
        lines.append("")
        lines += [f"- [{number}] {mark}: {reason}" for (mark, reason), number in notes.items()]
    return lines
