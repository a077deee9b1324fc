"""Unix sockets bound with their mode, owner and group from the start, and nothing left over."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from django_runfcgi import sockets
from django_runfcgi.addresses import Unix


@pytest.fixture
def directory() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="rf-", dir="/tmp") as name:
        yield Path(name)


def other_group() -> int:
    """A group this process may give a file to, other than its own."""
    if os.geteuid() == 0:
        return 33 if os.getegid() != 33 else 1
    others = [gid for gid in os.getgroups() if gid != os.getegid()]
    if not others:
        pytest.skip("needs root or a supplementary group")
    return others[0]


def test_socketmode_sets_the_mode_whatever_the_umask(directory: Path) -> None:
    target = Unix(directory / "fcgi.sock")
    listener = sockets.bind_unix(target, umask=0o077, mode=0o660)
    with listener.sock:
        assert stat.S_IMODE(os.lstat(target.path).st_mode) == 0o660
        listener.remove_socket_file()
    assert not target.path.exists()


def test_without_socketmode_the_umask_decides(directory: Path) -> None:
    target = Unix(directory / "fcgi.sock")
    listener = sockets.bind_unix(target, umask=0o027)
    with listener.sock:
        assert stat.S_IMODE(os.lstat(target.path).st_mode) == 0o750
        assert listener.sock.getsockname() == str(target.path)


def test_socketgroup_is_set_before_the_socket_takes_its_name(directory: Path) -> None:
    target = Unix(directory / "fcgi.sock")
    gid = other_group()
    listener = sockets.bind_unix(target, umask=0o022, mode=0o660, group=gid)
    with listener.sock:
        st = os.lstat(target.path)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, gid)
        assert (st.st_dev, st.st_ino) == listener.created
        assert os.listdir(directory) == ["fcgi.sock"], "the temporary name is left"
        # Bound under its temporary name, it is still the socket of socket=.
        assert sockets.bound_to(listener.sock, target)
        assert not sockets.bound_to(listener.sock, Unix(directory / "other.sock"))
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(target.path))


def bind_as_nobody(target: Unix, group: int) -> str:
    """bind_unix() in a forked child that became nobody; the BindError's text, or ''."""
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - reported through the pipe
        status = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sockets.bind_unix(target, umask=0o022, group=group).close()
            status = 0
        except sockets.BindError as err:
            os.write(write_fd, str(err).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        message = pipe.read().decode()
    assert os.waitpid(child, 0)[1] == 0
    return message


def test_a_group_that_cannot_be_given_fails_in_words_and_leaves_nothing(
    directory: Path,
) -> None:
    target = Unix(directory / "fcgi.sock")
    if os.geteuid() == 0:
        directory.chmod(0o777)
        gid = 33
        message = bind_as_nobody(target, gid)
    else:
        gid = next(g for g in range(60000, 65000) if g not in os.getgroups())
        with pytest.raises(sockets.BindError) as caught:
            sockets.bind_unix(target, umask=0o022, group=gid)
        message = str(caught.value)
    assert message == (
        f"Cannot give socket {str(target.path)!r} to socketgroup= gid {gid}: "
        "runfcgi's user must be root or a member of that group."
    )
    assert os.listdir(directory) == []


def test_a_live_socket_is_not_replaced_with_a_group(directory: Path) -> None:
    target = Unix(directory / "fcgi.sock")
    first = sockets.bind_unix(target, umask=0o022)
    with first.sock, pytest.raises(sockets.BindError) as caught:
        sockets.bind_unix(target, umask=0o022, group=other_group())
    assert "Another server is listening" in str(caught.value)
    assert os.listdir(directory) == ["fcgi.sock"]


def test_a_path_too_long_for_the_temporary_name_says_so(directory: Path) -> None:
    name = "s" * (sockets.UNIX_PATH_MAX - len(str(directory)) - 3)
    target = Unix(directory / name)
    with pytest.raises(sockets.BindError) as caught:
        sockets.bind_unix(target, umask=0o022, group=os.getegid())
    assert "too long for a unix socket with socketowner= or socketgroup=" in str(caught.value)
    sockets.bind_unix(target, umask=0o022).close()
