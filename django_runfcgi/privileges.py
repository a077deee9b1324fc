"""Users and groups: names to ids for the socket's owner, and dropping root after bind.

An init script or a unit without ``User=`` starts runfcgi as root, which may then bind
in /run and give the socket to the web server's group; the project itself has no reason
to run as root. With ``user=`` the server becomes that user once the socket is bound and
the pidfile written, before it loads the project. Without it a server running as root
says so when it starts, as uWSGI does: a warning, since old scripts must keep working.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

ROOT_WARNING = (
    "Running as root; pass user= to drop privileges after bind (for example user=mysite)."
)


class PrivilegeError(ValueError):
    """A user or group that does not exist, or that this process cannot become."""


@dataclass(frozen=True)
class Account:
    """Who the server becomes: a uid, its group, and the name for supplementary groups."""

    uid: int
    gid: int
    name: str | None  # None for a uid without a passwd entry: no supplementary groups

    def describe(self) -> str:
        return self.name if self.name is not None else f"uid {self.uid}"


def _number(value: str) -> int | None:
    return int(value) if value.isdigit() else None


def user_id(option: str, value: str) -> int:
    """A user name or numeric uid, as ``chown`` takes it."""
    number = _number(value)
    if number is not None:
        return number
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise PrivilegeError(
            f"{option}={value!r}: no such user on this system; give a user name from "
            "/etc/passwd or a numeric uid."
        ) from None


def group_id(option: str, value: str) -> int:
    """A group name or numeric gid, as ``chgrp`` takes it."""
    number = _number(value)
    if number is not None:
        return number
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise PrivilegeError(
            f"{option}={value!r}: no such group on this system; give a group name from "
            "/etc/group or a numeric gid."
        ) from None


def account(user: str, group: str | None) -> Account:
    """The account ``user=`` (and ``group=``) name; the group defaults to the user's own."""
    number = _number(user)
    try:
        entry = pwd.getpwuid(number) if number is not None else pwd.getpwnam(user)
    except KeyError:
        if number is None:
            raise PrivilegeError(
                f"user={user!r}: no such user on this system; give a user name from "
                "/etc/passwd or a numeric uid."
            ) from None
        if group is None:
            raise PrivilegeError(
                f"user={user!r} has no entry in /etc/passwd, so it has no primary group; "
                "give group= too."
            ) from None
        return Account(number, group_id("group", group), None)
    gid = group_id("group", group) if group is not None else entry.pw_gid
    return Account(entry.pw_uid, gid, entry.pw_name)


def is_current(target: Account) -> bool:
    """This process already runs as ``target`` (a reloaded master, which dropped before)."""
    return (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) == (
        target.uid,
        target.uid,
        target.gid,
        target.gid,
    )


def check_can_become(target: Account) -> None:
    """Fail before anything is bound: only root can change to another user."""
    if os.geteuid() == 0 or is_current(target):
        return
    try:
        current = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        current = f"uid {os.geteuid()}"
    raise PrivilegeError(
        f"user={target.describe()!r} needs root to switch to, but runfcgi runs as "
        f"{current!r}; start it as root, or leave user= and group= out."
    )


def drop(target: Account) -> None:
    """Become ``target`` for good: supplementary groups, then group, then user.

    The order matters: once the uid is no longer 0 the groups can no longer be changed.
    """
    if is_current(target):
        return
    if target.name is not None:
        os.initgroups(target.name, target.gid)
    else:
        os.setgroups([target.gid])
    os.setgid(target.gid)
    os.setuid(target.uid)


def running_as_root() -> bool:
    return os.geteuid() == 0
