"""``manage.py runfcgi status``: ask a running server for its status page, from the shell.

The probe speaks the server's own protocol, as its web server would: the same options
find it (protocol=, host= and port= or socket=, status=, secret= for AJP), so the
server's command line with ``status`` in front is a probe of it; or pidfile= finds the
server's process, its listening socket and its options. Without a status page (no
status=, or the server answers that path with something else), the probe still tells
whether the server is alive: FastCGI's FCGI_GET_VALUES, AJP's CPing, or ping= if given.

Each way it can end has its exit status, for monitoring and systemd (EXIT_*); a failure
is one line saying why.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flup.server import ajp_base, fcgi_base

from django_runfcgi import options, pidfile

EXIT_OK = 0
"""The status page answered."""
EXIT_UNREACHABLE = 2
"""No connection: refused, no socket file, no server running at the pidfile's pid."""
EXIT_TIMEOUT = 3
"""Connected, but no answer in time."""
EXIT_NOT_RUNFCGI = 4
"""Something answered, but not as runfcgi answers."""
EXIT_NO_STATUS = 5
"""Alive, but no status page at that path (the reason says how the server was seen)."""

DEFAULT_TIMEOUT = 5.0
_CGI_SEPARATOR = b"\r\n\r\n"
_AJP_SERVER_PREFIX = b"\x12\x34"
_AJP_CONTAINER_PREFIX = b"AB"
_AJP_GET = 2
_AJP_HOST_HEADER = 0xA00B
_AJP_QUERY_STRING = 0x05
_AJP_SECRET = 0x0C
_AJP_END_ATTRIBUTES = 0xFF
_AJP_RESPONSE_HEADERS = {0xA001: "Content-Type", 0xA003: "Content-Length"}
_FCGI_HEADER = struct.Struct("!BBHHBx")


