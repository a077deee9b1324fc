"""allow=: which TCP clients may connect, how the value is read, and the refusal log.

The parsing and the filters are tested on values; the option on a real server over
loopback, where 127.0.0.2 is a second client address on this machine. The same on a
real network, between namespaces and through nginx and Apache, is tests/e2e/test_netns.py.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from django_runfcgi import lifecycle, options, protocols
from django_runfcgi.options import OptionError, parse_words, resolve
from django_runfcgi.protocols.clients import (
    Allowed,
    LoopbackOnly,
    RefusalLog,
    WebServerAddrs,
    parse_allow,
)
from tests.support.clients import ajp_request, fcgi_request, scgi_request
from tests.support.net import free_port
from tests.support.netns import refused_at_once
from tests.support.processes import tagged_pids
from tests.support.runner import Runner

REQUESTS = {"fcgi": fcgi_request, "scgi": scgi_request, "ajp": ajp_request}


def ignoring_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b""]


def config_from(*words: str) -> options.Config:
    values, _ = parse_words(words)
    return resolve(values, cwd=Path("/srv"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def refusals(caplog: pytest.LogCaptureFixture) -> tuple[RefusalLog, Clock]:
    caplog.set_level(logging.WARNING, logger="django_runfcgi.protocols")
    clock = Clock()
    return RefusalLog(clock=clock), clock


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Refused")]


@pytest.mark.parametrize(
    ("value", "entries"),
    [
        ("198.18.0.2", ["198.18.0.2"]),
        (" 198.18.0.2 , 198.18.1.0/24 ", ["198.18.0.2", "198.18.1.0/24"]),
        ("198.18.0.0/15,0.0.0.0/0", ["198.18.0.0/15", "0.0.0.0/0"]),
        ("198.18.0.2/32", ["198.18.0.2"]),
        ("::1,2001:2::/48,[2001:2::5]", ["::1", "2001:2::/48", "2001:2::5"]),
        ("2001:0002:0000::0005", ["2001:2::5"]),
        # IPv4-mapped: the IPv4 address or network it stands for.
        ("::ffff:198.18.0.2", ["198.18.0.2"]),
        ("::ffff:198.18.0.0/112", ["198.18.0.0/16"]),
        ("::ffff:0:0/96", ["0.0.0.0/0"]),
        # Scope ids: an interface name or index, on link-local addresses.
        ("fe80::1%eth0", ["fe80::1%eth0"]),
        ("fe80::%2/64", ["fe80::%2/64"]),
        ("[fe80::1%veth-web]", ["fe80::1%veth-web"]),
        ("198.18.0.2,198.18.0.2", ["198.18.0.2"]),
    ],
)
def test_allow_reads_addresses_and_networks(value: str, entries: list[str]) -> None:
    assert [str(entry) for entry in parse_allow(value)] == entries
    config = config_from("host=::", "port=1", f"allow={value}")
    assert [str(entry) for entry in config.allow or ()] == entries


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "allow='': no address is given; list addresses and networks such as 127.0.0.1"),
        ("web1", "allow='web1': 'web1' is not an IP address or network; use addresses and"),
        ("198.18.0.2,localhost", "'localhost' is not an IP address or network"),
        ("198.18.0.256", "'198.18.0.256' is not an IP address or network"),
        ("198.18.0.2,,198.18.0.3", "an entry is empty; separate addresses and networks by"),
        ("198.18.0.2,", "an entry is empty"),
        ("198.18.0.1/24", "'198.18.0.1/24' has bits set past its prefix; write the network as "
         "198.18.0.0/24, or the address alone."),
        ("198.18.0.0/33", "'198.18.0.0/33' has a prefix longer than the address; use /0 to /32."),
        ("2001:2::/129", "use /0 to /128"),
        ("198.18.0.0/", "'198.18.0.0/' needs a prefix length after '/', such as /24."),
        ("198.18.0.0/x", "needs a prefix length"),
        ("198.18.0.0/٢٤", "needs a prefix length"),
        ("198.18.0.2%eth0", "'198.18.0.2%eth0' has a scope (%eth0), which only a link-local "
         "IPv6 address (fe80::/10) takes; leave it out."),
        ("2001:2::1%eth0", "has a scope (%eth0)"),
        ("fe80::1%", "'fe80::1%' has an empty scope after '%'"),
        ("198.18.0.0/24/8", "needs a prefix length"),
    ],
)  # fmt: skip
def test_bad_allow_is_one_line_naming_the_entry(value: str, message: str) -> None:
    with pytest.raises(OptionError) as raised:
        config_from("host=127.0.0.1", "port=8025", f"allow={value}")
    text = str(raised.value)
    assert message in text
    assert text.startswith(f"allow={value!r}: ")
    assert "\n" not in text


def test_allow_from_python_takes_a_list() -> None:
    """runfastcgi(allow=[...]) as well as allow='a,b'."""
    config = resolve({"host": "::", "port": 1, "allow": ["198.18.0.2", "2001:2::/48"]})
    assert [str(entry) for entry in config.allow or ()] == ["198.18.0.2", "2001:2::/48"]
    with pytest.raises(OptionError, match="allow=True: no address is given"):
        resolve({"host": "::", "port": 1, "allow": True})


def test_allow_is_for_tcp_not_unix_sockets() -> None:
    with pytest.raises(OptionError, match=r"allow= applies to TCP clients; who may connect"):
        config_from("socket=/run/mysite/fcgi.sock", "allow=198.18.0.2")
    assert config_from("allow=198.18.0.2").allow is not None  # an inherited socket may be TCP


def test_allow_is_unset_by_default() -> None:
    assert config_from("protocol=scgi", "host=127.0.0.1", "port=8025").allow is None


@pytest.mark.parametrize(
    ("value", "addr", "allowed"),
    [
        ("198.18.0.2", ("198.18.0.2", 40000), True),
        ("198.18.0.2", ("198.18.0.3", 40000), False),
        ("198.18.0.2", ("127.0.0.1", 40000), False),  # loopback is not implied
        ("198.18.0.0/24", ("198.18.0.255", 40000), True),
        ("198.18.0.0/24", ("198.18.1.0", 40000), False),
        # A client of a dual-stack socket (host=::) is matched as IPv4.
        ("198.18.0.2", ("::ffff:198.18.0.2", 40000, 0, 0), True),
        ("::ffff:198.18.0.2", ("198.18.0.2", 40000), True),
        ("::/0", ("::ffff:198.18.0.2", 40000, 0, 0), False),
        ("2001:2::/48", ("2001:2:0:5::2", 40000, 0, 0), True),
        ("2001:2::/48", ("2001:3::2", 40000, 0, 0), False),
        ("198.18.0.0/15", ("2001:2::2", 40000, 0, 0), False),
        # Scopes: by name (the host's %suffix) or index (the address's fourth item).
        # (9999: an interface index this machine does not have, so no name is looked up.)
        ("fe80::1", ("fe80::1", 40000, 0, 9999), True),
        ("fe80::1%9999", ("fe80::1", 40000, 0, 9999), True),
        ("fe80::1%9998", ("fe80::1", 40000, 0, 9999), False),
        ("fe80::1%eth0", ("fe80::1%eth0", 40000, 0, 9999), True),
        ("fe80::1%eth1", ("fe80::1%eth0", 40000, 0, 9999), False),
        ("fe80::%eth0/64", ("fe80::abcd%eth0", 40000, 0, 9999), True),
        ("fe80::%9998/64", ("fe80::abcd%eth0", 40000, 0, 9999), False),
        ("fe80::1%lo", ("fe80::1", 40000, 0, socket.if_nametoindex("lo")), True),
        ("fe80::1%lo", ("fe80::1", 40000, 0, 9999), False),
        # Unix-socket clients are not the option's business.
        ("198.18.0.2", "", True),
        ("198.18.0.2", b"", True),
    ],
)
def test_allowed_clients(value: str, addr: Any, allowed: bool) -> None:
    check = Allowed("SCGI", parse_allow(value))
    assert check(addr) is allowed


@pytest.mark.parametrize("protocol", ["fcgi", "scgi", "ajp"])
def test_allow_replaces_each_protocols_default(
    protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FCGI_WEB_SERVER_ADDRS", raising=False)
    default = protocols.build(protocol, ignoring_app, multiprocess=True)
    remote = ("198.18.0.2", 40000)
    assert default.allows(remote) is (protocol == "fcgi")  # as Django 1.8's runfcgi
    assert default.allows(("127.0.0.1", 40000))
    gateway = protocols.build(
        protocol, ignoring_app, multiprocess=True, allow=parse_allow("198.18.0.2")
    )
    assert gateway.allows(remote)
    assert not gateway.allows(("198.18.0.3", 40000))
    assert not gateway.allows(("127.0.0.1", 40000))
    assert gateway.allows("")


def test_allow_takes_the_place_of_fcgi_web_server_addrs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FCGI_WEB_SERVER_ADDRS", "198.18.0.3")
    caplog.set_level(logging.WARNING, logger="django_runfcgi.protocols")
    gateway = protocols.build(
        "fcgi", ignoring_app, multiprocess=True, allow=parse_allow("198.18.0.2")
    )
    assert [r.getMessage() for r in caplog.records] == [
        "allow= is given, so FCGI_WEB_SERVER_ADDRS='198.18.0.3' is ignored; only the "
        "addresses in allow= may connect."
    ]
    assert gateway.allows(("198.18.0.2", 40000))
    assert not gateway.allows(("198.18.0.3", 40000))


@pytest.mark.parametrize(
    ("words", "warned"),
    [
        (("host=0.0.0.0", "port=8001"), True),
        (("host=198.18.0.1", "port=8001"), True),
        (("host=::", "port=8001"), True),
        (("host=127.0.0.1", "port=8001"), False),
        (("host=localhost", "port=8001"), False),
        (("host=::1", "port=8001"), False),
        (("host=0.0.0.0", "port=8001", "allow=198.18.0.2"), False),
        (("protocol=scgi", "host=0.0.0.0", "port=8001"), False),
        (("socket=/run/mysite/fcgi.sock",), False),
        ((), False),
    ],
)
def test_fastcgi_open_to_every_client_beyond_loopback_says_so(
    words: tuple[str, ...],
    warned: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("FCGI_WEB_SERVER_ADDRS", raising=False)
    caplog.set_level(logging.WARNING, logger="django_runfcgi")
    config = config_from("daemonize=false", *words)
    with socket.socket() as sock:
        lifecycle.warn_if_open(config, sock)
    expected = (
        f"FastCGI on {config.bind} lets in every client that can reach it; "
        "allow= names the web servers that may connect."
    )
    assert open_lines(caplog) == ([expected] if warned else [])
    monkeypatch.setenv("FCGI_WEB_SERVER_ADDRS", "198.18.0.2")
    caplog.clear()
    with socket.socket() as sock:
        lifecycle.warn_if_open(config, sock)
    assert open_lines(caplog) == []


def open_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("FastCGI on")]


@pytest.mark.parametrize(
    ("check", "reason"),
    [
        (lambda log: Allowed("AJP", parse_allow("198.18.0.2"), log), "not in allow="),
        (
            lambda log: LoopbackOnly("AJP", log),
            "only loopback clients may connect; allow= lets other addresses in",
        ),
        (lambda log: WebServerAddrs("198.18.0.2", log), "not in FCGI_WEB_SERVER_ADDRS"),
    ],
    ids=["allow", "loopback", "web-server-addrs"],
)
def test_each_filter_logs_a_refusal_in_one_line(
    refusals: tuple[RefusalLog, Clock], caplog: pytest.LogCaptureFixture, check: Any, reason: str
) -> None:
    log, _ = refusals
    assert not check(log)(("::ffff:198.18.0.9", 40000, 0, 0))
    what = "FastCGI" if "FCGI" in reason else "AJP"
    assert refusal_lines(caplog) == [f"Refused {what} connection from 198.18.0.9: {reason}"]


def test_one_line_per_address_a_minute_with_the_count_left_out(
    refusals: tuple[RefusalLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    log, clock = refusals
    check = Allowed("SCGI", parse_allow("198.18.0.2"), log)
    for _ in range(50):
        assert not check(("198.18.0.9", 40000))
        clock.now += 1.0  # the next line is due 60 s after the first
    assert not check(("198.18.0.7", 40000))
    assert not check(("fe80::9", 40000, 0, socket.if_nametoindex("lo")))
    clock.now += 10.0
    assert not check(("198.18.0.9", 40000))
    assert refusal_lines(caplog) == [
        "Refused SCGI connection from 198.18.0.9: not in allow=",
        "Refused SCGI connection from 198.18.0.7: not in allow=",
        "Refused SCGI connection from fe80::9%lo: not in allow=",
        "Refused SCGI connection from 198.18.0.9: not in allow= "
        "(not logged: 49 more from this address since its last line)",
    ]


def test_a_scan_from_many_addresses_gets_a_bounded_number_of_lines(
    refusals: tuple[RefusalLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    log, clock = refusals
    check = Allowed("AJP", parse_allow("198.18.0.2"), log)
    for host in range(5000):
        assert not check((f"2001:2::{host:x}", 40000, 0, 0))
    lines = refusal_lines(caplog)
    assert len(lines) == RefusalLog.LINES_PER_WINDOW
    clock.now += RefusalLog.WINDOW
    assert not check(("198.18.0.9", 40000))
    last = refusal_lines(caplog)[-1]
    unlogged = 5000 - RefusalLog.LINES_PER_WINDOW
    assert last == (
        "Refused AJP connection from 198.18.0.9: not in allow= "
        f"(not logged: {unlogged} from other addresses)"
    )


def test_refusal_counts_are_shared_with_forked_workers(
    refusals: tuple[RefusalLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    """A prefork worker's refusal holds back the next line of every other worker."""
    log, _ = refusals
    check = Allowed("SCGI", parse_allow("198.18.0.2"), log)
    pid = os.fork()
    if pid == 0:
        logging.disable(logging.CRITICAL)
        check(("198.18.0.9", 40000))
        check(("198.18.0.9", 40000))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    check(("198.18.0.9", 40000))
    assert refusal_lines(caplog) == []
    check(("198.18.0.8", 40000))
    assert refusal_lines(caplog) == ["Refused SCGI connection from 198.18.0.8: not in allow="]


