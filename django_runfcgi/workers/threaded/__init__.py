"""The threaded process model: one process, a pool of threads (:mod:`.pool`) that accept
and serve, and a main thread that hears signals (:mod:`.server`)."""

from django_runfcgi.workers.threaded.server import ThreadedServer

__all__ = ["ThreadedServer"]
