"""The addresses a server listens on: a TCP host and port, a unix socket it creates, or
a socket a web server or systemd hands over. Their ``str()`` is how messages show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TCP:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Unix:
    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True)
class Inherited:
    """The listening socket a web server hands over on a file descriptor."""

    fd: int = 0

    def __str__(self) -> str:
        return f"fd {self.fd}"


Bind = TCP | Unix | Inherited
