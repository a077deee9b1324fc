"""Where runfcgi's own lines go, and the stamp that each of them carries.

A daemon's stderr is a log file that several processes append to: the master, its
workers, and the server that replaces them on a reload. A line there is only useful
with the time it was written and the process that wrote it, so every line runfcgi
writes itself, through the ``django_runfcgi`` and flup loggers or on the terminal,
starts with the same ``[time] [pid] [level]`` stamp.

A project that names one of these loggers in ``settings.LOGGING`` keeps its own
configuration for all of them: its handlers then receive every record, stamped or not
as its formatters say. A root logger alone does not count: its level and handlers are
set for the project's own messages, and would hide "Stopped" or a failed reload.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from django.conf import settings
from flup.server import ajp_base, scgi_base

LOGGERS = ("django_runfcgi", scgi_base.LoggerName, ajp_base.LoggerName)
FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record.

    Detaching and ``reopen_logs`` point file descriptor 2 elsewhere, and a reload
    replaces ``sys.stderr``; a handler holding the stream it was made with would keep
    writing to the terminal that is gone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _project_configures_them() -> bool:
    configured = getattr(settings, "LOGGING", None) or {}
    named = configured.get("loggers", {})
    return any(name in named for name in LOGGERS)


def configure() -> None:
    """Give runfcgi's loggers a stamped stderr handler, unless the project set its own."""
    if _project_configures_them():
        return
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(handler, _Stderr) for handler in logger.handlers):
            logger.addHandler(_Stderr())
        logger.setLevel(logging.INFO)
        logger.propagate = False


def stamp(message: str, level: str = "INFO") -> str:
    """``message`` as the handler would write it, for lines printed directly."""
    now = time.strftime(DATE_FORMAT)
    return f"[{now}] [{os.getpid()}] [{level}] {message}"
