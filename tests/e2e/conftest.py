"""Front ends for the end-to-end tests: required in CI, skipped with a reason elsewhere.

Every scenario test (a test with a ``site`` fixture holding a ``Site`` and a ``scenario``
parameter) is also recorded for the pass table printed at the end of the run, and
written to the file named by RUNFCGI_E2E_TABLE if that is set.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

from tests.e2e.scenarios import SCENARIOS, Site
from tests.frontends import FrontendMissing, find

TABLE_VARIABLE = "RUNFCGI_E2E_TABLE"
RESULTS = pytest.StashKey[dict[tuple[str, str, str, str], dict[str, str]]]()
MARKS = {"passed": "ok", "skipped": "skip", "failed": "FAIL"}


def require(binary: str, package: str) -> str:
    try:
        return find(binary, package)
    except FrontendMissing as missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} CI must run every end-to-end test.")
        pytest.skip(f"{missing} Install it to run this test.")


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    return require("nginx", "nginx-light")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RESULTS] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    site = getattr(item, "funcargs", {}).get("site")
    callspec = getattr(item, "callspec", None)
    scenario = callspec.params.get("scenario") if callspec else None
    recorded = report.when == "call" or report.outcome != "passed"
    if recorded and isinstance(site, Site) and isinstance(scenario, str):
        key = (site.frontend, site.protocol, site.variant, site.mount or "/")
        row = item.config.stash[RESULTS].setdefault(key, {})
        # The first bad outcome of a test (setup, call, teardown) is the one shown.
        if row.get(scenario) in (None, "ok"):
            mark = MARKS[report.outcome]
            if scenario == "streaming" and mark == "ok" and not site.streams:
                mark = "ok, buffered"
            row[scenario] = mark
    return report


def pass_table(results: dict[tuple[str, str, str, str], dict[str, str]]) -> list[str]:
    names = list(SCENARIOS)
    for row in results.values():
        names += [name for name in row if name not in names]
    head = ["front end", "protocol", "variant", "mount", *names]
    rows = [
        [*key, *(row.get(name, "-") for name in names)] for key, row in sorted(results.items())
    ]
    widths = [max(len(line[i]) for line in [head, *rows]) for i in range(len(head))]

    def format_line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [format_line(head), rule, *(format_line(row) for row in rows)]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    results = terminalreporter.config.stash.get(RESULTS, {})
    if not results:
        return
    lines = pass_table(results)
    terminalreporter.section("end-to-end pass table")
    for line in lines:
        terminalreporter.write_line(line)
    target = os.environ.get(TABLE_VARIABLE)
    if target:
        Path(target).write_text("\n".join(lines) + "\n")
