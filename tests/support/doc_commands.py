"""The commands the documentation tells a user to type, read from the .rst files.

Every ``./manage.py runfcgi ...`` line and every ``runfastcgi(...)`` call shown in
README.rst and docs/ is collected here with the page and line it came from, so that
tests/integration/test_doc_commands.py runs each exactly as written: an edited
example is tested as edited.

No path in a command is changed: each runs in a sandbox of its own (mount, network and
process namespaces, tests/support/doc_sandbox.py) where /srv, /run and /var/log are empty, the
freshly created project is /srv/mysite, as the pages assume, and 127.0.0.1 is a
loopback that no other test shares. The directories a page has the user make before a
command (``install -d``, ``mkdir``) are made there first, with the page's own words.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import ROOT

PAGES = (ROOT / "README.rst", *sorted((ROOT / "docs").rglob("*.rst")))

_COMMAND = re.compile(r"^\s*(?:\$ )?(\./manage\.py runfcgi\b.*?)\s*$")
_INLINE = re.compile(r"``(\./manage\.py runfcgi\b[^`]*)``")
_CALL = re.compile(r"^\s*(runfastcgi\(.*\))\s*$")
_DIRECTORIES = re.compile(r"^\s*\$ (?:sudo )?((?:install -d|mkdir) .*?)\s*$")
_SETTINGS = re.compile(r"^\.\. literalinclude:: (configs/runfcgi-[\w-]+\.py)\s*$")


@dataclass(frozen=True)
class DocCommand:
    """One command as a page shows it."""

    page: Path
    line: int
    text: str
    setup: tuple[str, ...] = ()
    """The directory-making commands the page gives before this one."""
    settings: Path | None = None
    """The ``RUNFCGI = {...}`` file (docs/configs/runfcgi-*.py) the page shows before
    this command, which the project's settings then end with."""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def is_call(self) -> bool:
        return self.text.startswith("runfastcgi(")

    @property
    def words(self) -> list[str]:
        """The arguments after ``./manage.py runfcgi``."""
        return shlex.split(self.text)[2:]


def _joined_lines(text: str) -> list[tuple[int, str]]:
    """Lines with shell continuations (a trailing backslash) joined, numbered from 1."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for index, raw in enumerate(text.splitlines(), start=1):
        number, line = (pending[0], f"{pending[1]} {raw.strip()}") if pending else (index, raw)
        pending = None
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1].rstrip())
            continue
        joined.append((number, line))
    return joined


def commands(pages: tuple[Path, ...] = PAGES, *, probes: bool = False) -> list[DocCommand]:
    """The commands that start a server; with `probes`, the ``runfcgi status`` probes
    instead, which tests/integration/test_status_probe.py runs against a server."""
    found: list[DocCommand] = []
    for page in pages:
        text = page.read_text()
        setup: list[str] = []
        settings: Path | None = None
        for number, line in _joined_lines(text):
            texts = [m.group(1) for m in (_COMMAND.match(line), _CALL.match(line)) if m]
            texts += _INLINE.findall(line)
            found += [DocCommand(page, number, t.strip(), tuple(setup), settings) for t in texts]
            if directories := _DIRECTORIES.match(line):
                setup.append(directories.group(1))
            if included := _SETTINGS.match(line):
                settings = page.parent / included.group(1)
    return [command for command in found if (command.words[:1] == ["status"]) == probes]
