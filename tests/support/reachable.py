"""Let a process that drops root still read the interpreter, the venv and the checkout.

    unshare --mount --propagation private python -m tests.support.reachable STAGE -- ARGV...

The test interpreter may live where only root can look (pyenv under /root, mode 700),
and so may the checkout and its tox environments (a clone in a ``mktemp -d`` directory,
``.tox`` itself is mode 700). Rather than open those directories to everyone, each one
that blocks the way is covered, in a private mount namespace only, by an empty tmpfs
that anyone may search, with only the entry on the way mounted back into it. Nothing
outside that namespace changes, and no permission of a real directory does.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT


def needed() -> list[Path]:
    """What a server started by the tests reads after it dropped root."""
    return [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), ROOT]


def blocking_directory(path: Path) -> Path | None:
    """The outermost directory on ``path`` that other users cannot search, if any."""
    for directory in [*reversed(path.parents), path]:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return directory
    return None


def open_the_way(paths: list[Path], stage: Path) -> None:
    """Make every directory on each of ``paths`` searchable by others, in this mount
    namespace only; ``stage`` is an empty directory used as a mount point for a moment."""
    stage.mkdir(mode=0o755, parents=True, exist_ok=True)
    for path in paths:
        while (blocked := blocking_directory(path)) is not None and blocked != path:
            child = blocked / path.relative_to(blocked).parts[0]
            subprocess.run(["mount", "--bind", str(child), str(stage)], check=True)
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "mode=0755,size=64k", "runfcgi-test", str(blocked)],
                check=True,
            )
            child.mkdir()
            subprocess.run(["mount", "--move", str(stage), str(child)], check=True)


def main(argv: list[str]) -> None:
    stage, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit(__doc__)
    open_the_way(needed(), Path(stage))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
