"""The status API: NGINX Plus-shaped JSON documents read from the shared zone (docs/api.md).

Rules:
1. Everything comes from the zone (peer and status-zone records, worker rows, the master's
   header), so whichever worker answers, the figures are the same; only ``keepalive`` (idle
   pooled connections) is the answering worker's own.
2. Reads take no lock: every figure is one aligned 8-byte load; a document may mix values
   from a few microseconds apart, never torn ones.
3. Every version from 1 to 9 serves the same documents (clients negotiate via ``/api/``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from prefork_lb import __version__
from prefork_lb.cache.status import caches_document
from prefork_lb.zone import layout as L

if TYPE_CHECKING:
    from prefork_lb.balance.peers import Peer, PeerGroup
    from prefork_lb.http.runtime import HttpRuntime
    from prefork_lb.stream.runtime import StreamServerRuntime

VERSIONS: Final = list(range(1, 10))
EMPTY_COLLECTIONS: Final = (
    "slabs",
    "ssl",
    "resolvers",
    "http/location_zones",
    "http/limit_reqs",
    "http/limit_conns",
)
_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")


class ApiError(Exception):
    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.text = text

    def document(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "text": self.text, "code": self.code}}


def iso_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


class StatusReader:
    """Builds the documents for one request (cheap: a few hundred loads)."""

    def __init__(self, http: HttpRuntime, streams: dict[tuple[str, str, int], StreamServerRuntime]) -> None:
        self.http = http
        self.streams = streams
        self.zone = http.zone
        self.mv = http.zone.mv
        self.peers = http.zone.peers
        self.now_ms = int(time.time() * 1000)
        self._rows = [r for r in range(self.zone.rows) if self.mv[L.row_base(r, self.peers) + L.R_PID]]

    # ---- helpers ----

    def _row_sum(self, field: int) -> int:
        return sum(int(self.mv[L.row_base(r, self.peers) + field]) for r in self._rows)

    def _processing(self, slot: int) -> int:
        return sum(int(self.mv[L.active_index(r, self.peers, slot)]) for r in self._rows)

    def _responses(self, base: int) -> dict[str, Any]:
        mv = self.mv
        doc: dict[str, Any] = {k: int(mv[base + L.P_S_1XX + i]) for i, k in enumerate(_CLASSES)}
        doc["codes"] = {
            str(code): int(mv[base + L.P_S_CODES + i])
            for i, code in enumerate(L.CODES)
            if mv[base + L.P_S_CODES + i]
        }
        doc["total"] = int(mv[base + L.P_S_TOTAL])
        return doc

    # ---- top level ----

    def nginx(self, address: str) -> dict[str, Any]:
        mv = self.mv
        return {
            "version": __version__,
            "build": "prefork-lb",
            "address": address,
            "generation": int(mv[L.H_GENERATION]),
            "load_timestamp": iso_ms(int(mv[L.H_LOAD_MS])),
            "timestamp": iso_ms(self.now_ms),
            "pid": os.getpid(),
            "ppid": os.getppid(),
        }

    def processes(self) -> dict[str, Any]:
        return {"respawned": int(self.mv[L.H_RESPAWNED])}

    def connections(self) -> dict[str, Any]:
        return {
            "accepted": int(self.mv[L.H_ACCEPTED_GONE]) + self._row_sum(L.R_ACCEPTED),
            "dropped": int(self.mv[L.H_DROPPED_GONE]) + self._row_sum(L.R_DROPPED),
            "active": self._row_sum(L.R_ACTIVE),
            "idle": self._row_sum(L.R_IDLE),
        }

    def http_requests(self) -> dict[str, Any]:
        total = current = 0
        for zone in self._zones(self.http.zones.values()):
            total += int(self.mv[zone.base + L.P_REQUESTS])
            current += self._processing(self._slot(zone.base))
        return {"total": total, "current": current}

    @staticmethod
    def _slot(base: int) -> int:
        return (base - L.HEADER_WORDS) // L.PEER_WORDS

    @staticmethod
    def _zones(zones: Any) -> list[Any]:
        unique: dict[str, Any] = {}
        for z in zones:
            unique.setdefault(z.name, z)
        return list(unique.values())

    def http_server_zones(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for zone in self._zones(self.http.zones.values()):
            b = zone.base
            out[zone.name] = {
                "processing": self._processing(self._slot(b)),
                "requests": int(self.mv[b + L.P_REQUESTS]),
                "responses": self._responses(b),
                "discarded": int(self.mv[b + L.P_S_DISCARDED]),
                "received": int(self.mv[b + L.P_S_RECEIVED]),
                "sent": int(self.mv[b + L.P_S_SENT]),
            }
        return out

    def stream_server_zones(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for zone in self._zones(rt.zone for rt in self.streams.values()):
            b = zone.base
            r = self._responses(b)
            out[zone.name] = {
                "processing": self._processing(self._slot(b)),
                "connections": int(self.mv[b + L.P_REQUESTS]),
                "sessions": {"2xx": r["2xx"], "4xx": r["4xx"], "5xx": r["5xx"], "total": r["total"]},
                "discarded": int(self.mv[b + L.P_S_DISCARDED]),
                "received": int(self.mv[b + L.P_S_RECEIVED]),
                "sent": int(self.mv[b + L.P_S_SENT]),
            }
        return out

    # ---- upstreams ----

    def _state(self, peer: Peer) -> str:
        if peer.down:
            return "down"
        if peer.hc:  # active health checks (health/state.py) come before passive ones
            hc = self.mv[peer._b + L.P_HC_STATE]
            if hc == L.HC_UNHEALTHY:
                return "unhealthy"
            if hc == L.HC_CHECKING:
                return "checking"
        now_s = self.now_ms // 1000
        if peer.max_fails and peer.fails >= peer.max_fails and now_s - peer.checked_s <= peer.fail_timeout_s:
            return "unavail"
        return "up"

    def _peer_common(self, index: int, peer: Peer) -> dict[str, Any]:
        mv, b = self.mv, peer._b
        doc: dict[str, Any] = {
            "id": index,
            "server": peer.addr,
            "name": peer.name,
            "backup": peer.backup,
            "weight": peer.weight,
            "state": self._state(peer),
            "active": peer.conns,
        }
        if peer.max_conns:
            doc["max_conns"] = peer.max_conns
        doc["sent"] = int(mv[b + L.P_S_SENT])
        doc["received"] = int(mv[b + L.P_S_RECEIVED])
        doc["fails"] = int(mv[b + L.P_FAILED_TOTAL])
        doc["unavail"] = int(mv[b + L.P_UNAVAIL])
        checks = int(mv[b + L.P_HC_CHECKS]) if peer.hc else 0
        doc["health_checks"] = {
            "checks": checks,
            "fails": int(mv[b + L.P_HC_FAILS]) if peer.hc else 0,
            "unhealthy": int(mv[b + L.P_HC_UNHEALTHY]) if peer.hc else 0,
        }
        if checks and mv[b + L.P_HC_LAST]:
            doc["health_checks"]["last_passed"] = mv[b + L.P_HC_LAST] == 1
        downstart = int(mv[b + L.P_DOWNSTART_MS])
        if peer.hc and doc["state"] in ("checking", "unhealthy"):
            downstart = int(mv[b + L.P_HC_DOWNSTART_MS]) or downstart
        downtime = int(mv[b + L.P_S_DOWNTIME_MS])
        if downstart and doc["state"] != "up":
            downtime += max(0, self.now_ms - downstart)
            doc["downstart"] = iso_ms(downstart)
        doc["downtime"] = downtime
        if mv[b + L.P_SELECTED_MS]:
            doc["selected"] = iso_ms(int(mv[b + L.P_SELECTED_MS]))
        return doc

    def _avg(self, b: int, total: int, count: int) -> int | None:
        n = int(self.mv[b + count])
        return int(self.mv[b + total]) // n if n else None

    def _http_peer(self, index: int, peer: Peer) -> dict[str, Any]:
        doc = self._peer_common(index, peer)
        b = peer._b
        doc["requests"] = int(self.mv[b + L.P_REQUESTS])
        doc["responses"] = self._responses(b)
        for key, total, count in (
            ("header_time", L.P_S_HEADER_MS, L.P_S_HEADER_N),
            ("response_time", L.P_S_RESPONSE_MS, L.P_S_RESPONSE_N),
        ):
            avg = self._avg(b, total, count)
            if avg is not None:
                doc[key] = avg
        cumulative = 0
        buckets = []
        for i, bound in enumerate((*L.HIST_BOUNDS_MS, None)):
            cumulative += int(self.mv[b + L.P_S_HIST + i])
            buckets.append([bound / 1000 if bound is not None else "+Inf", cumulative])
        doc["response_time_histogram"] = {
            "buckets": buckets,
            "sum": int(self.mv[b + L.P_S_RESPONSE_MS]) / 1000,
            "count": int(self.mv[b + L.P_S_RESPONSE_N]),
        }
        return doc

    def _stream_peer(self, index: int, peer: Peer) -> dict[str, Any]:
        doc = self._peer_common(index, peer)
        b = peer._b
        doc["connections"] = int(self.mv[b + L.P_REQUESTS])
        for key, total, count in (
            ("connect_time", L.P_S_HEADER_MS, L.P_S_HEADER_N),
            ("first_byte_time", L.P_S_FIRST_BYTE_MS, L.P_S_HEADER_N),
            ("response_time", L.P_S_RESPONSE_MS, L.P_S_RESPONSE_N),
        ):
            avg = self._avg(b, total, count)
            if avg is not None:
                doc[key] = avg
        return doc

    def _upstream(self, name: str, group: PeerGroup, keepalive: int, peer: Callable[[int, Peer], Any]) -> Any:
        return {
            "peers": [peer(i, p) for i, p in enumerate(group.all_peers())],
            "keepalive": keepalive,
            "zombies": 0,
            "zone": name,
        }

    def http_upstreams(self) -> dict[str, Any]:
        return {
            name: self._upstream(name, up.group, len(up.pool), self._http_peer)
            for name, up in self.http.upstreams.items()
            if not up.config.implicit
        }

    def stream_upstreams(self) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for rt in self.streams.values():
            up = rt.upstream
            if up.config.name not in seen and not up.config.implicit:
                seen[up.config.name] = self._upstream(up.config.name, up.group, 0, self._stream_peer)
        return seen

    def http_caches(self) -> dict[str, Any]:
        """NGINX Plus's ``http/caches`` (cache/status.py), from the shared cache indexes."""
        return caches_document(self.http.caches)

    def workers(self) -> list[dict[str, Any]]:
        import psutil

        out = []
        now_ns = time.monotonic_ns()
        for r in self._rows:
            base = L.row_base(r, self.peers)
            pid = int(self.mv[base + L.R_PID])
            doc: dict[str, Any] = {
                "pid": pid,
                "generation": int(self.mv[base + L.R_GENERATION]),
                "slot": int(self.mv[base + L.R_SLOT]),
                "state": "shutting down" if self.mv[base + L.R_DRAINING] else "running",
                "uptime": round(max(0, self.now_ms - int(self.mv[base + L.R_STARTED_MS])) / 1000, 3),
                "connections": int(self.mv[base + L.R_ACTIVE]),
                "heartbeat_age": round(max(0, now_ns - int(self.mv[base + L.R_HEARTBEAT_NS])) / 1e9, 3),
            }
            try:
                proc = psutil.Process(pid)
                doc["rss"] = proc.memory_info().rss
                cpu = proc.cpu_times()
                doc["cpu"] = round(cpu.user + cpu.system, 3)
            except (psutil.Error, OSError):
                doc["rss"] = None
                doc["cpu"] = None
            out.append(doc)
        return out

    # ---- routing ----

    def all_documents(self, address: str) -> dict[str, Any]:
        """Every document (for /metrics)."""
        return {
            "nginx": self.nginx(address),
            "processes": self.processes(),
            "connections": self.connections(),
            "http_requests": self.http_requests(),
            "http_server_zones": self.http_server_zones(),
            "http_upstreams": self.http_upstreams(),
            "stream_server_zones": self.stream_server_zones(),
            "stream_upstreams": self.stream_upstreams(),
            "workers": self.workers(),
            "http_caches": self.http_caches(),
            "reloads": int(self.mv[L.H_RELOADS]),
            "uptime_s": max(0, self.now_ms - int(self.mv[L.H_START_MS])) / 1000,
        }

    def route(self, rest: str, address: str) -> Any:
        """``rest``: the path after the location prefix, e.g. "" or "9/http/upstreams"."""
        parts = [p for p in rest.split("/") if p]
        if not parts:
            return VERSIONS
        version = parts[0]
        if not version.isdigit() or int(version) not in VERSIONS:
            raise ApiError(404, "UnsupportedVersion", "unsupported API version")
        parts = parts[1:]
        tree: dict[str, Any] = {
            "nginx": lambda: self.nginx(address),
            "processes": self.processes,
            "connections": self.connections,
            "http": {
                "requests": self.http_requests,
                "server_zones": self.http_server_zones,
                "upstreams": self.http_upstreams,
                "caches": self.http_caches,
            },
            "stream": {"server_zones": self.stream_server_zones, "upstreams": self.stream_upstreams},
            "prefork": {"workers": self.workers},
        }
        # NGINX Plus features we do not have: empty collections, as NGINX Plus answers when
        # none is configured (a 404 makes nginx-plus-go-client fail the whole scrape)
        for path in EMPTY_COLLECTIONS:
            section, _, name = path.rpartition("/")
            (tree[section] if section else tree)[name] = dict
        node: Any = tree
        for i, part in enumerate(parts):
            if isinstance(node, dict) and part in node:
                node = node[part]
                continue
            if callable(node):  # a named entry inside a collection: /http/upstreams/<name>
                document = node()
                if isinstance(document, dict) and part in document and i == len(parts) - 1:
                    return document[part]
            raise ApiError(404, "PathNotFound", "path not found")
        if callable(node):
            return node()
        return sorted(node)


def dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()
