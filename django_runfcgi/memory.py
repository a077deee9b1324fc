"""glibc's malloc, told to keep a request's freed memory for the next request.

A request that reads a 1 MB body allocates a few megabytes in blocks of 64 KiB to
1 MiB (what recv() returns, the body joined for the application, Django's copy) and
frees them all when it ends. With glibc's defaults the freed top of the heap goes back
to the kernel at once (its trim threshold starts at 128 KiB and only follows the largest
mapped block freed so far), so the next request takes the same memory back a page
at a time: 50 to 90 page faults per 1 MB POST in a worker, and a loop that joins 17
pieces of 64 KiB faults 513 times per round. Each serving process instead keeps up to
TRIM_THRESHOLD of freed heap, and blocks over MMAP_THRESHOLD (a large upload) still get
mappings of their own, returned to the kernel as soon as they are freed.

Whoever set glibc's malloc tunables for the process (a ``MALLOC_*`` variable, or
``glibc.malloc`` in ``GLIBC_TUNABLES``) keeps them: nothing is changed then. Other C
libraries (musl, BSD, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

TRIM_THRESHOLD = 16 * 1024 * 1024
"""Freed memory at the top of the heap is kept up to this much (glibc's M_TRIM_THRESHOLD)."""
MMAP_THRESHOLD = 4 * 1024 * 1024
"""Blocks from this size up get a mapping of their own (glibc's M_MMAP_THRESHOLD)."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def set_by_user(environ: Mapping[str, str]) -> bool:
    """Whether glibc's malloc tunables were set for this process in `environ`."""
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return True
    return any(name.startswith("MALLOC_") for name in environ)


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):  # Not glibc: the name is unknown there.
        return False


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Set the thresholds above for this process and the workers it forks; False if
    they were left as they are (another C library, or set by the user)."""
    if set_by_user(environ) or not _glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
