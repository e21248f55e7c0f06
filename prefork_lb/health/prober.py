"""The health prober: one gevent process for the whole server, forked by the master.

nginx Plus probes from every worker; here one process probes, so a peer sees one probe
per interval whatever the worker count, and writes what it learns into the zone, where
every worker's next pick sees it (``balance/peers.py`` rule 10).

Life:
1. Forked by the master (``master/arbiter.py``) with a ``ProberSpec`` (spec.py rules: it
   keeps only the zone, the log descriptors and stdio), after the first generation is up,
   again after every reload (the previous prober is stopped) and after it died (respawn;
   states are in the zone, ``state.py`` rule 3).
2. One greenlet per (check, peer): sleep, probe, count, store. A pair that is checking
   probes at once; the others first wait a random part of their interval, so a reload or a
   respawn never sends a burst. Every later wait is ``interval`` plus up to ``jitter``.
3. A probe is bounded: connect and read timeouts from the check, at most
   ``HEAD_LIMIT_BYTES`` of head and ``BODY_LIMIT_BYTES`` of body (an HTTP body is read only
   when the match tests it); garbage, a hang or a reset is a failed probe, never a stuck
   prober.
4. Logs: a warning on every state change ("upstream server ADDR is unhealthy: REASON"),
   nothing per passing probe. Zone writes and logging never overlap (state.py rule 2).
5. Signals: TERM/INT/QUIT exit at once (probes are idempotent), USR1 reopens the error
   log; it exits by itself when the master is gone. Its hub stamps
   ``H_PROBER_HEARTBEAT_NS`` every second: the master kills (and so respawns) a prober
   whose stamp is older than ``worker_heartbeat_timeout``, as it does a worker.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket as stdsocket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefork_lb.config.model import Address, Config, UpstreamServer
from prefork_lb.health.match import BadResponse, http_verdict, parse_head, stream_may_pass, stream_verdict
from prefork_lb.health.model import (
    BODY_LIMIT_BYTES,
    HEAD_LIMIT_BYTES,
    STREAM_LIMIT_BYTES,
    HealthCheck,
)
from prefork_lb.health.state import Verdict, initial_ok, peer_state, write_probe
from prefork_lb.zone import layout as L
from prefork_lb.zone.slots import peer_keys

if TYPE_CHECKING:
    from prefork_lb.master.spec import ProberSpec
    from prefork_lb.zone.zone import Zone

log = logging.getLogger("prefork_lb.error")
EXIT_BOOT_FAILED = 3


@dataclass(slots=True)
class PeerHealth:
    """One peer slot and the verdicts of every check that probes it."""

    slot: int
    addr: str
    slow_start: bool
    verdicts: list[Verdict] = field(default_factory=list)


@dataclass(slots=True)
class Target:
    check: HealthCheck
    server: UpstreamServer
    peer: PeerHealth
    verdict: Verdict


def build_targets(config: Config, peer_slots: dict[str, int], zone: Zone, reloaded: bool) -> list[Target]:
    """Every (check, peer) pair of ``config``, verdicts rebuilt from the zone (state.py rule 3)."""
    groups = {(u.context, u.name): u for u in config.all_upstreams()}
    peers: dict[int, PeerHealth] = {}
    targets = []
    for check in config.health_checks():
        up = groups[(check.context, check.upstream)]
        for key, server in zip(peer_keys(up), up.servers, strict=True):
            slot = peer_slots[key]
            peer = peers.get(slot)
            if peer is None:
                peer = peers[slot] = PeerHealth(slot, server.address.text, server.slow_start_s > 0)
            state = zone.peer_word(slot, L.P_HC_STATE)
            ok = initial_ok(state, reloaded, check.mandatory, check.persistent)
            verdict = Verdict(check.fails, check.passes, ok)
            peer.verdicts.append(verdict)
            targets.append(Target(check, server, peer, verdict))
    return targets


# ---- probes (gevent I/O; each returns "" for a pass, else the reason) ----


def _target_address(server: UpstreamServer, port: int) -> tuple[int, Any]:
    a: Address = server.address
    if a.family == "unix":
        return stdsocket.AF_UNIX, a.host
    family = stdsocket.AF_INET6 if a.family == "inet6" else stdsocket.AF_INET
    return family, (a.host, port or a.port)


def probe(target: Target) -> str:
    import gevent

    check = target.check
    try:
        if check.context == "http":
            return _probe_http(check, target.server)
        if check.udp:
            return _probe_udp(check, target.server)
        return _probe_tcp(check, target.server)
    except gevent.Timeout:
        return "timed out"
    except BadResponse as e:
        return f"invalid response ({e})"
    except OSError as e:
        return e.strerror or str(e)


def _connect(check: HealthCheck, server: UpstreamServer, kind: int) -> Any:
    import gevent.socket

    family, addr = _target_address(server, check.port)
    sock = gevent.socket.socket(family, kind)
    sock.settimeout(check.connect_timeout_s)
    try:
        sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock


_contexts: dict[int, Any] = {}  # id(check) -> its gevent SSLContext, made on first use


def _tls_context(check: HealthCheck) -> Any:
    """The location's proxy_ssl_* settings (http/upstream_tls.py rule 1), one per check."""
    ctx = _contexts.get(id(check))
    if ctx is None:
        import gevent.ssl

        from prefork_lb.tls.client import client_context

        ctx = client_context(
            gevent.ssl.SSLContext, check.tls_protocols, check.tls_ciphers, check.tls_verify, check.tls_cafile
        )
        _contexts[id(check)] = ctx
    return ctx


