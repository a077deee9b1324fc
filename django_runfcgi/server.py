"""Build the server the options ask for: a protocol handed to a process model.

The protocol (:mod:`django_runfcgi.protocols`) knows the wire format and runs the
application; the process model (:mod:`django_runfcgi.workers`) knows processes, threads
and signals. Neither inherits from the other.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, TypeVar

from django_runfcgi import protocols
from django_runfcgi.options import Config
from django_runfcgi.protocols.wsgi import WSGIApplication
from django_runfcgi.workers import Limits, ProcessModel
from django_runfcgi.workers.hooks import Hooks
from django_runfcgi.workers.prefork import PreforkMaster
from django_runfcgi.workers.threaded import ThreadedServer

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from django_runfcgi.accesslog import AccessLog
    from django_runfcgi.slowlog import SlowLog
    from django_runfcgi.status.figures import History
    from django_runfcgi.status.page import Status

PROCESS_MODELS: dict[str, type[PreforkMaster] | type[ThreadedServer]] = {
    "prefork": PreforkMaster,
    "threaded": ThreadedServer,
}
"""The method= option's values."""

_Fields = TypeVar("_Fields", bound="DataclassInstance")


def _from_config(kind: type[_Fields], config: Config) -> _Fields:
    """A dataclass of option values (the pool's Limits, the protocols' Bounds), each
    field read from the Config field of the same name: a new option is added in one
    place, not also here."""
    return kind(**{field.name: getattr(config, field.name) for field in fields(kind)})


def limits(config: Config) -> Limits:
    return _from_config(Limits, config)


def bounds(config: Config) -> protocols.Bounds:
    return _from_config(protocols.Bounds, config)


def make_protocol(config: Config, application: WSGIApplication) -> protocols.Gateway:
    return protocols.build(
        config.protocol,
        application,
        multiprocess=config.method == "prefork",
        debug=config.debug,
        scriptname=config.scriptname,
        secret=config.secret,
        allow=config.allow,
        bounds=bounds(config),
    )


def make_status(config: Config, history: History | None = None) -> Status | None:
    """The status page and ping the options ask for; None without status= and ping=."""
    if config.status is None and config.ping is None:
        return None
    # Imported only here: a server without a status page loads nothing of it.
    from django_runfcgi.status.page import Status  # noqa: PLC0415

    return Status(
        status_path=config.status,
        ping_path=config.ping,
        protocol=config.protocol,
        process_manager=config.method,
        limits=limits(config),
        history=history,
    )


def make_server(
    config: Config,
    application: WSGIApplication,
    hooks: Hooks | None = None,
    status: Status | None = None,
    *,
    access: AccessLog | None = None,
    slowlog: SlowLog | None = None,
) -> ProcessModel:
    """Build the server; threads and processes start only in run(), so this is safe before
    a fork. With `status`, its paths are answered in front of the application, and the
    process model keeps the figures when there is a status page. With `access`, each
    request is logged by the worker that served it, innermost of the request watches:
    its time is the request's own. With `slowlog`, each serving process watches its
    requests for the slow log."""
    protocol = make_protocol(config, application)
    if access is not None:
        protocol.watch_requests(access)
    if status is not None:
        protocol.application = status.around(protocol.application)
        if status.status_path is None:
            status = None  # ping alone needs no figures
    return PROCESS_MODELS[config.method](
        protocol, limits(config), hooks, status=status, slowlog=slowlog
    )
