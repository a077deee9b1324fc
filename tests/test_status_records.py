"""The prefork scoreboard's figures in shared memory (workers/prefork/records.py) and the
threaded model's, on the objects themselves: what a worker writes is what the page
reads."""

from __future__ import annotations

import os
import threading

from django_runfcgi.status.figures import History
from django_runfcgi.workers.prefork.scoreboard import BUSY, IDLE, Scoreboard
from django_runfcgi.workers.threaded.figures import ThreadedFigures

ENVIRON = {
    "REQUEST_METHOD": "POST",
    "REQUEST_URI": "/form/",
    "QUERY_STRING": "a=1",
    "CONTENT_LENGTH": "42",
}


def test_without_records_the_scoreboard_is_one_byte_a_slot() -> None:
    board = Scoreboard(3)
    assert board.figures is None
    assert len(board._board) == 3
    board.close()


def test_a_workers_figures_are_read_by_the_master() -> None:
    board = Scoreboard(2, records=True)
    assert board.figures is not None
    slot = board.claim()
    assert slot == 0
    # What the worker does, through its own view of the memory (the integration tests
    # show it across fork()).
    record = board.figures.record(slot)
    record.started()
    board.mark(slot, BUSY)
    record.connection_begins(2)
    record.request_begins(ENVIRON)
    record.request_ends(200, 5)
    record.request_begins({"REQUEST_METHOD": "GET", "REQUEST_URI": "/slow/"})
    [worker] = board.figures.workers()
    assert worker.pid == os.getpid()
    assert worker.state == "Running"
    assert worker.requests == 1
    assert worker.request_method == "GET"
    assert worker.request_uri == "/slow/"
    counts = board.figures.status_counts()
    assert (counts.idle, counts.total, counts.accepted, counts.max_active) == (0, 1, 1, 2)
    # Back on the idle list, it is Idle whatever its record said last.
    board.mark(slot, IDLE)
    assert board.figures.workers()[0].state == "Idle"
    # The slow-request count is one call, from the master for the slot.
    board.figures.slow_request(slot)
    assert board.figures.status_counts().slow == 1
    # Reaped: its figures stay in the totals, and a new worker starts from nothing.
    board.release(slot)
    counts = board.figures.status_counts()
    assert (counts.total, counts.accepted, counts.slow, counts.max_active) == (0, 1, 1, 2)
    assert board.claim() == 0
    assert board.figures.workers() == []
    board.close()


def test_a_worker_on_ajp_shows_its_query_with_the_uri() -> None:
    board = Scoreboard(1, records=True)
    assert board.figures is not None
    slot = board.claim()
    assert slot is not None
    record = board.figures.record(slot)
    record.started()
    board.mark(slot, BUSY)
    record.request_begins(ENVIRON)
    record.request_ends(200, 0)
    [worker] = board.figures.workers()
    assert worker.request_uri == "/form/?a=1"
    assert worker.content_length == 42
    assert worker.state == "Reading headers"
    assert worker.last_request_memory > 1 << 20
    board.close()


def test_threads_records_and_the_totals_of_threads_that_ended() -> None:
    figures = ThreadedFigures(History(accepted_conn=10))
    figures.reads_pool(lambda: (1, 2))

    def serve() -> None:
        figures.thread_starts()
        figures.connection_begins(3)
        figures.request_begins(ENVIRON)
        figures.request_ends(200, 5)
        figures.slow_request()
        figures.connection_ends()
        figures.thread_ends()

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    figures.thread_starts()
    [me] = figures.workers()
    assert me.pid == threading.get_native_id()
    assert me.state == "Idle"
    counts = figures.status_counts()
    assert (counts.accepted, counts.slow, counts.max_active) == (11, 1, 3)
    assert (counts.idle, counts.total) == (1, 2)
