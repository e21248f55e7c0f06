"""Dropping root in workers (the master keeps root for binding, logs and respawning).

Order (shared/reference/http-conformance-and-faults.md section 6.7): first thing in the
child, before the gevent hub starts: ``setgroups([])``, ``setgid``, ``setuid``; then
verify that ``setuid(0)`` now fails, and set PR_SET_NO_NEW_PRIVS so nothing exec'd later
can regain privileges. Anything that must be opened as root (the zone's lock descriptor)
is opened before. Log files the master creates are given to the worker user so workers can
reopen them on USR1; an existing file is never chowned (log.prepare_log_files).
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import resource

PR_SET_NO_NEW_PRIVS = 38


class PrivilegeError(Exception):
    pass


def resolve(user: str, group: str | None) -> tuple[int, int]:
    """(uid, gid) for ``user`` (and ``group``, default: the user's primary group)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f'unknown user "{user}"') from None
    if group is None:
        return pw.pw_uid, pw.pw_gid
    try:
        return pw.pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f'unknown group "{group}"') from None


def drop(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good; raises PrivilegeError if root could come back."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise PrivilegeError("setuid(0) succeeded after dropping privileges")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")


def raise_nofile(limit: int) -> str | None:
    """worker_rlimit_nofile: soft and hard limit (raising the hard limit needs root or
    CAP_SYS_RESOURCE). If that is refused, the soft limit goes as high as the hard limit
    allows and the returned message says so; as in nginx, a refused setrlimit is an alert,
    never a worker that fails to start."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        return None
    except (ValueError, OSError) as e:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < min(limit, hard):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
                soft = min(limit, hard)
            except (ValueError, OSError):
                pass
        return f"setrlimit(RLIMIT_NOFILE, {limit}) failed ({e}), using {soft}"