def _probe_http(check: HealthCheck, server: UpstreamServer) -> str:
    import gevent

    sock = _connect(check, server, stdsocket.SOCK_STREAM)
    if check.tls:
        import ssl

        try:
            sock = _tls_context(check).wrap_socket(sock, server_hostname=check.tls_name or None)
        except ssl.SSLError as e:
            sock.close()
            return f"SSL handshake failed ({e.reason or e})"
        except BaseException:
            sock.close()
            raise
    try:
        with gevent.Timeout(check.read_timeout_s):
            sock.settimeout(None)
            sock.sendall(check.request + b"\r\nHost: " + check.host.encode("latin-1") + b"\r\n\r\n")
            buf = b""
            while b"\r\n\r\n" not in buf:
                if len(buf) > HEAD_LIMIT_BYTES:
                    return "response head too long"
                chunk = sock.recv(16384)
                if not chunk:
                    if not buf:
                        return "connection closed before a response"
                    return "incomplete response head" if buf.startswith(b"HTTP/") else "invalid response"
                buf += chunk
            head, _, body = buf.partition(b"\r\n\r\n")
            status, headers = parse_head(head)
            match = check.http_match
            if match is not None and match.body is not None:
                length = next((v for n, v in headers if n == "content-length"), None)
                want = BODY_LIMIT_BYTES
                if length is not None and length.isdigit():
                    want = min(want, int(length))
                while len(body) < want:
                    chunk = sock.recv(min(65536, want - len(body)))
                    if not chunk:
                        break
                    body += chunk
            reason = http_verdict(match, status, headers, body)
            return f"{reason} from {check.uri}" if reason else ""
    finally:
        sock.close()


def _probe_tcp(check: HealthCheck, server: UpstreamServer) -> str:
    import gevent

    sock = _connect(check, server, stdsocket.SOCK_STREAM)
    try:
        match = check.stream_match
        if match is None:
            return ""
        with gevent.Timeout(check.read_timeout_s):
            sock.settimeout(None)
            if match.send:
                sock.sendall(match.send)
            if match.expect is None:
                return ""
            reply = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    return stream_verdict(match, reply) or "connection closed"
                reply += chunk
                verdict = stream_verdict(match, reply)
                if not verdict or not stream_may_pass(match, reply) or len(reply) >= STREAM_LIMIT_BYTES:
                    return verdict
    finally:
        sock.close()


def _probe_udp(check: HealthCheck, server: UpstreamServer) -> str:
    """With a match: send, and the reply must match. Without: send an empty datagram; the
    check fails only on an ICMP port unreachable (ECONNREFUSED) within the timeout."""
    import gevent

    sock = _connect(check, server, stdsocket.SOCK_DGRAM)
    try:
        match = check.stream_match
        sock.settimeout(None)
        sock.send(match.send if match is not None else b"")
        try:
            with gevent.Timeout(check.read_timeout_s):
                reply = sock.recv(65536)
        except gevent.Timeout:
            if match is None or match.expect is None:
                return ""  # no ICMP unreachable: up
            raise
        except ConnectionRefusedError:
            return "port unreachable"
        return stream_verdict(match, reply)
    finally:
        sock.close()


# ---- the process ----


class Prober:
    def __init__(self, zone: Zone, targets: list[Target]) -> None:
        self.zone = zone
        self.targets = targets

    def run_target(self, target: Target) -> None:
        import gevent

        check = target.check
        first = 0.0 if target.verdict.ok is None else random.uniform(0, check.interval_s)
        gevent.sleep(first)
        while True:
            reason = probe(target)
            self.record(target, reason)
            gevent.sleep(check.interval_s + (random.uniform(0, check.jitter_s) if check.jitter_s else 0))

    def record(self, target: Target, reason: str) -> None:
        passed = not reason
        peer = target.peer
        target.verdict.record(passed)
        state = peer_state(peer.verdicts)
        now_ms = int(time.time() * 1000)
        with self.zone:
            old = write_probe(self.zone, peer.slot, passed, state, peer.slow_start, now_ms)
        if old != state:  # rule 4, after the lock
            if state == L.HC_UNHEALTHY:
                log.warning("upstream server %s is unhealthy: %s", peer.addr, reason or "another check fails")
            elif state == L.HC_UP:
                log.warning("upstream server %s is healthy", peer.addr)
            else:
                log.warning("upstream server %s is checking", peer.addr)


