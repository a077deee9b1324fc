"""Every runfcgi command and runfastcgi() call the docs show, run as shown.

The commands are read from README.rst and docs/ at collection time
(tests/support/doc_commands.py), and each runs against a fresh ``django-admin
startproject mysite`` with ``"django_runfcgi"`` added to INSTALLED_APPS, as the README
says, in a sandbox of its own (tests/support/doc_sandbox.py) where the paths and ports
the page names are free.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.doc_commands import DocCommand, commands
from tests.support.doc_sandbox import SETTINGS_VARIABLE
from tests.support.paths import ROOT

DOC_COMMANDS = commands()
UNSHARE = ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc"]


def test_the_pages_show_commands() -> None:
    """The extraction itself: a page whose commands went unseen would test nothing."""
    pages = {command.page.name for command in DOC_COMMANDS}
    assert {"README.rst", "usage.rst", "nginx.rst", "apache.rst", "lighttpd.rst"} <= pages
    assert any(command.is_call for command in DOC_COMMANDS)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        if os.environ.get("CI"):
            pytest.fail("the docs' commands run in namespaces: root and unshare are needed")
        pytest.skip("the docs' commands run in namespaces: root and unshare are needed")
    parent = tmp_path_factory.mktemp("startproject")
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "mysite"],
        cwd=parent,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")},
    )
    project = parent / "mysite"
    settings = project / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + '\nINSTALLED_APPS += ["django_runfcgi"]\n')
    return project


@pytest.mark.parametrize("command", DOC_COMMANDS, ids=lambda command: command.where)
def test_documented_command_serves_as_written(site: Path, command: DocCommand) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env["PYTHONPATH"] = str(ROOT)
    if command.settings is not None:
        env[SETTINGS_VARIABLE] = str(command.settings)
    result = subprocess.run(
        [
            *UNSHARE,
            sys.executable,
            "-m",
            "tests.support.doc_sandbox",
            str(site),
            command.text,
            *command.setup,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert result.returncode == 0, (
        f"{command.where}: {command.text}\n{result.stdout}\n{result.stderr}"
    )