def served_from(address: tuple[str, int], source: str, protocol: str) -> int:
    """The status of a request from the `source` address, over a connection of its own."""
    with socket.create_connection(address, 10, source_address=(source, 0)) as sock:
        return REQUESTS[protocol](address, "GET", "/echo/", sock=sock, timeout=10).status


@pytest.mark.parametrize("protocol", ["fcgi", "scgi", "ajp"])
def test_a_real_server_lets_in_only_allowed_addresses(runner: Runner, protocol: str) -> None:
    """Over loopback: 127.0.0.2 is listed, 127.0.0.1 (allowed by default) is not."""
    port = free_port()
    address = ("127.0.0.1", port)
    run = runner.serve(
        f"protocol={protocol}", "host=127.0.0.1", f"port={port}", "daemonize=false",
        "allow=127.0.0.2,198.18.0.0/15", "method=prefork", "minspare=2", "maxspare=3",
        address=address,
    )  # fmt: skip
    assert served_from(address, "127.0.0.2", protocol) == 200
    assert [refused_at_once(address, "127.0.0.1") for _ in range(10)] == [True] * 10
    assert served_from(address, "127.0.0.2", protocol) == 200
    name = {"fcgi": "FastCGI", "scgi": "SCGI", "ajp": "AJP"}[protocol]
    lines = [line for line in run.stderr.splitlines() if "Refused" in line]
    assert len(lines) == 1, run.describe()
    assert lines[0].endswith(f"[WARNING] Refused {name} connection from 127.0.0.1: not in allow=")


def test_fcgi_allow_wins_over_the_environment(runner: Runner) -> None:
    port = free_port()
    address = ("127.0.0.1", port)
    run = runner.serve(
        "host=127.0.0.1", f"port={port}", "daemonize=false", "allow=127.0.0.2",
        env={"FCGI_WEB_SERVER_ADDRS": "127.0.0.1"}, address=address,
    )  # fmt: skip
    assert served_from(address, "127.0.0.2", "fcgi") == 200
    assert refused_at_once(address, "127.0.0.1")
    assert "FCGI_WEB_SERVER_ADDRS='127.0.0.1' is ignored" in run.stderr


def test_bad_allow_fails_on_the_terminal_before_detaching(runner: Runner) -> None:
    port = free_port()
    run = runner.run("protocol=scgi", "host=127.0.0.1", f"port={port}", "allow=198.18.0.2,web1")
    assert run.proc.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines == [
        "CommandError: allow='198.18.0.2,web1': 'web1' is not an IP address or network; use "
        "addresses and networks such as 127.0.0.1, 198.18.0.0/24, ::1, 2001:db8::/32 or "
        "fe80::1%eth0."
    ], run.describe()
    assert tagged_pids(runner.tag) == []