def _watch_master(master_pid: int, zone: Zone) -> None:
    """Every second: the heartbeat the master checks (a hub that stops running gets the
    prober killed and respawned), and an exit once the master is gone."""
    import gevent

    while os.getppid() == master_pid:
        zone.mv[L.H_PROBER_HEARTBEAT_NS] = time.monotonic_ns()
        gevent.sleep(1.0)
    os._exit(0)


def run_prober(spec: ProberSpec) -> int:
    from prefork_lb.signals import MASTER_SIGNALS

    for sig in MASTER_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        import gevent
        from setproctitle import setproctitle

        from prefork_lb.log import reopen_error_log

        if "GEVENT_LOOP" not in os.environ:
            gevent.config.loop = "libev-cext"
        zone = spec.zone
        targets = build_targets(spec.config, dict(spec.peer_slots), zone, spec.reloaded)
        prober = Prober(zone, targets)
        _drop_privileges(spec.config, zone)
        setproctitle("prefork-lb: health prober")
    except Exception as e:
        log.critical("health prober failed to start: %r", e)
        return EXIT_BOOT_FAILED
    gevent.signal_handler(signal.SIGUSR1, reopen_error_log)
    # rule 2 states first: a reload that made a non-persistent check start over
    by_slot: dict[int, PeerHealth] = {t.peer.slot: t.peer for t in targets}
    now_ms = int(time.time() * 1000)
    changed = defaultdict(list)
    with zone:
        from prefork_lb.health.state import set_state

        for peer in by_slot.values():
            state = peer_state(peer.verdicts)
            if set_state(zone, peer.slot, state, peer.slow_start, now_ms) != state:
                changed[state].append(peer.addr)
    for addr in changed.get(L.HC_CHECKING, []):
        log.warning("upstream server %s is checking", addr)
    greenlets = [gevent.spawn(prober.run_target, t) for t in targets]
    gevent.spawn(_watch_master, spec.master_pid, zone)
    from prefork_lb.http.runtime import has_write_api

    if spec.servers is not None and has_write_api(spec.config):  # issue 19
        running: dict[int, tuple[tuple[str, str], list[Any]]] = {}
        for t, g in zip(targets, greenlets, strict=True):
            running.setdefault(t.peer.slot, ((t.check.context, t.check.upstream), []))[1].append(g)
        greenlets.append(gevent.spawn(_watch_servers, prober, spec, running))
    gevent.joinall(greenlets)
    return 0


def _drop_privileges(config: Config, zone: Zone) -> None:
    from prefork_lb.worker import privileges

    if config.user is None or os.getuid() != 0:
        return
    zone.lock()  # opens this process's own lock descriptor first
    zone.unlock()
    uid, gid = privileges.resolve(config.user, config.group)
    privileges.drop(uid, gid)


def prober_main(spec: ProberSpec) -> None:
    """Entry point after fork: never returns into the master's code."""
    import sys

    code = EXIT_BOOT_FAILED
    try:
        code = run_prober(spec)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _watch_servers(
    prober: Prober, spec: ProberSpec, running: dict[int, tuple[tuple[str, str], list[Any]]]
) -> None:
    """Issue 19: every second, the checked groups whose server list the write API changed
    (``zone/servers.py``): probe the servers added, stop probing the removed ones. A
    server added to a ``mandatory`` check's group starts "checking" (the API set it), so
    it is probed at once. ``running``: slot -> (its group, its probe greenlets), started
    from the config, which the first pass reconciles with the table."""
    import gevent

    from prefork_lb.zone.servers import group_key

    table, zone = spec.servers, spec.zone
    checks: dict[tuple[str, str], list[HealthCheck]] = defaultdict(list)
    for check in spec.config.health_checks():
        checks[(check.context, check.upstream)].append(check)
    watched: list[list[Any]] = []  # [group, entry, key, version seen]
    for group in checks:
        key = group_key(*group)
        entry = table.find(key)
        if entry >= 0:
            watched.append([group, entry, key, -1])  # -1: a respawned prober reconciles at once
    while True:  # the first pass runs before any probe ends: a slot the config gave a
        # server the API deleted (maybe another server's now) never gets a verdict
        for w in watched:
            group, entry, key, seen = w
            if table.key_of(entry) != key or table.version(entry) == seen:
                continue
            with zone:
                version, records = table.read(entry)
                states = {r.slot: zone.peer_word(r.slot, L.P_HC_STATE) for r in records}
            w[3] = version
            for r in records:
                if r.slot in running:
                    continue
                peer = PeerHealth(r.slot, r.server.address.text, r.server.slow_start_s > 0)
                spawned = []
                for check in checks[group]:
                    ok = initial_ok(states[r.slot], False, check.mandatory, False)
                    verdict = Verdict(check.fails, check.passes, ok)
                    peer.verdicts.append(verdict)
                    spawned.append(gevent.spawn(prober.run_target, Target(check, r.server, peer, verdict)))
                running[r.slot] = (group, spawned)
            for slot in [s for s, (g, _) in running.items() if g == group and s not in states]:
                for greenlet in running.pop(slot)[1]:
                    greenlet.kill(block=False)
        gevent.sleep(1.0)
