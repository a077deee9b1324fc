"""Which work the optional C accelerator (``_speedups``) does, chosen once at import.

Without a compiler at install there is no accelerator, and RUNFCGI_PURE_PYTHON=1 turns
it off (to compare, or to rule it out): each name below is then None and the Python
code does the same work. The accelerator takes only the common, well-formed case and
answers None for anything else, which the Python code then handles and reports.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

_speedups: ModuleType | None
try:
    from django_runfcgi.protocols import _speedups
except ImportError:  # Installed without a compiler.
    _speedups = None

_on = _speedups is not None and os.environ.get("RUNFCGI_PURE_PYTHON", "0") == "0"

read_request: Callable[..., Any] | None = _speedups.read_request if _on else None  # type: ignore[union-attr]
"""A whole FastCGI request head from a buffer (see _speedups.c)."""
scgi_request: Callable[..., Any] | None = _speedups.scgi_request if _on else None  # type: ignore[union-attr]
"""A whole SCGI request head from a buffer: environ, where the body starts, its length."""
response_head: Callable[..., Any] | None = _speedups.response_head if _on else None  # type: ignore[union-attr]
"""start_response()'s status and headers as bytes."""
head_records: Callable[..., Any] | None = _speedups.head_records if _on else None  # type: ignore[union-attr]
"""A response's header block and first body piece as FCGI_STDOUT records."""
cgi_response: Callable[..., Any] | None = _speedups.cgi_response if _on else None  # type: ignore[union-attr]
"""An SCGI response's header block and first body piece, joined."""
