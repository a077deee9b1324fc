"""Where prefork workers show whether they are busy, without a message per request.

flup's workers told the master "busy" and "idle" over a socket around every
connection: two sends in the worker and two wake-ups of the master per request, about
a quarter of the server's own CPU time on a small view. Here each worker has one byte
in memory shared across fork(), and writes its state there. It wakes the master only
when the pool has to change: too few idle workers while the pool may still grow, or
more idle ones than ``maxspare``.
"""

from __future__ import annotations

import mmap

FREE = 0
IDLE = 1
BUSY = 2


class Scoreboard:
    """One byte per worker slot, shared by the master and the workers it forks."""

    def __init__(self, slots: int) -> None:
        # Anonymous and shared (mmap's default flags): writes after fork() are seen by all.
        self._board = mmap.mmap(-1, slots)
        self.slots = slots

    def claim(self) -> int | None:
        """In the master, before a fork: a free slot, marked idle; None if all are taken."""
        slot = self._board.find(bytes([FREE]))
        if slot < 0:
            return None
        self._board[slot] = IDLE
        return slot

    def release(self, slot: int) -> None:
        """In the master, once the worker is reaped."""
        self._board[slot] = FREE

    def mark(self, slot: int, state: int) -> None:
        self._board[slot] = state

    def is_idle(self, slot: int) -> bool:
        return self._board[slot] == IDLE

    def counts(self) -> tuple[int, int]:
        """The number of idle workers and of workers alive."""
        board = self._board[:]
        return board.count(IDLE), self.slots - board.count(FREE)

    def close(self) -> None:
        self._board.close()
