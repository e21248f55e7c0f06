"""A Python replay of nginx-plus-go-client (github nginxinc/nginx-plus-go-client, client/nginx.go,
API version 9) for compatibility tests: the same requests on the wire, the same way of reading
the answers. Written from reading that client, not copied from it.

What it reproduces, and why each part matters to a server that claims NGINX Plus's API:

1. The wire: Go's net/http DefaultClient over ONE keep-alive connection (its Transport reuses
   idle connections): ``Host``, ``User-Agent: Go-http-client/1.1``, ``Content-Length`` only
   when there is a body (POST, PATCH), ``Content-Type: application/json`` on POST and PATCH,
   ``Accept-Encoding: gzip`` (and a gzip answer is inflated transparently); a DELETE has no
   body and no Content-Length. Releases before nginx-plus-go-client PR #448 (January 2025)
   sent PATCH without a Content-Type (``PlusClient(..., patch_content_type=False)``). GET
   follows redirects (Go's default policy), so the endpoint ``http://host/api`` works
   through nginx's ``/api`` -> ``/api/`` redirect. Every request
   sent is recorded in ``GoTransport.sent`` (method, path, headers, body).
2. The paths: ``GET {endpoint}`` lists the versions; reads are
   ``{endpoint}/{version}/{path}``; POST goes to ``.../servers/`` and DELETE and PATCH to
   ``.../servers/{id}/`` (with the trailing slash the Go client adds).
3. The bodies: Go's ``json.Marshal`` of ``UpstreamServer`` / ``StreamUpstreamServer``:
   compact, fields in struct order, ``omitempty`` rules (the pointer fields are sent when
   set, even as 0/false; ``server`` always; ``id`` never in a PATCH body: the client zeroes
   it because NGINX Plus rejects it there).
4. The reading: Go's ``json.Unmarshal`` into the client's structs (``go_decode``): keys
   match the json tag or the field name case-insensitively, unknown keys are ignored, but
   a value of the wrong JSON type (a number where a string is expected, a fraction or a
   negative number into an integer) is an error that fails the whole call. An answer with
   an unexpected status is read as NGINX Plus's error document (``apiErrorResponse``).
5. The flows: ``update_http_servers`` / ``update_stream_servers`` do what
   ``UpdateHTTPServers`` does: GET the servers, POST the missing ones, DELETE the ones not
   wanted, PATCH the ones whose parameters differ after applying the client's defaults
   (``hasSameParametersAs``): so a server whose documents do not round-trip would be
   PATCHed on every call.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

GO_UA = "Go-http-client/1.1"
CLIENT_VERSIONS = (4, 5, 6, 7, 8, 9)  # supportedAPIVersions
PATH_NOT_FOUND = "PathNotFound"


# ---- Go's json.Unmarshal, for the types the client decodes into ----


class GoDecodeError(Exception):
    """What ``json.Unmarshal`` returns for a value of the wrong type."""


Struct = tuple[tuple[str, str | None, Any], ...]  # (Go field name, json tag or None, type)


def _struct(*fields: tuple[str, str | None, Any]) -> dict[str, Any]:
    return {"struct": fields}


def go_decode(value: Any, typ: Any, where: str = "$") -> Any:
    """``value`` (parsed JSON) decoded into ``typ`` as Go would; a GoDecodeError where Go
    fails. Types: "string", "int", "uint64", "bool", {"struct": fields}, ("slice", t),
    ("map", t). The result: structs as dicts keyed by Go field name."""
    if value is None:  # null leaves the zero value, for any type
        return None
    if typ == "string":
        if not isinstance(value, str):
            raise GoDecodeError(f"cannot unmarshal {type(value).__name__} into string at {where}")
        return value
    if typ in ("int", "uint64"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise GoDecodeError(f"cannot unmarshal {value!r} into {typ} at {where}")
        if typ == "uint64" and value < 0:
            raise GoDecodeError(f"cannot unmarshal {value!r} into uint64 at {where}")
        return value
    if typ == "bool":
        if not isinstance(value, bool):
            raise GoDecodeError(f"cannot unmarshal {value!r} into bool at {where}")
        return value
    if isinstance(typ, tuple) and typ[0] == "slice":
        if not isinstance(value, list):
            raise GoDecodeError(f"cannot unmarshal {type(value).__name__} into a slice at {where}")
        return [go_decode(v, typ[1], f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(typ, tuple) and typ[0] == "map":
        if not isinstance(value, dict):
            raise GoDecodeError(f"cannot unmarshal {type(value).__name__} into a map at {where}")
        return {k: go_decode(v, typ[1], f"{where}.{k}") for k, v in value.items()}
    assert isinstance(typ, dict)
    if not isinstance(value, dict):
        raise GoDecodeError(f"cannot unmarshal {type(value).__name__} into a struct at {where}")
    out: dict[str, Any] = {}
    fields: Struct = typ["struct"]
    for key, v in value.items():  # an exact name first, then a case-insensitive one
        match = next((f for f in fields if (f[1] or f[0]) == key), None)
        if match is None:
            match = next((f for f in fields if (f[1] or f[0]).lower() == key.lower()), None)
        if match is None:
            continue  # unknown keys are ignored
        out[match[0]] = go_decode(v, match[2], f"{where}.{key}")
    return out


U = "uint64"
API_ERROR = _struct(
    ("RequestID", "request_id", "string"),
    ("Href", "href", "string"),
    (
        "Error",
        "error",
        _struct(("Text", "text", "string"), ("Code", "code", "string"), ("Status", "status", "int")),
    ),
)
UPSTREAM_SERVER = _struct(
    ("MaxConns", "max_conns", "int"),
    ("MaxFails", "max_fails", "int"),
    ("Backup", "backup", "bool"),
    ("Down", "down", "bool"),
    ("Weight", "weight", "int"),
    ("Server", "server", "string"),
    ("FailTimeout", "fail_timeout", "string"),
    ("SlowStart", "slow_start", "string"),
    ("Route", "route", "string"),
    ("Service", "service", "string"),
    ("ID", "id", "int"),
    ("Drain", "drain", "bool"),
)
STREAM_UPSTREAM_SERVER = _struct(*(f for f in UPSTREAM_SERVER["struct"] if f[0] not in ("Route", "Drain")))
HTTP_CODES = _struct(
    *(
        (f"C{c}", str(c), U)
        for c in (100, 101, 102, 200, 201, 202, 204, 206, 300, 301, 302, 303, 304, 307, 400, 401, 403,
                  404, 405, 408, 409, 411, 412, 413, 414, 415, 416, 429, 444, 494, 495, 496, 497, 499,
                  500, 501, 502, 503, 504, 507)
    )
)  # fmt: skip
RESPONSES = _struct(
    ("Codes", None, HTTP_CODES),
    ("Responses1xx", "1xx", U),
    ("Responses2xx", "2xx", U),
    ("Responses3xx", "3xx", U),
    ("Responses4xx", "4xx", U),
    ("Responses5xx", "5xx", U),
    ("Total", None, U),
)
SSL = _struct(
    ("Handshakes", None, U),
    ("HandshakesFailed", "handshakes_failed", U),
    ("SessionReuses", "session_reuses", U),
    ("NoCommonProtocol", "no_common_protocol", U),
    ("NoCommonCipher", "no_common_cipher", U),
    ("HandshakeTimeout", "handshake_timeout", U),
    ("PeerRejectedCert", "peer_rejected_cert", U),
    (
        "VerifyFailures",
        "verify_failures",
        _struct(
            ("NoCert", "no_cert", U),
            ("ExpiredCert", "expired_cert", U),
            ("RevokedCert", "revoked_cert", U),
            ("HostnameMismatch", "hostname_mismatch", U),
            ("Other", None, U),
        ),
    ),
)
HEALTH_CHECKS = _struct(
    ("Checks", None, U), ("Fails", None, U), ("Unhealthy", None, U), ("LastPassed", "last_passed", "bool")
)
_PEER_COMMON = (
    ("Server", None, "string"),
    ("Service", None, "string"),
    ("Name", None, "string"),
    ("Selected", None, "string"),
    ("Downstart", None, "string"),
    ("State", None, "string"),
    ("SSL", None, SSL),
    ("HealthChecks", "health_checks", HEALTH_CHECKS),
    ("ID", None, "int"),
    ("MaxConns", "max_conns", "int"),
    ("Sent", None, U),
    ("Received", None, U),
    ("Fails", None, U),
    ("Unavail", None, U),
    ("Active", None, U),
    ("Downtime", None, U),
    ("Weight", None, "int"),
    ("ResponseTime", "response_time", U),
    ("Backup", None, "bool"),
)
PEER = _struct(
    *_PEER_COMMON,
    ("Responses", None, RESPONSES),
    ("Requests", None, U),
    ("HeaderTime", "header_time", U),
)
STREAM_PEER = _struct(
    *_PEER_COMMON,
    ("Connections", None, U),
    ("ConnectTime", "connect_time", "int"),
    ("FirstByteTime", "first_byte_time", "int"),
)
QUEUE = _struct(("Size", None, "int"), ("MaxSize", "max_size", "int"), ("Overflows", None, U))
UPSTREAMS = (
    "map",
    _struct(
        ("Zone", None, "string"),
        ("Peers", None, ("slice", PEER)),
        ("Queue", None, QUEUE),
        ("Keepalive", None, "int"),
        ("Zombies", None, "int"),
    ),
)
STREAM_UPSTREAMS = (
    "map",
    _struct(("Zone", None, "string"), ("Peers", None, ("slice", STREAM_PEER)), ("Zombies", None, "int")),
)
CACHE_STATS = (("Responses", None, U), ("Bytes", None, U))
EXTENDED_CACHE_STATS = _struct(
    *CACHE_STATS, ("ResponsesWritten", "responses_written", U), ("BytesWritten", "bytes_written", U)
)  # CacheStats is embedded: its fields are promoted
CACHES = (
    "map",
    _struct(
        ("Size", None, U),
        ("MaxSize", "max_size", U),
        ("Cold", None, "bool"),
        ("Hit", None, _struct(*CACHE_STATS)),
        ("Stale", None, _struct(*CACHE_STATS)),
        ("Updating", None, _struct(*CACHE_STATS)),
        ("Revalidated", None, _struct(*CACHE_STATS)),
        ("Miss", None, _struct(*CACHE_STATS)),
        ("Expired", None, EXTENDED_CACHE_STATS),
        ("Bypass", None, EXTENDED_CACHE_STATS),
    ),
)
NGINX_INFO = _struct(
    ("Version", None, "string"),
    ("Build", None, "string"),
    ("Address", None, "string"),
    ("LoadTimestamp", "load_timestamp", "string"),
    ("Timestamp", None, "string"),
    ("Generation", None, U),
    ("ProcessID", "pid", U),
    ("ParentProcessID", "ppid", U),
)

I64 = "int"  # Go's int64: the same JSON rule as int
SESSIONS = _struct(
    ("Sessions2xx", "2xx", U), ("Sessions4xx", "4xx", U), ("Sessions5xx", "5xx", U), ("Total", None, U)
)
SERVER_ZONES = (
    "map",
    _struct(
        ("Processing", None, U),
        ("Requests", None, U),
        ("Responses", None, RESPONSES),
        ("Discarded", None, U),
        ("Received", None, U),
        ("Sent", None, U),
        ("SSL", None, SSL),
    ),
)
STREAM_SERVER_ZONES = (
    "map",
    _struct(
        ("Processing", None, U),
        ("Connections", None, U),
        ("Sessions", None, SESSIONS),
        ("Discarded", None, U),
        ("Received", None, U),
        ("Sent", None, U),
        ("SSL", None, SSL),
    ),
)
LOCATION_ZONES = (
    "map",
    _struct(
        ("Requests", None, I64),
        ("Responses", None, RESPONSES),
        ("Discarded", None, I64),
        ("Received", None, I64),
        ("Sent", None, I64),
    ),
)
RESOLVERS = (
    "map",
    _struct(
        ("Requests", "requests", _struct(("Name", None, I64), ("Srv", None, I64), ("Addr", None, I64))),
        (
            "Responses",
            "responses",
            _struct(
                *(
                    (n, None, I64)
                    for n in (
                        "Noerror",
                        "Formerr",
                        "Servfail",
                        "Nxdomain",
                        "Notimp",
                        "Refused",
                        "Timedout",
                        "Unknown",
                    )
                )
            ),
        ),
    ),
)
SLABS = (
    "map",
    _struct(
        (
            "Slots",
            None,
            ("map", _struct(("Used", None, U), ("Free", None, U), ("Reqs", None, U), ("Fails", None, U))),
        ),
        ("Pages", None, _struct(("Used", None, U), ("Free", None, U))),
    ),
)
LIMIT_REQS = (
    "map",
    _struct(
        ("Passed", None, U),
        ("Delayed", None, U),
        ("Rejected", None, U),
        ("DelayedDryRun", "delayed_dry_run", U),
        ("RejectedDryRun", "rejected_dry_run", U),
    ),
)
LIMIT_CONNS = (
    "map",
    _struct(("Passed", None, U), ("Rejected", None, U), ("RejectedDryRun", "rejected_dry_run", U)),
)
PROCESSES = _struct(("Respawned", None, I64))
HTTP_REQUESTS = _struct(("Total", None, U), ("Current", None, U))
CONNECTIONS = _struct(("Accepted", None, U), ("Dropped", None, U), ("Active", None, U), ("Idle", None, U))
WORKERS = (
    "slice",
    _struct(
        ("ID", None, "int"),
        ("ProcessID", "pid", U),
        ("HTTP", "http", _struct(("HTTPRequests", "requests", HTTP_REQUESTS))),
        ("Connections", None, CONNECTIONS),
    ),
)
ZONE_SYNC = _struct(
    (
        "Zones",
        None,
        ("map", _struct(("RecordsPending", "records_pending", U), ("RecordsTotal", "records_total", U))),
    ),
    (
        "Status",
        None,
        _struct(
            ("BytesIn", "bytes_in", U),
            ("MsgsIn", "msgs_in", U),
            ("MsgsOut", "msgs_out", U),
            ("BytesOut", "bytes_out", U),
            ("NodesOnline", "nodes_online", U),
        ),
    ),
)


# ---- the servers, as the client's structs ----


@dataclass
class UpstreamServer:
    """``client.UpstreamServer`` (``stream``: ``StreamUpstreamServer``, no route/drain)."""

    server: str
    max_conns: int | None = None  # Go pointers: None is nil (omitted), 0 is sent
    max_fails: int | None = None
    backup: bool | None = None
    down: bool | None = None
    weight: int | None = None
    fail_timeout: str = ""
    slow_start: str = ""
    route: str = ""
    service: str = ""
    id: int = 0
    drain: bool = False
    stream: bool = False

    def marshal(self) -> bytes:
        """Go's json.Marshal: struct order, omitempty."""
        doc: dict[str, Any] = {}
        for key in ("max_conns", "max_fails", "backup", "down", "weight"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        doc["server"] = self.server
        for key in ("fail_timeout", "slow_start") + (() if self.stream else ("route",)) + ("service",):
            if getattr(self, key):
                doc[key] = getattr(self, key)
        if self.id:
            doc["id"] = self.id
        if self.drain and not self.stream:
            doc["drain"] = True
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decoded(cls, doc: dict[str, Any], stream: bool) -> UpstreamServer:
        return cls(
            server=doc.get("Server") or "",
            max_conns=doc.get("MaxConns"),
            max_fails=doc.get("MaxFails"),
            backup=doc.get("Backup"),
            down=doc.get("Down"),
            weight=doc.get("Weight"),
            fail_timeout=doc.get("FailTimeout") or "",
            slow_start=doc.get("SlowStart") or "",
            route=doc.get("Route") or "",
            service=doc.get("Service") or "",
            id=doc.get("ID") or 0,
            drain=bool(doc.get("Drain")),
            stream=stream,
        )

    def with_defaults(self) -> UpstreamServer:
        """``applyDefaults``."""
        return dataclasses.replace(
            self,
            max_conns=0 if self.max_conns is None else self.max_conns,
            max_fails=1 if self.max_fails is None else self.max_fails,
            fail_timeout=self.fail_timeout or "10s",
            slow_start=self.slow_start or "0s",
            backup=False if self.backup is None else self.backup,
            down=False if self.down is None else self.down,
            weight=1 if self.weight is None else self.weight,
        )

    def same_parameters_as(self, other: UpstreamServer) -> bool:
        """``hasSameParametersAs``: the id of ``other``, defaults applied, every field equal."""
        return dataclasses.replace(self, id=other.id).with_defaults() == other.with_defaults()


def add_port(server: str) -> str:
    """``addPortToServer``."""
    if len(server.split(":")) == 2 or len(server.split("]:")) == 2 or server.startswith("unix:"):
        return server
    return f"{server}:80"


# ---- the wire ----


@dataclass
class Sent:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class GoTransport:
    """net/http's DefaultClient: one reused keep-alive connection, redirects on GET."""

    host: str
    port: int
    sent: list[Sent] = field(default_factory=list)
    connections: int = 0
    _sock: socket.socket | None = None
    _buf: bytes = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=15)
            self._buf = b""
            self.connections += 1
        return self._sock

    def do(
        self, method: str, url: str, body: bytes | None = None, content_type: bool = True
    ) -> tuple[int, dict[str, str], bytes]:
        for _ in range(10):  # Go's default redirect policy: at most 10
            status, headers, data = self._round_trip(method, urlsplit(url).path, body, content_type)
            if method == "GET" and status in (301, 302, 303, 307, 308) and "location" in headers:
                location = headers["location"]
                url = location if "://" in location else f"http://{self.host}:{self.port}{location}"
                continue
            return status, headers, data
        raise RuntimeError("stopped after 10 redirects")

    def _round_trip(
        self, method: str, path: str, body: bytes | None, content_type: bool
    ) -> tuple[int, dict[str, str], bytes]:
        headers = [("Host", f"{self.host}:{self.port}"), ("User-Agent", GO_UA)]
        if body is not None:
            headers.append(("Content-Length", str(len(body))))
            if content_type:
                headers.append(("Content-Type", "application/json"))
        headers.append(("Accept-Encoding", "gzip"))
        raw = f"{method} {path} HTTP/1.1\r\n".encode()
        raw += b"".join(f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n" + (body or b"")
        self.sent.append(Sent(method, path, headers, body or b""))
        reused = self._sock is not None
        try:
            self._connect().sendall(raw)
            return self._read_response(method)
        except (ConnectionError, EOFError):
            if not reused:
                raise
            self.close()  # the server closed the idle connection: Go retries once on a new one
            self._connect().sendall(raw)
            return self._read_response(method)

    def _recv(self) -> bytes:
        assert self._sock is not None
        data = self._sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        return data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            self._buf += self._recv()
        out, self._buf = self._buf.split(marker, 1)
        return out

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += self._recv()
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _read_response(self, method: str) -> tuple[int, dict[str, str], bytes]:
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            data = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._read_until(b"\r\n")
                    break
                data += self._read_exact(size)
                self._read_exact(2)
        elif "content-length" in headers:
            data = self._read_exact(int(headers["content-length"]))
        else:  # close-delimited
            data = self._buf
            try:
                while True:
                    data += self._recv()
            except EOFError:
                pass
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        if headers.get("content-encoding", "").lower() == "gzip":
            data = gzip.decompress(data)
        return status, headers, data


# ---- the client ----


class PlusError(Exception):
    """The client's ``internalError`` built from NGINX Plus's error document."""

    def __init__(self, message: str, status: int = 0, code: str = "", text: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.text = text


class PlusClient:
    """``NginxClient`` with the methods the compatibility tests replay."""

    def __init__(
        self, endpoint: str, version: int = 9, check_api: bool = False, patch_content_type: bool = True
    ) -> None:
        parts = urlsplit(endpoint)
        assert parts.hostname is not None and parts.port is not None
        self.endpoint = endpoint
        self.version = version
        self.patch_content_type = patch_content_type
        self.http = GoTransport(parts.hostname, parts.port)
        if version not in CLIENT_VERSIONS:
            raise PlusError(f"API version {version}: not supported by the client")
        if check_api and version not in self.get_api_versions():
            raise PlusError(f"API version {version}: not supported by the server")

    def close(self) -> None:
        self.http.close()

    # -- plumbing (get, post, delete, patch and the error reading) --

    @staticmethod
    def _mismatch(data: bytes, message: str) -> PlusError:
        """``createResponseMismatchError``: the body read as NGINX Plus's error document."""
        try:
            doc = go_decode(json.loads(data), API_ERROR) or {}
        except (ValueError, GoDecodeError) as e:
            return PlusError(f"{message}: failed to read the response body: {e}")
        err = doc.get("Error") or {}
        return PlusError(
            f"{message}: error.status={err.get('Status')}; error.text={err.get('Text')}; "
            f"error.code={err.get('Code')}; request_id={doc.get('RequestID')}; href={doc.get('Href')}",
            err.get("Status") or 0,
            err.get("Code") or "",
            err.get("Text") or "",
        )

    def get_api_versions(self) -> list[int]:
        status, _, data = self.http.do("GET", self.endpoint)
        if status != 200:
            raise self._mismatch(
                data, f'failed to get endpoint "{self.endpoint}", expected 200, got {status}'
            )
        versions = go_decode(json.loads(data), ("slice", "int"))
        assert isinstance(versions, list)
        return versions

    def get_max_api_version(self) -> int:
        return min(max(self.get_api_versions()), max(CLIENT_VERSIONS))

    def _url(self, path: str, slash: bool = False) -> str:
        return f"{self.endpoint}/{self.version}/{path}" + ("/" if slash else "")

    def get(self, path: str, typ: Any) -> Any:
        status, _, data = self.http.do("GET", self._url(path))
        if status != 200:
            raise self._mismatch(data, f"expected 200 response, got {status}")
        return go_decode(json.loads(data), typ)

    def post(self, path: str, server: UpstreamServer) -> None:
        status, _, data = self.http.do("POST", self._url(path), server.marshal())
        if status != 201:
            raise self._mismatch(data, f"expected 201 response, got {status}")

    def delete(self, path: str, expected: int = 200) -> None:
        status, _, data = self.http.do("DELETE", self._url(path, slash=True))
        if status != expected:
            raise self._mismatch(
                data, f"failed to complete delete request: expected {expected}, got {status}"
            )

    def patch(self, path: str, server: UpstreamServer, expected: int = 200) -> None:
        url = self._url(path, slash=True)
        status, _, data = self.http.do("PATCH", url, server.marshal(), self.patch_content_type)
        if status != expected:
            raise self._mismatch(data, f"failed to complete patch request: expected {expected}, got {status}")

    # -- upstream servers (http and stream share the flow) --

    def _kind(self, stream: bool) -> tuple[str, Any]:
        return ("stream", STREAM_UPSTREAM_SERVER) if stream else ("http", UPSTREAM_SERVER)

    def get_servers(self, upstream: str, stream: bool = False) -> list[UpstreamServer]:
        """``GetHTTPServers`` / ``GetStreamServers`` (and ``CheckIf...UpstreamExists``)."""
        context, typ = self._kind(stream)
        docs = self.get(f"{context}/upstreams/{upstream}/servers", ("slice", typ)) or []
        return [UpstreamServer.decoded(d, stream) for d in docs]

    def _id_of(self, upstream: str, name: str, stream: bool) -> int:
        for s in self.get_servers(upstream, stream):
            if s.server == name:
                return s.id
        return -1

    def add_server(self, upstream: str, server: UpstreamServer) -> None:
        """``AddHTTPServer`` / ``AddStreamServer``."""
        if self._id_of(upstream, server.server, server.stream) != -1:
            raise PlusError(
                f"failed to add {server.server} server to {upstream} upstream: server already exists"
            )
        context, _ = self._kind(server.stream)
        self.post(f"{context}/upstreams/{upstream}/servers/", server)

    def delete_server(self, upstream: str, name: str, stream: bool = False) -> None:
        """``DeleteHTTPServer`` / ``DeleteStreamServer``."""
        id_ = self._id_of(upstream, name, stream)
        if id_ == -1:
            raise PlusError(f"failed to remove {name} server from {upstream} upstream: server not found")
        context, _ = self._kind(stream)
        self.delete(f"{context}/upstreams/{upstream}/servers/{id_}")

    def update_server(self, upstream: str, server: UpstreamServer) -> None:
        """``UpdateHTTPServer`` / ``UpdateStreamServer``: PATCH by id, the id not in the body."""
        context, _ = self._kind(server.stream)
        path = f"{context}/upstreams/{upstream}/servers/{server.id}"
        self.patch(path, dataclasses.replace(server, id=0))

    def update_servers(
        self, upstream: str, servers: list[UpstreamServer], stream: bool = False
    ) -> tuple[list[UpstreamServer], list[UpstreamServer], list[UpstreamServer], list[PlusError]]:
        """``UpdateHTTPServers`` / ``UpdateStreamServers``: (added, deleted, updated, errors)."""
        in_nginx = self.get_servers(upstream, stream)
        wanted = [dataclasses.replace(s, server=add_port(s.server), stream=stream) for s in servers]
        wanted = self._deduplicate(wanted)
        context, _ = self._kind(stream)
        to_update = []
        for s in wanted:
            for n in in_nginx:
                if s.server == n.server and not s.same_parameters_as(n):
                    to_update.append(dataclasses.replace(s, id=n.id))
                    break
        names = {n.server for n in in_nginx}
        to_add = [s for s in wanted if s.server not in names]
        wanted_names = {s.server for s in wanted}
        to_delete = [n for n in in_nginx if n.server not in wanted_names]
        added: list[UpstreamServer] = []
        deleted: list[UpstreamServer] = []
        updated: list[UpstreamServer] = []
        errors: list[PlusError] = []
        for s in to_add:
            try:
                self.post(f"{context}/upstreams/{upstream}/servers/", s)
                added.append(s)
            except PlusError as e:
                errors.append(e)
        for n in to_delete:
            try:
                self.delete(f"{context}/upstreams/{upstream}/servers/{n.id}")
                deleted.append(n)
            except PlusError as e:
                errors.append(e)
        for s in to_update:
            try:
                self.update_server(upstream, s)
                updated.append(s)
            except PlusError as e:
                errors.append(e)
        return added, deleted, updated, errors

    @staticmethod
    def _deduplicate(servers: list[UpstreamServer]) -> list[UpstreamServer]:
        """``deduplicateServers`` for the tests' lists (equal duplicates dropped)."""
        out: list[UpstreamServer] = []
        for s in servers:
            if all(o.server != s.server for o in out):
                out.append(s)
        return out

    # -- reads --

    def get_upstreams(self) -> dict[str, Any]:
        out: dict[str, Any] = self.get("http/upstreams", UPSTREAMS)
        return out

    def get_stream_upstreams(self) -> dict[str, Any]:
        try:
            out: dict[str, Any] = self.get("stream/upstreams", STREAM_UPSTREAMS)
        except PlusError as e:
            if e.code == PATH_NOT_FOUND:
                return {}
            raise
        return out

    def get_caches(self) -> dict[str, Any]:
        out: dict[str, Any] = self.get("http/caches", CACHES)
        return out

    def get_nginx_info(self) -> dict[str, Any]:
        out: dict[str, Any] = self.get("nginx", NGINX_INFO)
        return out

    def _optional(self, path: str, typ: Any, empty: Any) -> Any:
        """The stream reads: a ``PathNotFound`` answer is an empty collection."""
        try:
            return self.get(path, typ)
        except PlusError as e:
            if e.code == PATH_NOT_FOUND:
                return empty
            raise

    def get_stats(self) -> dict[str, Any]:
        """``GetStats`` (API 9): every read it makes, each one failing the whole call
        (nginx-prometheus-exporter scrapes through it: one 404 loses every metric)."""
        stats: dict[str, Any] = {"endpoints": self.get("", ("slice", "string"))}
        for key, path, typ in (
            ("NginxInfo", "nginx", NGINX_INFO),
            ("Caches", "http/caches", CACHES),
            ("Processes", "processes", PROCESSES),
            ("Slabs", "slabs", SLABS),
            ("HTTPRequests", "http/requests", HTTP_REQUESTS),
            ("SSL", "ssl", SSL),
            ("ServerZones", "http/server_zones", SERVER_ZONES),
            ("Upstreams", "http/upstreams", UPSTREAMS),
            ("LocationZones", "http/location_zones", LOCATION_ZONES),
            ("Resolvers", "resolvers", RESOLVERS),
            ("HTTPLimitRequests", "http/limit_reqs", LIMIT_REQS),
            ("HTTPLimitConnections", "http/limit_conns", LIMIT_CONNS),
            ("Workers", "workers", WORKERS if self.version >= 9 else ("slice", "int")),
        ):
            stats[key] = self.get(path, typ) if key != "Workers" or self.version >= 9 else []
        if "stream" in stats["endpoints"]:
            stream = self.get("stream", ("slice", "string"))
            if "server_zones" in stream:
                stats["StreamServerZones"] = self._optional("stream/server_zones", STREAM_SERVER_ZONES, {})
            if "upstreams" in stream:
                stats["StreamUpstreams"] = self._optional("stream/upstreams", STREAM_UPSTREAMS, {})
            if "limit_conns" in stream:
                stats["StreamLimitConnections"] = self._optional("stream/limit_conns", LIMIT_CONNS, {})
                stats["StreamZoneSync"] = self._optional("stream/zone_sync", ZONE_SYNC, None)
        stats["Connections"] = self.get("connections", CONNECTIONS)
        return stats