class ProbeFailed(Exception):
    """The probe ends with `code`; the message is its one line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Target:
    """A running server as the probe reaches it."""

    protocol: str
    address: str | tuple[str, int]
    status: str | None = None
    ping: str | None = None
    secret: str | None = None

    def describe(self) -> str:
        if isinstance(self.address, str):
            where = f"unix:{self.address}"
        else:
            host, port = self.address
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"{options_name(self.protocol)} on {where}"


def options_name(protocol: str) -> str:
    return {"fcgi": "FastCGI", "scgi": "SCGI", "ajp": "AJP"}.get(protocol, protocol)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


# Finding the server.


def target_from(raw: Mapping[str, object], cwd: Path | None = None) -> Target:
    """The server the options name: every option of the server is accepted (and checked),
    so its own command line works; those that say where it listens are used."""
    base = cwd or Path.cwd()
    values = {name: options.BY_NAME[name].parse(name, value) for name, value in raw.items()}
    host, port, sock = values.get("host"), values.get("port"), values.get("socket")
    if sock is not None and (host is not None or port is not None):
        raise options.OptionError("Use either socket= or host=/port=, not both.")
    if (host is None) != (port is None):
        raise options.OptionError("host= and port= go together; give both, or socket=.")
    path = values.get("pidfile")
    found: dict[str, Any] = {}
    address: str | tuple[str, int] | None = None
    if sock is not None:
        address = str(_absolute(str(sock), base))
    elif host is not None and port is not None:
        address = (str(host), int(port))
    elif path is not None:
        found = _from_pidfile(_absolute(str(path), base))
        address = found.pop("address")
    else:
        raise options.OptionError(
            "runfcgi status needs the server's address: host= and port=, socket=, or "
            "pidfile= (the server's own options work as they are)."
        )
    settings = found | {key: value for key, value in values.items() if value is not None}
    protocol = str(settings.get("protocol", "fcgi"))
    return Target(
        protocol=protocol,
        address=address,
        status=settings.get("status"),
        ping=settings.get("ping"),
        secret=settings.get("secret"),
    )


def _absolute(value: str, base: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def _from_pidfile(path: Path) -> dict[str, Any]:
    """The server whose pid the pidfile holds: its options from its command line, and
    its address from the listening socket it holds (or its options, where /proc/PID/fd
    is not this user's to read)."""
    try:
        pid = pidfile.read_pid(path)
    except pidfile.PidfileError as err:
        raise ProbeFailed(EXIT_UNREACHABLE, str(err)) from None
    if pid is None:
        raise ProbeFailed(
            EXIT_UNREACHABLE, f"No pidfile at {str(path)!r} (or it is empty): no server running."
        )
    if not pidfile.is_alive(pid):
        raise ProbeFailed(
            EXIT_UNREACHABLE, f"No server is running as PID {pid} (pidfile {str(path)!r})."
        )
    words = _runfcgi_words(pid)
    if words is None:
        raise ProbeFailed(
            EXIT_NOT_RUNFCGI, f"PID {pid} (pidfile {str(path)!r}) is not a runfcgi server."
        )
    values: dict[str, Any] = {}
    for name, value in words.items():
        if name in ("protocol", "host", "port", "socket", "status", "ping", "secret"):
            try:
                values[name] = options.BY_NAME[name].parse(name, value)
            except options.OptionError:
                continue
    address = _listening_address(pid)
    if address is None and values.get("socket") and os.path.isabs(values["socket"]):
        address = values["socket"]
    if address is None and values.get("host") and values.get("port"):
        address = (values["host"], values["port"])
    if address is None:
        raise ProbeFailed(
            EXIT_UNREACHABLE,
            f"Cannot tell where PID {pid} listens; give the probe host=/port= or socket=.",
        )
    for name in ("host", "port", "socket"):
        values.pop(name, None)
    return {**values, "address": address}


def _runfcgi_words(pid: int) -> dict[str, object] | None:
    """The key=value options on a runfcgi server's command line; None for another program."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    args = [arg.decode("utf-8", "surrogateescape") for arg in argv if arg]
    if "runfcgi" not in args:
        return None
    rest = args[args.index("runfcgi") + 1 :]
    try:
        words = options.dashed_to_words(rest, ())
    except options.OptionError:
        words = rest
    found: dict[str, object] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if sep and key in options.BY_NAME:
            found[key] = value
    return found


def _listening_address(pid: int) -> str | tuple[str, int] | None:
    """The address of the listening socket the process holds (TCP or unix)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except OSError:
        return None
    for table in ("tcp", "tcp6"):
        for line in _table(f"/proc/{pid}/net/{table}"):
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                return _tcp_address(fields[1], table == "tcp6")
    for line in _table(f"/proc/{pid}/net/unix"):
        fields = line.split()
        listening = len(fields) > 7 and int(fields[3], 16) & 0x10000
        if listening and fields[6] in inodes and fields[7].startswith("/"):
            return fields[7]
    return None


def _table(path: str) -> list[str]:
    try:
        with open(path) as handle:
            return handle.readlines()[1:]
    except OSError:
        return []


def _tcp_address(field: str, six: bool) -> tuple[str, int]:
    hex_host, hex_port = field.split(":")
    raw = bytes.fromhex(hex_host)
    if six:
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        host = socket.inet_ntop(socket.AF_INET6, raw)
    else:
        host = socket.inet_ntop(socket.AF_INET, raw[::-1])
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return host, int(hex_port, 16)


# Talking to it.


class _Conversation:
    """One connection with a deadline; every failure becomes a ProbeFailed."""

    def __init__(self, target: Target, timeout: float) -> None:
        self._target = target
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        family = socket.AF_UNIX if isinstance(target.address, str) else socket.AF_INET
        if isinstance(target.address, tuple) and ":" in target.address[0]:
            family = socket.AF_INET6
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(target.address)
        except BaseException as err:
            self._sock.close()
            raise self._failure(err, "connecting") from None

    def __enter__(self) -> _Conversation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._sock.close()

    def _failure(self, err: BaseException, doing: str) -> BaseException:
        where = self._target.describe()
        if isinstance(err, (TimeoutError, socket.timeout)):
            return ProbeFailed(
                EXIT_TIMEOUT, f"{where}: no answer within {self._timeout:g} s while {doing}."
            )
        if isinstance(err, ConnectionRefusedError):
            return ProbeFailed(EXIT_UNREACHABLE, f"{where}: connection refused.")
        if isinstance(err, FileNotFoundError):
            return ProbeFailed(EXIT_UNREACHABLE, f"{where}: no such socket.")
        if isinstance(err, PermissionError):
            return ProbeFailed(EXIT_UNREACHABLE, f"{where}: permission denied.")
        if isinstance(err, (ConnectionResetError, BrokenPipeError, EOFError)):
            return ProbeFailed(
                EXIT_NOT_RUNFCGI,
                f"{where}: the connection was closed without an answer (not a runfcgi "
                "server of this protocol, or this client is not allowed: allow=).",
            )
        if isinstance(err, OSError):
            return ProbeFailed(EXIT_UNREACHABLE, f"{where}: {err.strerror or err}.")
        return err

    def _remaining(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    def send(self, data: bytes) -> None:
        try:
            self._sock.settimeout(self._remaining())
            self._sock.sendall(data)
        except BaseException as err:
            raise self._failure(err, "sending") from None

    def receive(self, size: int = 65536) -> bytes:
        """Some bytes; b"" at the end."""
        try:
            self._sock.settimeout(self._remaining())
            return self._sock.recv(size)
        except BaseException as err:
            raise self._failure(err, "waiting for the answer") from None

    def exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            piece = self.receive(size - len(data))
            if not piece:
                raise self._failure(EOFError(), "reading the answer")
            data += piece
        return data

    def until_closed(self) -> bytes:
        parts = []
        while piece := self.receive():
            parts.append(piece)
        return b"".join(parts)

    def closed(self) -> BaseException:
        return self._failure(EOFError(), "reading the answer")

    def not_runfcgi(self, what: str) -> ProbeFailed:
        return ProbeFailed(EXIT_NOT_RUNFCGI, f"{self._target.describe()}: {what}.")


def _cgi_params(path: str, query: str) -> dict[str, str]:
    return {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "REQUEST_URI": f"{path}?{query}" if query else path,
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0",
        "CONTENT_LENGTH": "0",
        "HTTP_HOST": "localhost",
        "HTTP_USER_AGENT": "runfcgi-status",
    }


def _cgi_answer(conversation: _Conversation, output: bytes) -> Answer:
    if not output:
        raise conversation.closed()
    head, sep, body = output.partition(_CGI_SEPARATOR)
    # runfcgi's CGI answers (FastCGI, SCGI) begin with their status.
    if not sep or not head.startswith(b"Status: "):
        raise conversation.not_runfcgi(f"the answer is not runfcgi's (it begins {output[:24]!r})")
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    code = headers.pop("status", "200").partition(" ")[0]
    if not code.isdigit():
        raise conversation.not_runfcgi(f"the answer's status {code!r} is not a number")
    return Answer(int(code), headers, body)


def _fcgi_record(kind: int, request_id: int, content: bytes = b"") -> bytes:
    padding = -len(content) % 8
    return _FCGI_HEADER.pack(1, kind, request_id, len(content), padding) + content + bytes(padding)


def _fcgi_records(conversation: _Conversation) -> Any:
    while True:
        header = conversation.exactly(_FCGI_HEADER.size)
        version, kind, request_id, length, padding = _FCGI_HEADER.unpack(header)
        if version != 1:
            raise conversation.not_runfcgi("the answer is not FastCGI")
        content = conversation.exactly(length + padding)[:length]
        yield kind, request_id, content


def _fcgi_fetch(conversation: _Conversation, path: str, query: str) -> Answer:
    pairs = b"".join(
        fcgi_base.encode_pair(name.encode("latin-1"), value.encode("latin-1"))
        for name, value in _cgi_params(path, query).items()
    )
    begin = struct.pack("!HB5x", fcgi_base.FCGI_RESPONDER, 0)
    conversation.send(
        _fcgi_record(fcgi_base.FCGI_BEGIN_REQUEST, 1, begin)
        + _fcgi_record(fcgi_base.FCGI_PARAMS, 1, pairs)
        + _fcgi_record(fcgi_base.FCGI_PARAMS, 1)
        + _fcgi_record(fcgi_base.FCGI_STDIN, 1)
    )
    output = []
    for kind, _, content in _fcgi_records(conversation):
        if kind == fcgi_base.FCGI_STDOUT:
            output.append(content)
        elif kind == fcgi_base.FCGI_END_REQUEST:
            return _cgi_answer(conversation, b"".join(output))
        elif kind != fcgi_base.FCGI_STDERR:
            raise conversation.not_runfcgi(f"unexpected FastCGI record type {kind}")
    raise AssertionError("unreachable")


def _fcgi_alive(conversation: _Conversation) -> str:
    names = (fcgi_base.FCGI_MAX_CONNS, fcgi_base.FCGI_MAX_REQS, fcgi_base.FCGI_MPXS_CONNS)
    query = b"".join(fcgi_base.encode_pair(name.encode(), b"") for name in names)
    conversation.send(_fcgi_record(fcgi_base.FCGI_GET_VALUES, 0, query))
    for kind, _, content in _fcgi_records(conversation):
        if kind != fcgi_base.FCGI_GET_VALUES_RESULT:
            raise conversation.not_runfcgi(f"FCGI_GET_VALUES answered with record type {kind}")
        pairs = []
        pos = 0
        try:
            while pos < len(content):
                pos, (name, value) = fcgi_base.decode_pair(content, pos)
                pairs.append(f"{name.decode('latin-1')}={value.decode('latin-1')}")
        except (IndexError, struct.error):
            raise conversation.not_runfcgi("FCGI_GET_VALUES_RESULT is malformed") from None
        return f"FCGI_GET_VALUES answered ({', '.join(pairs)})"
    raise AssertionError("unreachable")


def _scgi_fetch(conversation: _Conversation, path: str, query: str) -> Answer:
    params = {"CONTENT_LENGTH": "0", "SCGI": "1", **_cgi_params(path, query)}
    headers = b"".join(
        name.encode("latin-1") + b"\0" + value.encode("latin-1") + b"\0"
        for name, value in params.items()
    )
    conversation.send(b"%d:%s," % (len(headers), headers))
    return _cgi_answer(conversation, conversation.until_closed())


def _ajp_string(value: str) -> bytes:
    data = value.encode("latin-1")
    return struct.pack(">H", len(data)) + data + b"\0"


def _ajp_packet(data: bytes) -> bytes:
    return _AJP_SERVER_PREFIX + struct.pack(">H", len(data)) + data


def _ajp_packets(conversation: _Conversation) -> Any:
    while True:
        header = conversation.exactly(4)
        if header[:2] != _AJP_CONTAINER_PREFIX:
            raise conversation.not_runfcgi("the answer is not AJP")
        (length,) = struct.unpack(">H", header[2:])
        yield conversation.exactly(length) if length else b""


class _AjpFields:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 1

    def short(self) -> int:
        (value,) = struct.unpack_from(">H", self._data, self._pos)
        self._pos += 2
        return int(value)

    def peek(self) -> int:
        return self._data[self._pos]

    def string(self) -> str:
        length = self.short()
        if length == 0xFFFF:
            return ""
        value = self._data[self._pos : self._pos + length].decode("latin-1")
        self._pos += length + 1
        return value


def _ajp_fetch(conversation: _Conversation, target: Target, path: str, query: str) -> Answer:
    request = (
        bytes([ajp_base.PKTTYPE_FWD_REQ, _AJP_GET])
        + _ajp_string("HTTP/1.1")
        + _ajp_string(path)
        + _ajp_string("127.0.0.1")
        + _ajp_string("")
        + _ajp_string("localhost")
        + struct.pack(">HBH", 80, 0, 1)
        + struct.pack(">H", _AJP_HOST_HEADER)
        + _ajp_string("localhost")
    )
    if query:
        request += bytes([_AJP_QUERY_STRING]) + _ajp_string(query)
    if target.secret is not None:
        request += bytes([_AJP_SECRET]) + _ajp_string(target.secret)
    conversation.send(_ajp_packet(request + bytes([_AJP_END_ATTRIBUTES])))
    status, headers, body = 0, {}, []
    for packet in _ajp_packets(conversation):
        if not packet:
            raise conversation.not_runfcgi("an empty AJP packet")
        fields = _AjpFields(packet)
        if packet[0] == ajp_base.PKTTYPE_SEND_HEADERS[0]:
            status = fields.short()
            fields.string()
            for _ in range(fields.short()):
                if fields.peek() == 0xA0:
                    name = _AJP_RESPONSE_HEADERS.get(fields.short(), "")
                else:
                    name = fields.string()
                headers[name.lower()] = fields.string()
        elif packet[0] == ajp_base.PKTTYPE_SEND_BODY[0]:
            body.append(packet[3 : 3 + fields.short()])
        elif packet[0] == ajp_base.PKTTYPE_GET_BODY[0]:
            conversation.send(_ajp_packet(b""))
        elif packet[0] == ajp_base.PKTTYPE_END_RESPONSE[0]:
            if not status:
                raise conversation.not_runfcgi("END_RESPONSE came before the headers")
            return Answer(status, headers, b"".join(body))
        else:
            raise conversation.not_runfcgi(f"unexpected AJP packet type {packet[0]}")
    raise AssertionError("unreachable")


def _ajp_alive(conversation: _Conversation) -> str:
    conversation.send(_ajp_packet(bytes([ajp_base.PKTTYPE_CPING])))
    for packet in _ajp_packets(conversation):
        if packet != ajp_base.PKTTYPE_CPONG:
            raise conversation.not_runfcgi(f"CPing answered with {packet[:8]!r}")
        return "CPing answered with CPong"
    raise AssertionError("unreachable")


def fetch(target: Target, path: str, query: str, timeout: float) -> Answer:
    """One GET request for `path` over the server's protocol."""
    with _Conversation(target, timeout) as conversation:
        if target.protocol == "fcgi":
            return _fcgi_fetch(conversation, path, query)
        if target.protocol == "scgi":
            return _scgi_fetch(conversation, path, query)
        return _ajp_fetch(conversation, target, path, query)


def liveness(target: Target, timeout: float) -> str:
    """What the server said to the cheapest question its protocol has (ping= if given)."""
    if target.ping is not None:
        answer = fetch(target, target.ping, "", timeout)
        if answer.status == 200 and answer.body.strip() == b"pong":
            return f"{target.ping} answered pong"
        raise ProbeFailed(
            EXIT_NOT_RUNFCGI,
            f"{target.describe()}: {target.ping} answered {answer.status}, not pong "
            "(is ping= the server's?).",
        )
    with _Conversation(target, timeout) as conversation:
        if target.protocol == "fcgi":
            return _fcgi_alive(conversation)
        if target.protocol == "ajp":
            return _ajp_alive(conversation)
    return "the connection was accepted (SCGI has no liveness message; ping= checks more)"


@dataclass(frozen=True)
class Outcome:
    code: int
    output: str
    """The status page, for standard output; empty when it was not reached."""
    line: str
    """The one line for standard error when the code is not EXIT_OK."""


def probe(target: Target, *, as_json: bool, full: bool, timeout: float) -> Outcome:
    """Ask `target` for its status page; its liveness when it has none."""
    try:
        if target.status is not None:
            words = ["json" if as_json else "", "full" if full else ""]
            query = "&".join(word for word in words if word)
            answer = fetch(target, target.status, query, timeout)
            page = _status_page(answer, as_json)
            if page is not None:
                return Outcome(EXIT_OK, page, "")
            shown = f"{target.status}?{query}" if query else target.status
            why = (
                f"{shown} answered {answer.status} "
                f"({answer.headers.get('content-type', 'no content type')}), not runfcgi's "
                "status page: the server's status= is another path, or unset"
            )
            if target.protocol == "ajp" and answer.status == 403 and target.secret is None:
                why = (
                    f"{shown} answered 403: the server wants a secret; give the probe "
                    "the server's secret="
                )
        else:
            why = "no status= given: start the server with status=PATH and give the probe the same"
        alive = liveness(target, timeout)
    except ProbeFailed as failed:
        return Outcome(failed.code, "", str(failed))
    return Outcome(EXIT_NO_STATUS, "", f"{target.describe()} is alive: {alive}; but {why}.")


def _status_page(answer: Answer, as_json: bool) -> str | None:
    """runfcgi's status page as the probe prints it, or None for another answer."""
    content_type = answer.headers.get("content-type")
    if answer.status != 200:
        return None
    if not as_json:
        text = answer.body.decode("utf-8", "replace")
        expected = content_type == "text/plain; charset=utf-8"
        return (
            text
            if expected and text.startswith("pool:") and "\nprocess manager:" in text
            else None
        )
    if content_type != "application/json":
        return None
    try:
        page = json.loads(answer.body)
    except ValueError:
        return None
    if not isinstance(page, dict) or not {"pool", "process_manager", "accepted_conn"} <= set(page):
        return None
    return json.dumps(page, indent=2) + "\n"
