"""docs/install.rst, "From a checkout or a git URL": its commands, run as written.

The checkout is a copy of this source tree committed to a fresh git repository, so the
commands clone and install exactly what is being tested, and the repository's address
in the docs is replaced by that copy's ``file://`` address. Each command installs into a
fresh virtual environment, and the installed package, not this source tree, must then
run ``manage.py runfcgi help``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT, TESTPROJECT

INSTALL_DOC = ROOT / "docs" / "install.rst"
SECTION = "From a checkout or a git URL"
DOC_REPOSITORY = "https://github.com/OWNER/django-runfcgi.git"
PIP_TIMEOUT = 600  # seconds; Django and flup may come from the network


def section_commands() -> list[str]:
    """The ``$`` lines of the section's console blocks, in order."""
    text = INSTALL_DOC.read_text()
    start = text.index(f"{SECTION}\n")
    following = re.search(r"\n\S[^\n]*\n-{3,}\n", text[start + len(SECTION) + 1 :])
    assert following is not None
    body = text[start : start + len(SECTION) + 1 + following.start()]
    return [line.strip()[2:] for line in body.splitlines() if line.strip().startswith("$ ")]


def run(argv: list[str] | str, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        shell=isinstance(argv, str),
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def repository(directory: Path, env: dict[str, str]) -> Path:
    """This source tree (tracked and new files, as they are now) as a git repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    run([*git, "init", "-q", "-b", "main"], directory, env)
    run([*git, "add", "-A"], directory, env)
    run([*git, "commit", "-q", "-m", "checkout"], directory, env)
    return directory


@pytest.mark.timeout(2 * PIP_TIMEOUT)
def test_install_from_a_checkout_and_from_a_git_url(short_tmp: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # Named as in the docs' address, so that git clone makes the same directory.
    source = repository(short_tmp / "origin" / DOC_REPOSITORY.rsplit("/", 1)[1], env)
    commands = section_commands()
    assert len(commands) == 3, commands
    clone, from_directory, from_url = commands
    assert clone == f"git clone {DOC_REPOSITORY}", clone
    assert from_directory == "python -m pip install ./django-runfcgi", from_directory
    assert from_url == f'python -m pip install "git+{DOC_REPOSITORY}@main"', from_url

    work = short_tmp / "work"
    work.mkdir()
    for command in (f"{clone} && {from_directory}", from_url):
        venv = short_tmp / "venv"
        shutil.rmtree(venv, ignore_errors=True)
        run([sys.executable, "-m", "venv", str(venv)], work, env)
        python = str(venv / "bin" / "python")
        shell = command.replace(DOC_REPOSITORY, f"file://{source}")
        shell = re.sub(r"(^|&& )python ", rf"\g<1>{python} ", shell)
        run(shell, work, env)

        where = run(
            [python, "-c", "import django_runfcgi; print(django_runfcgi.__file__)"], work, env
        )
        assert Path(where.strip()).is_relative_to(venv), where
        helptext = run([python, "manage.py", "runfcgi", "help"], TESTPROJECT, env)
        assert "socket=" in helptext, helptext
        shutil.rmtree(work / "django-runfcgi", ignore_errors=True)
