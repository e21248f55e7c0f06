"""systemd integration for the master: sd_notify and socket activation, in plain stdlib.

Rules:
1. Outside systemd everything here is a no-op: ``notify`` returns False when
   ``$NOTIFY_SOCKET`` is unset, ``listen_fds`` returns [] when ``$LISTEN_PID`` is not ours.
   Nothing here raises: a failed notification is logged at debug and reported as False,
   because a status message must never take the load balancer down.
2. Only the master talks to systemd. It keeps ``$NOTIFY_SOCKET`` for its whole life (it
   notifies READY/RELOADING/STOPPING/STATUS/MAINPID many times); every worker calls
   ``forget_notify_socket()`` right after fork, so a worker can never send READY=1 or
   STOPPING=1 for the service (the unit's ``NotifyAccess=main`` enforces the same thing
   on systemd's side).
3. One datagram per ``notify`` call, sent to the unix socket named by ``$NOTIFY_SOCKET``;
   a leading "@" names the abstract namespace ("\\0" + rest). ``RELOADING=1`` goes with
   ``MONOTONIC_USEC=`` (systemd >= 253 requires it for Type=notify-reload; older versions
   ignore it), see ``reloading()``.
4. Socket activation follows sd_listen_fds(3): fds 3 .. 3+$LISTEN_FDS-1 belong to us only
   if ``$LISTEN_PID`` is our pid; the variables are unset (as libsystemd does, whether or
   not they were ours) so neither workers nor an exec'd binary see stale values.
5. Passed sockets are matched to ``listen`` entries by ListenConfig.key, with IP literals
   compared by value (``[0:0::1]:80`` in the config matches a socket bound to ``::1``).
   An adopted socket is used *instead of* binding: systemd keeps its own copy of the fd,
   so the accept queue outlives restarts of the service. Passed sockets no config entry
   wants are closed (and logged), never silently served.
6. A binary upgrade's new master adopts with ``adopt_slots``: a ``reuseport`` address
   keeps every inherited slot socket (same queues), instead of slot 0 plus fresh binds.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefork_lb.config.model import ListenConfig

log = logging.getLogger("prefork_lb.error")

Key = tuple[str, str, int]  # (family, host, port) as ListenConfig.key spells it
SD_LISTEN_FDS_START = 3
NOTIFY_TIMEOUT_S = 2.0  # a blocked notify socket must not stall the master's loop for long

__all__ = [
    "Key",
    "adopt",
    "adopt_slots",
    "forget_notify_socket",
    "listen_fds",
    "mainpid",
    "monotonic_usec",
    "notify",
    "ready",
    "reloading",
    "socket_key",
    "status",
    "stopping",
]


# ---- sd_notify ---------------------------------------------------------------------------


def notify(state: str) -> bool:
    """Send ``state`` ("READY=1", "STATUS=...", newline-separated assignments) to systemd.

    Returns True if the datagram was sent, False if not running under a notify-type unit
    (``$NOTIFY_SOCKET`` unset) or if sending failed; never raises.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    elif not address.startswith("/"):
        log.debug("NOTIFY_SOCKET=%r: unsupported address, not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(NOTIFY_TIMEOUT_S)
            sock.sendto(state.encode(), address)
    except (OSError, ValueError) as e:  # ValueError: embedded NUL in a path, bad encoding
        log.debug("sd_notify(%r) to %r failed: %s", state, address, e)
        return False
    return True


def forget_notify_socket() -> None:
    """Drop ``$NOTIFY_SOCKET`` from this process's environment; call in workers after fork."""
    os.environ.pop("NOTIFY_SOCKET", None)


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd expects in MONOTONIC_USEC=."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def ready(status_text: str | None = None) -> bool:
    """READY=1 (startup finished, or a reload finished or was aborted)."""
    if status_text is None:
        return notify("READY=1")
    return notify("READY=1\nSTATUS=" + status_text.replace("\n", " "))


def reloading() -> bool:
    """RELOADING=1 with MONOTONIC_USEC; must be followed by ``ready()`` when the reload ends."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")


def stopping() -> bool:
    """STOPPING=1: the service is shutting down (graceful or fast)."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """STATUS=<one line>, shown by ``systemctl status``."""
    return notify("STATUS=" + text.replace("\n", " "))


def mainpid(pid: int) -> bool:
    """MAINPID=<pid>: hand the service over to another master (binary upgrade)."""
    return notify(f"MAINPID={pid}")


# ---- socket activation -------------------------------------------------------------------


def listen_fds(unset: bool = True) -> list[socket.socket]:
    """The sockets systemd passed us (socket activation), as non-blocking inheritable objects.

    Only when ``$LISTEN_PID`` is our pid and ``$LISTEN_FDS`` is a positive integer; else [].
    With ``unset`` (the default) LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES are removed from
    the environment in every case, as sd_listen_fds(unset_environment=1) does. Passed fds
    that are not sockets (ListenFIFO= and friends) are closed with a warning.
    """
    try:
        return _take_listen_fds()
    finally:
        if unset:
            for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(name, None)


def _take_listen_fds() -> list[socket.socket]:
    pid_text = os.environ.get("LISTEN_PID", "")
    count_text = os.environ.get("LISTEN_FDS", "")
    if not pid_text or not count_text:
        return []
    try:
        pid, count = int(pid_text), int(count_text)
    except ValueError:
        log.warning("socket activation: ignoring malformed LISTEN_PID/LISTEN_FDS")
        return []
    if pid != os.getpid() or count <= 0:
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            log.warning("socket activation: fd %d is not a usable socket (%s), closing it", fd, e)
            try:
                os.close(fd)
            except OSError:
                pass
            continue
        sock.set_inheritable(True)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def socket_key(sock: socket.socket) -> Key | None:
    """("inet"|"inet6", host, port) or ("unix", path, 0) of a listening stream socket, else None."""
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != socket.SOCK_STREAM:
            return None
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return None
        name = sock.getsockname()
    except OSError:  # closed, or not a socket
        return None
    if sock.family == socket.AF_INET:
        return ("inet", name[0], name[1])
    if sock.family == socket.AF_INET6:
        return ("inet6", name[0], name[1])
    if sock.family == socket.AF_UNIX:
        if isinstance(name, bytes):  # abstract namespace: Python returns b"\0name"
            name = "@" + name[1:].decode(errors="surrogateescape")
        if not name:
            return None  # unbound
        return ("unix", name, 0)
    return None


def adopt(sockets: list[socket.socket], wanted: dict[Key, ListenConfig]) -> dict[Key, socket.socket]:
    """Match passed sockets to listen entries; returns {ListenConfig.key: socket} to use.

    The returned sockets are to be used *instead of* binding those addresses (the master's
    ListenerSet must not call bind_one for them): systemd holds its own copy of each fd,
    so connections queued while the service restarts are accepted by the next master.
    The result is keyed by the config's spelling of the key, so ListenerSet can look it up.

    Every passed socket that is not returned is closed here: non-listening or non-stream
    sockets, addresses no listen entry names, and duplicates of an address already adopted
    (each is logged as a warning). The return value holds only sockets to use, so the
    caller never has to tell usable from closed ones.

    A ``reuseport`` entry needs one socket per worker; the adopted socket becomes slot 0's
    and the rest are bound by the master, which works only if systemd's socket has
    SO_REUSEPORT too (``ReusePort=yes`` in the .socket unit); a warning says so otherwise.
    """
    return {key: found[0] for key, found in _match(sockets, wanted, slots=False).items()}


def adopt_slots(
    sockets: list[socket.socket], wanted: dict[Key, ListenConfig]
) -> dict[Key, list[socket.socket]]:
    """As ``adopt``, for sockets inherited from the previous master (binary upgrade): a
    ``reuseport`` entry keeps every passed SO_REUSEPORT socket of its address, in order,
    as its slots. Closing a slot here would not lose connections at once (the old master
    still holds it) but the new master would bind a fresh one, and the old slot's queue
    would be reset when the old master exits."""
    return _match(sockets, wanted, slots=True)


def _match(
    sockets: list[socket.socket], wanted: dict[Key, ListenConfig], slots: bool
) -> dict[Key, list[socket.socket]]:
    by_value = {_normal(key): key for key in wanted}
    adopted: dict[Key, list[socket.socket]] = {}
    for sock in sockets:
        key = socket_key(sock)
        want = by_value.get(_normal(key)) if key is not None else None
        extra_slot = (
            slots
            and want in adopted
            and wanted[want].reuseport
            and bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
        )
        if want is None or (want in adopted and not extra_slot):
            if key is None:
                why = "not a listening stream socket"
            elif want is None:
                why = "no listen entry for this address"
            else:
                why = "more than one socket for this address"
            log.warning("socket activation: closing passed socket %s (%s)", _text(key), why)
            sock.close()
            continue
        if want in adopted:
            adopted[want].append(sock)
            continue
        if wanted[want].reuseport and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
            log.warning(
                "socket activation: %s is marked reuseport but the passed socket lacks "
                "SO_REUSEPORT (set ReusePort=yes in the .socket unit)",
                _text(key),
            )
        adopted[want] = [sock]
    return adopted


def _normal(key: Key | None) -> Key | None:
    """The key with IP literals in canonical form, so equal addresses compare equal."""
    if key is None:
        return None
    family, host, port = key
    if family in ("inet", "inet6"):
        af = socket.AF_INET6 if family == "inet6" else socket.AF_INET
        try:
            host = socket.inet_ntop(af, socket.inet_pton(af, host))
        except (OSError, ValueError):
            pass
    elif family == "unix" and host.startswith("/"):
        host = os.path.normpath(host)
    return (family, host, port)


def _text(key: Key | None) -> str:
    if key is None:
        return "(unknown)"
    family, host, port = key
    if family == "unix":
        return f"unix:{host}"
    if family == "inet6":
        return f"[{host}]:{port}"
    return f"{host}:{port}"
