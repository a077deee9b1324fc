"""The status page's figures in the scoreboard's shared memory (status=): the master's
counters, then one fixed-size record per slot, which its worker alone writes.

Imported only with a status page, so that a server without one loads nothing of it.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from django_runfcgi.protocols.wsgi import Environ
from django_runfcgi.status.figures import (
    STATE_IDLE,
    STATE_READING,
    STATE_RUNNING,
    Counts,
    History,
    WorkerFigures,
    cpu_time,
    peak_memory,
    worker_figures,
)

FREE = 0
IDLE = 1
KEPT = 3

# The master's counters: a sequence number (odd while the master folds a reaped
# worker's figures into the totals), the totals of reaped workers (connections, slow
# requests, most workers busy at once, workers recycled after maxrequests and after
# maxmemory), the times the pool was full, the longest listen queue, and whether the
# pool is known to be full now.
_COUNTERS = struct.Struct("<IQQIQQQIB")
_FOLD = struct.Struct("<QQIQQ")
_FOLD_AT = 4
_SAMPLED = struct.Struct("<QIB")
_SAMPLED_AT = 4 + _FOLD.size

# A slot's record. Offsets: pid 0, start time 4, connections 12, most busy 20, slow 24,
# requests 32, duration 40, cpu 48, state 56, request start 57, then CONTENT_LENGTH,
# REQUEST_METHOD, REQUEST_URI and QUERY_STRING as the web server sent them, at 65,
# and why the worker is being recycled, if it is (RECYCLED_*), at 1121.
_RECORD = struct.Struct("<idQIQQddBd16s16s512s512sB")
_STARTED = struct.Struct("<id")
_CONNECTION = struct.Struct("<QI")
_CONNECTION_AT = 12
_SLOW = struct.Struct("<Q")
_SLOW_AT = 24
_ENDS = struct.Struct("<QddB")
_ENDS_AT = 32
_BEGINS = struct.Struct("<Bd16s16s512s512s")
_BEGINS_AT = 56
_RECYCLED_AT = _RECORD.size - 1
RECYCLED_MAXREQUESTS = 1
RECYCLED_MAXMEMORY = 2
_NO_RECORD = bytes(_RECORD.size)
READ_ATTEMPTS = 100

Folded = tuple[int, int, int, int, int]
"""A worker's figures the totals keep once it is reaped, in the order of _FOLD."""


def size(slots: int) -> int:
    """The bytes after the state bytes: the counters and a record per slot."""
    return _COUNTERS.size + slots * _RECORD.size


