"""The protocol halves of the server: flup 1.0.3's FastCGI, SCGI and AJP 1.3 classes, fixed.

Each fix names the flup bug it covers by its section of docs/flup.rst (cited as
``flup.rst#NAME``), which says what a user would see without it, and has a test in
tests/test_compat.py that fails against plain flup. The process halves (prefork,
threaded) are combined with these classes in server.py; the listening socket is bound
there too, so nothing here needs a bind address.

Every connection object has ``stop_when_idle()``: graceful shutdown lets the request in
progress finish, then the connection closes instead of waiting for another request on a
persistent FastCGI (FCGI_KEEP_CONN) or AJP connection
(flup.rst#persistent-shutdown).
"""

from django_runfcgi.compat.ajp import AJPConnection, AJPServer
from django_runfcgi.compat.common import FIRST_REQUEST_SECONDS, ProtocolError
from django_runfcgi.compat.fcgi import FCGIConnection, FCGIServer
from django_runfcgi.compat.scgi import SCGIConnection, SCGIServer

__all__ = [
    "FIRST_REQUEST_SECONDS",
    "AJPConnection",
    "AJPServer",
    "FCGIConnection",
    "FCGIServer",
    "ProtocolError",
    "SCGIConnection",
    "SCGIServer",
]
