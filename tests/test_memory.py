"""A serving process keeps a request's freed memory for the next request (memory.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from django_runfcgi.memory import keep_freed_memory, set_by_user

glibc = pytest.mark.skipif(
    not hasattr(os, "confstr") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="glibc's malloc only",
)

# What a 1 MB request body does to memory: read in pieces of 64 KiB, joined for the
# application, then freed. Prints the page faults of each of six rounds.
ROUNDS = """
import json, resource, sys
from django_runfcgi.memory import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tune" else None
counts = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    pieces = [b"p" * 65536 for _ in range(17)]
    body = b"".join(pieces)
    del pieces, body
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps([tuned, counts]))
"""


def rounds(how: str, env: dict[str, str] | None = None) -> tuple[bool | None, list[int]]:
    clean = {k: v for k, v in os.environ.items() if not set_by_user({k: v})}
    done = subprocess.run(
        [sys.executable, "-c", ROUNDS, how],
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    tuned, counts = json.loads(done.stdout)
    return tuned, counts


@glibc
def test_memory_a_request_freed_serves_the_next_without_page_faults() -> None:
    untuned = rounds("leave")[1]
    # glibc's defaults hand the memory back and fault it in again every round.
    assert min(untuned[1:]) > 256, untuned
    tuned, counts = rounds("tune")
    assert tuned is True
    assert max(counts[1:]) < 32, counts


@glibc
def test_memory_tunables_the_user_set_are_kept() -> None:
    tuned, counts = rounds("tune", {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert tuned is False
    assert min(counts[1:]) > 256, counts


@pytest.mark.parametrize(
    ("environ", "by_user"),
    [
        ({}, False),
        ({"MALLOC_ARENA_MAX": "2"}, True),
        ({"MALLOC_TOP_PAD_": "0"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}, True),
        ({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=1024"}, False),
        ({"PATH": "/usr/bin"}, False),
    ],
)
def test_memory_set_by_user(environ: dict[str, str], by_user: bool) -> None:
    assert set_by_user(environ) is by_user


def test_memory_left_alone_when_set_by_user() -> None:
    assert keep_freed_memory({"MALLOC_TOP_PAD_": "0"}) is False