class BoardFigures:
    """The figures part of a scoreboard of `slots` slots (figures.PoolSource)."""

    def __init__(self, board: mmap.mmap, slots: int) -> None:
        self._board = board
        self._slots = slots
        self.counters = SharedCounters(board, slots)
        self._records_at = slots + _COUNTERS.size

    def clear(self, slot: int) -> None:
        """In the master, while the slot is free: a record for a new worker."""
        at = self._records_at + slot * _RECORD.size
        self._board[at : at + _RECORD.size] = _NO_RECORD

    def fold(self, slot: int, free: Callable[[], None]) -> None:
        """In the master, once the slot's worker is reaped: its figures join the totals."""
        record = self._record(slot)
        recycled = record[14]
        self.counters.fold(
            (
                record[2],
                record[4],
                record[3],
                int(recycled == RECYCLED_MAXREQUESTS),
                int(recycled == RECYCLED_MAXMEMORY),
            ),
            free,
        )

    def record(self, slot: int) -> SlotRecord:
        """In a worker: its own record, for it to write."""
        return SlotRecord(self._board, self._records_at + slot * _RECORD.size)

    def slow_request(self, slot: int) -> None:
        """Count one more slow request for the worker in `slot`."""
        self.record(slot).slow_request()

    def _record(self, slot: int) -> tuple[Any, ...]:
        return _RECORD.unpack_from(self._board, self._records_at + slot * _RECORD.size)

    def status_counts(self) -> Counts:
        """The pool's counts, consistent with the master's totals."""
        counters = self.counters
        for _ in range(READ_ATTEMPTS):
            before = counters.sequence()
            if before % 2:
                continue
            states = self._board[: self._slots]
            accepted, slow, max_active, by_requests, by_memory = counters.folded()
            for slot, state in enumerate(states):
                if state != FREE:
                    record = self._record(slot)
                    accepted += record[2]
                    slow += record[4]
                    max_active = max(max_active, record[3])
                    by_requests += record[14] == RECYCLED_MAXREQUESTS
                    by_memory += record[14] == RECYCLED_MAXMEMORY
            if counters.sequence() == before:
                break
        return Counts(
            idle=states.count(IDLE) + states.count(KEPT),
            total=self._slots - states.count(FREE),
            accepted=accepted,
            slow=slow,
            max_active=max_active,
            max_children_reached=counters.max_children_reached,
            max_listen_queue=counters.max_listen_queue,
            recycled_maxrequests=by_requests,
            recycled_maxmemory=by_memory,
        )

    def workers(self) -> Sequence[WorkerFigures]:
        """Each started worker's figures, in slot order; an idle slot's worker is Idle,
        whatever its record last said."""
        now, clock = time.time(), time.monotonic()
        found = []
        states = self._board[: self._slots]
        for slot, slot_state in enumerate(states):
            if slot_state == FREE:
                continue
            record = self._record(slot)
            pid, state = record[0], record[8]
            if not pid:
                continue  # forked, not yet started
            found.append(
                worker_figures(
                    pid=pid,
                    state=STATE_IDLE if slot_state in (IDLE, KEPT) else state,
                    start_time=record[1],
                    requests=record[5],
                    duration=clock - record[9] if state == STATE_RUNNING else record[6],
                    method=_text(record[11]),
                    uri=_text(record[12]),
                    query=_text(record[13]),
                    length=_text(record[10]),
                    cpu=record[7],
                    memory=peak_memory(pid),
                    now=now,
                )
            )
        return found


def _text(value: bytes) -> str:
    return value.rstrip(b"\0").decode("latin-1")


class SharedCounters:
    """The pool's counters in shared memory, written by the master alone: the totals of
    reaped workers and what its Sampler finds (figures.PoolCounters)."""

    def __init__(self, board: mmap.mmap, at: int) -> None:
        self._board = board
        self._at = at

    def sequence(self) -> int:
        value: int = struct.unpack_from("<I", self._board, self._at)[0]
        return value

    def folded(self) -> Folded:
        """Of reaped workers: connections, slow requests, most workers busy at once,
        workers recycled after maxrequests and after maxmemory."""
        accepted, slow, most, by_requests, by_memory = _FOLD.unpack_from(
            self._board, self._at + _FOLD_AT
        )
        return accepted, slow, most, by_requests, by_memory

    def fold(self, worker: Folded, free: Callable[[], None]) -> None:
        """Add a reaped worker's figures to the totals and `free` its slot, as one change
        for readers: the sequence number is odd meanwhile."""
        sequence = self.sequence()
        struct.pack_into("<I", self._board, self._at, sequence + 1)
        accepted, slow, most, by_requests, by_memory = self.folded()
        _FOLD.pack_into(
            self._board,
            self._at + _FOLD_AT,
            accepted + worker[0],
            slow + worker[1],
            max(most, worker[2]),
            by_requests + worker[3],
            by_memory + worker[4],
        )
        free()
        struct.pack_into("<I", self._board, self._at, (sequence + 2) & 0xFFFFFFFF)

    def carry(self, history: History) -> None:
        """Start from the figures of the server this one replaced (a reload)."""
        _FOLD.pack_into(
            self._board,
            self._at + _FOLD_AT,
            history.accepted_conn,
            history.slow_requests,
            history.max_active_processes,
            history.recycled_maxrequests,
            history.recycled_maxmemory,
        )
        self.max_children_reached = history.max_children_reached
        self.max_listen_queue = history.max_listen_queue

    def _sampled(self) -> tuple[int, int, int]:
        reached, longest, noticed = _SAMPLED.unpack_from(self._board, self._at + _SAMPLED_AT)
        return reached, longest, noticed

    def _set_sampled(self, reached: int, longest: int, noticed: bool) -> None:
        _SAMPLED.pack_into(self._board, self._at + _SAMPLED_AT, reached, longest, noticed)

    @property
    def max_children_reached(self) -> int:
        return self._sampled()[0]

    @max_children_reached.setter
    def max_children_reached(self, value: int) -> None:
        _, longest, noticed = self._sampled()
        self._set_sampled(value, longest, bool(noticed))

    @property
    def max_listen_queue(self) -> int:
        return self._sampled()[1]

    @max_listen_queue.setter
    def max_listen_queue(self, value: int) -> None:
        reached, _, noticed = self._sampled()
        self._set_sampled(reached, value, bool(noticed))

    @property
    def full_noticed(self) -> bool:
        """Whether the master knows the pool is full: workers need not tell it again."""
        return bool(self._board[self._at + _SAMPLED_AT + 12])

    @full_noticed.setter
    def full_noticed(self, value: bool) -> None:
        self._board[self._at + _SAMPLED_AT + 12] = int(value)


