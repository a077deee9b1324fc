"""Where prefork workers show whether they are busy, without a message per request.

flup's workers told the master "busy" and "idle" over a socket around every
connection: two sends in the worker and two wake-ups of the master per request, about
a quarter of the server's own CPU time on a small view. Here each worker has one byte
in memory shared across fork(), and writes its state there. It wakes the master only
when the pool has to change: too few idle workers while the pool may still grow, or
more idle ones than ``maxspare``.

With the status page on (status=), the same shared memory also holds, after the state
bytes, the pool's counters that the master keeps and one fixed-size record per slot,
which its worker alone writes (:mod:`.records`). Without status= they are neither
allocated nor imported.
"""

from __future__ import annotations

import mmap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django_runfcgi.workers.prefork.records import BoardFigures

FREE = 0
IDLE = 1
BUSY = 2
KEPT = 3
"""Idle, holding connections the web server keeps open (FastCGI keep-conn, AJP): the
master does not retire such a worker as a spare, as closing a kept connection races
with the web server sending a request on it."""


class Scoreboard:
    """One byte per worker slot, shared by the master and the workers it forks; with
    `records`, the status page's figures after them (``figures``)."""

    def __init__(self, slots: int, *, records: bool = False) -> None:
        self.slots = slots
        self.figures: BoardFigures | None = None
        if not records:
            # Anonymous and shared (mmap's default flags): writes after fork() are seen by all.
            self._board = mmap.mmap(-1, slots)
            return
        from django_runfcgi.workers.prefork import records as figures  # noqa: PLC0415

        self._board = mmap.mmap(-1, slots + figures.size(slots))
        self.figures = figures.BoardFigures(self._board, slots)

    def claim(self) -> int | None:
        """In the master, before a fork: a free slot, marked idle; None if all are taken."""
        slot = self._board.find(bytes([FREE]), 0, self.slots)
        if slot < 0:
            return None
        if self.figures is not None:
            self.figures.clear(slot)
        self._board[slot] = IDLE
        return slot

    def release(self, slot: int) -> None:
        """In the master, once the worker is reaped (its figures join the totals)."""
        if self.figures is None:
            self._board[slot] = FREE
        else:
            self.figures.fold(slot, lambda: self._free(slot))

    def _free(self, slot: int) -> None:
        self._board[slot] = FREE

    def mark(self, slot: int, state: int) -> None:
        self._board[slot] = state

    def is_idle(self, slot: int) -> bool:
        return self._board[slot] in (IDLE, KEPT)

    def holds_kept(self, slot: int) -> bool:
        """Whether the worker in `slot` is idle with kept connections."""
        return self._board[slot] == KEPT

    def counts(self) -> tuple[int, int]:
        """The number of idle workers and of workers alive."""
        board = self._board[: self.slots]
        return board.count(IDLE) + board.count(KEPT), self.slots - board.count(FREE)

    def close(self) -> None:
        self._board.close()
