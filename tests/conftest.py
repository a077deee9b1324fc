"""The fixtures that start processes for a test and stop them all at its end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.jobs import Servers
from tests.support.paths import short_tmp_dir
from tests.support.runner import Runner, runner_in_tmp


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: unix socket paths must stay under 108 bytes."""
    with short_tmp_dir() as path:
        yield path


@pytest.fixture
def runner(short_tmp: Path) -> Iterator[Runner]:
    """Starts ``manage.py runfcgi`` in the test's short directory; all stopped at the end."""
    runner = Runner(short_tmp)
    yield runner
    runner.cleanup()


@pytest.fixture(scope="module")
def module_runner() -> Iterator[Runner]:
    """One runner for a module whose tests all use the same server: it is started once,
    by a module-scoped fixture, and stopped after the module's last test."""
    with runner_in_tmp() as runner:
        yield runner


@pytest.fixture
def servers() -> Iterator[Servers]:
    """Process-layer test servers (tests/support/jobs.py), all stopped at teardown."""
    with Servers() as started:
        yield started