class SlotRecord:
    """A worker's own record in the shared memory (figures.WorkerWatch): one
    ``pack_into`` when a request begins, one when it ends."""

    __slots__ = ("_accepted", "_at", "_board", "_cpu", "_most", "_requests", "_since")

    def __init__(self, board: mmap.mmap, at: int) -> None:
        self._board = board
        self._at = at
        self._accepted = self._requests = self._most = 0
        self._cpu = self._since = 0.0

    def started(self) -> None:
        """In the worker, first: its pid and start time."""
        _STARTED.pack_into(self._board, self._at, os.getpid(), time.time())

    def connection_begins(self, active: int) -> None:
        self._accepted += 1
        self._most = max(self._most, active)
        _CONNECTION.pack_into(self._board, self._at + _CONNECTION_AT, self._accepted, self._most)

    def request_begins(self, environ: Environ) -> None:
        get = environ.get
        self._since = time.monotonic()
        self._cpu = cpu_time()
        try:
            # The protocols decode what the web server sent as latin-1, as WSGI has it.
            _BEGINS.pack_into(
                self._board,
                self._at + _BEGINS_AT,
                STATE_RUNNING,
                self._since,
                get("CONTENT_LENGTH", "").encode("latin-1"),
                get("REQUEST_METHOD", "").encode("latin-1"),
                get("REQUEST_URI", "").encode("latin-1"),
                get("QUERY_STRING", "").encode("latin-1"),
            )
        except UnicodeEncodeError:
            _BEGINS.pack_into(
                self._board,
                self._at + _BEGINS_AT,
                STATE_RUNNING,
                self._since,
                *(
                    get(name, "").encode("latin-1", "replace")
                    for name in ("CONTENT_LENGTH", "REQUEST_METHOD", "REQUEST_URI", "QUERY_STRING")
                ),
            )

    def request_ends(self, status: int, sent: int) -> None:
        cpu = cpu_time() - self._cpu
        self._requests += 1
        _ENDS.pack_into(
            self._board,
            self._at + _ENDS_AT,
            self._requests,
            time.monotonic() - self._since,
            cpu,
            STATE_READING,
        )

    def recycled(self, maxmemory: bool) -> None:
        """The worker will be replaced after its request: above maxmemory, or else after
        maxrequests."""
        reason = RECYCLED_MAXMEMORY if maxmemory else RECYCLED_MAXREQUESTS
        self._board[self._at + _RECYCLED_AT] = reason

    def slow_request(self) -> None:
        """Count a slow request; whichever process counts them for this slot (the worker
        or its master) is the only one that does."""
        (slow,) = _SLOW.unpack_from(self._board, self._at + _SLOW_AT)
        _SLOW.pack_into(self._board, self._at + _SLOW_AT, slow + 1)
