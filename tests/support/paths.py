"""Where things are: the checkout, the test project, the docs' configuration files."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
TESTPROJECT = ROOT / "testproject"
CONFIGS = ROOT / "docs" / "configs"


def remove_tree(path: Path) -> None:
    """Remove a directory the test made, its files and sockets included."""
    for child in sorted(path.rglob("*"), reverse=True):
        if child.is_dir() and not child.is_symlink():
            child.rmdir()
        else:
            child.unlink()
    path.rmdir()


@contextmanager
def short_tmp_dir() -> Iterator[Path]:
    """A short directory: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    try:
        yield path
    finally:
        remove_tree(path)
