"""See inside a running server: the status page and ping (:mod:`.page`), the figures
behind them (:mod:`.figures`, :mod:`.listen`), their formats (:mod:`.formats`) and
the probe that reads them from the shell (:mod:`.probe`).

The figures a worker updates per request live in its own record: a prefork worker's
slot of the scoreboard's shared memory, a thread's record for the threaded model. Both
are request watches (``protocols.wsgi.RequestWatch``) handed to the protocol; without
status= or ping= none is, and a request costs what it did.
"""
