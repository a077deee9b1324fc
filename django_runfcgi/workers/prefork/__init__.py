"""The prefork process model: a master (:mod:`.master`) that keeps a pool of worker
processes (:mod:`.worker`), which show whether they are busy on a shared scoreboard
(:mod:`.scoreboard`)."""

from django_runfcgi.workers.prefork.master import PreforkMaster

__all__ = ["PreforkMaster"]
