"""Front ends for the end-to-end tests, and the pass table printed at the end of the run
(tests/support/pass_table.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support.binaries import require
from tests.support.pass_table import TABLE_VARIABLE, Results, pass_table, record
from tests.support.paths import TESTPROJECT
from tests.support.runner import runner_in_tmp
from tests.support.scenarios import Site
from tests.support.wiring import Served

RESULTS = pytest.StashKey[Results]()


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    return require("nginx", "nginx-light")


@pytest.fixture(scope="session")
def apache_binary() -> str:
    return require("apache2", "apache2")


@pytest.fixture(scope="session")
def lighttpd_binary() -> str:
    return require("lighttpd", "lighttpd")


@pytest.fixture(scope="session")
def static_root() -> Iterator[Path]:
    """The testproject's STATIC_ROOT, filled by ``manage.py collectstatic`` as a deploy does."""
    with runner_in_tmp() as runner:
        root = runner.tmp / "static"
        collect = runner.run(
            command=[sys.executable, str(TESTPROJECT / "manage.py"), "collectstatic", "--noinput"],
            env={"TESTPROJECT_STATIC_ROOT": str(root)},
        )
        assert collect.proc.returncode == 0, collect.describe()
        yield root


@pytest.fixture(scope="module")
def site(served: Served) -> Site:
    """The site of the wiring a front-end module serves (tests/support/wiring.py)."""
    return served.site


@pytest.fixture(scope="module")
def scenario(request: pytest.FixtureRequest) -> str:
    """The name of a scenario case (tests/support/wiring.py's scenario_cases)."""
    name: str = request.param[0]
    return name


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RESULTS] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    record(item.config.stash[RESULTS], item, report)
    return report


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
