"""Users and groups of a guest, looked up in the guest's own /etc/passwd and /etc/group.

Shared by the start path (``<inituser>``/``<initgroup>``) and ``vsv exec`` (``--user``,
``--group``); standard library only, so the ``vsv`` command can import it without the runtime.
"""

from __future__ import annotations

from supervisor.errors import RuntimeFailure


def parse_passwd(text: str) -> dict[str, tuple[int, int, str]]:
    """name -> (uid, gid, home) from an ``/etc/passwd`` text, ignoring malformed lines."""
    out: dict[str, tuple[int, int, str]] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 7 and parts[2].isdigit() and parts[3].isdigit():
            out.setdefault(parts[0], (int(parts[2]), int(parts[3]), parts[5]))
    return out


def parse_group(text: str) -> dict[str, int]:
    """name -> gid from an ``/etc/group`` text, ignoring malformed lines."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out.setdefault(parts[0], int(parts[2]))
    return out


def resolve_ids(
    user: str | None,
    group: str | None,
    passwd_text: str,
    group_text: str,
    fields: tuple[str, str] = ("inituser", "initgroup"),
) -> tuple[int | None, int | None, str | None]:
    """(uid, gid, home) for a user and group given by name or number: numbers as is, names
    looked up in the guest's passwd and group texts.

    A user brings its primary group when no group is given, and its home directory. ``fields``
    name the user and the group in error messages (the XML elements, or ``vsv exec``'s options).
    """
    uid: int | None = None
    gid: int | None = None
    home: str | None = None
    if user is not None:
        users = parse_passwd(passwd_text)
        if user.isdigit():
            uid = int(user)
            for u, g, h in users.values():
                if u == uid:
                    gid, home = g, h
                    break
        elif user in users:
            uid, gid, home = users[user]
        else:
            raise RuntimeFailure(f"{fields[0]} {user!r} is not in the guest's /etc/passwd")
    if group is not None:
        if group.isdigit():
            gid = int(group)
        else:
            groups = parse_group(group_text)
            if group not in groups:
                raise RuntimeFailure(f"{fields[1]} {group!r} is not in the guest's /etc/group")
            gid = groups[group]
    return uid, gid, home
