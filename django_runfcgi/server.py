"""Build the server the options ask for: a protocol handed to a process model.

The protocol (:mod:`django_runfcgi.protocols`) knows the wire format and runs the
application; the process model (:mod:`django_runfcgi.workers`) knows processes, threads
and signals. Neither inherits from the other.
"""

from __future__ import annotations

import logging
import os

from django_runfcgi import protocols
from django_runfcgi.options import TCP, Config
from django_runfcgi.protocols.clients import ip_address_of
from django_runfcgi.protocols.wsgi import WSGIApplication
from django_runfcgi.workers import Limits, ProcessModel
from django_runfcgi.workers.hooks import Hooks
from django_runfcgi.workers.prefork import PreforkMaster
from django_runfcgi.workers.threaded import ThreadedServer

logger = logging.getLogger("django_runfcgi")

PROCESS_MODELS: dict[str, type[PreforkMaster] | type[ThreadedServer]] = {
    "prefork": PreforkMaster,
    "threaded": ThreadedServer,
}
"""The method= option's values."""


def limits(config: Config) -> Limits:
    return Limits(
        minspare=config.minspare,
        maxspare=config.maxspare,
        maxchildren=config.maxchildren,
        maxrequests=config.maxrequests,
        shutdowntimeout=config.shutdowntimeout,
        requesttimeout=config.requesttimeout,
    )


def make_protocol(config: Config, application: WSGIApplication) -> protocols.Gateway:
    return protocols.build(
        config.protocol,
        application,
        multiprocess=config.method == "prefork",
        debug=config.debug,
        scriptname=config.scriptname,
        allow=config.allow,
    )


def make_server(
    config: Config, application: WSGIApplication, hooks: Hooks | None = None
) -> ProcessModel:
    """Build the server; threads and processes start only in run(), so this is safe before
    a fork."""
    protocol = make_protocol(config, application)
    _warn_if_open(config)
    return PROCESS_MODELS[config.method](protocol, limits(config), hooks)


def _warn_if_open(config: Config) -> None:
    """FastCGI lets every client in by default, as Django 1.8 did: say so when that
    reaches beyond this machine."""
    if config.protocol != "fcgi" or config.allow is not None or not isinstance(config.bind, TCP):
        return
    if "FCGI_WEB_SERVER_ADDRS" in os.environ:
        return
    ip = ip_address_of(config.bind.host)
    if config.bind.host == "localhost" or (ip is not None and ip.is_loopback):
        return
    logger.warning(
        "FastCGI on %s lets in every client that can reach it; "
        "allow= names the web servers that may connect.",
        config.bind,
    )
