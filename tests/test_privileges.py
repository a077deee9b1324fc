"""Names to ids, who runfcgi may become, and the directories it creates when asked."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

import pytest

from django_runfcgi import directories, privileges
from django_runfcgi.privileges import Account, PrivilegeError


def test_user_name_gives_its_uid_primary_group_and_name() -> None:
    entry = pwd.getpwuid(os.getuid())
    assert privileges.account(entry.pw_name, None) == Account(
        entry.pw_uid, entry.pw_gid, entry.pw_name
    )


def test_numeric_user_is_looked_up_for_its_group() -> None:
    entry = pwd.getpwuid(os.getuid())
    assert privileges.account(str(entry.pw_uid), None).gid == entry.pw_gid


def test_group_overrides_the_primary_group() -> None:
    entry = pwd.getpwuid(os.getuid())
    group = grp.getgrgid(0).gr_name
    assert privileges.account(entry.pw_name, group).gid == 0


def test_uid_without_passwd_entry_needs_a_group() -> None:
    unused = next(uid for uid in range(54321, 60000) if not _has_user(uid))
    with pytest.raises(PrivilegeError) as caught:
        privileges.account(str(unused), None)
    assert str(caught.value) == (
        f"user='{unused}' has no entry in /etc/passwd, so it has no primary group; "
        "give group= too."
    )
    assert privileges.account(str(unused), "0") == Account(unused, 0, None)


def _has_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_ids_are_taken_as_given() -> None:
    assert privileges.user_id("socketowner", "4321") == 4321
    assert privileges.group_id("socketgroup", "33") == 33


def test_becoming_oneself_needs_no_root() -> None:
    me = Account(os.getuid(), os.getgid(), None)
    privileges.check_can_become(me)
    privileges.drop(me)
    assert (os.getuid(), os.getgid()) == (me.uid, me.gid)


def test_root_warning_says_what_to_pass() -> None:
    assert privileges.ROOT_WARNING.startswith(
        "Running as root; pass user= to drop privileges after bind"
    )


def test_missing_directory_is_an_error_that_says_what_to_run(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "mysite" / "fcgi.sock"
    with pytest.raises(directories.DirectoryError) as caught:
        directories.ensure("socket", sock, create=False, owner=Account(1, 1, "daemon"))
    assert str(caught.value) == (
        f"The directory of socket={str(sock)!r} does not exist; create it "
        f"(mkdir -p {sock.parent} && chown daemon {sock.parent}) or pass mkdir=true."
    )
    assert not sock.parent.parent.exists()


def test_mkdir_creates_every_missing_level_searchable_by_all(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "mysite" / "fcgi.sock"
    old = os.umask(0o077)
    try:
        directories.ensure("socket", sock, create=True, owner=None)
    finally:
        os.umask(old)
    for directory in (sock.parent, sock.parent.parent):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o755


def test_mkdir_gives_the_directory_to_the_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    sock = tmp_path / "mysite" / "fcgi.sock"
    directories.ensure("socket", sock, create=True, owner=Account(1, 1, "daemon"))
    st = os.stat(sock.parent)
    assert (st.st_uid, st.st_gid) == (1, 1)


def test_an_existing_directory_is_left_as_it_is(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    directories.ensure("pidfile", tmp_path / "fcgi.pid", create=True, owner=None)
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o700


def test_a_file_in_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    with pytest.raises(directories.DirectoryError) as caught:
        directories.ensure("socket", tmp_path / "run" / "fcgi.sock", create=True, owner=None)
    assert str(caught.value) == (
        f"Cannot use socket={str(tmp_path / 'run' / 'fcgi.sock')!r}: "
        f"{str(tmp_path / 'run')!r} is not a directory."
    )
