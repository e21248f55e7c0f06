"""Prometheus text exposition of the status API documents (docs/api.md).

``render(documents)`` turns the JSON documents the API already builds into the Prometheus
text format. Names and labels follow nginx-prometheus-exporter in NGINX Plus mode
(``nginxplus_*``: collector/nginx_plus.go), so dashboards and alerts written for NGINX Plus
work against prefork-lb's own ``/metrics``; what only prefork-lb knows (workers, reloads,
uptime, latency histograms) is under ``preforklb_*``.

One difference from the Go exporter is inherent to the Python client: a counter family
``nginxplus_connections_accepted`` is exposed with the conventional ``_total`` sample suffix
(``nginxplus_connections_accepted_total``), whereas the Go exporter writes the bare name.
Families whose exporter name already ends in ``_total`` (``nginxplus_http_requests_total``)
are byte-for-byte the same.

Every render uses a fresh ``CollectorRegistry`` holding one collector over the documents it
was given: no global registry, no multiprocess files. The figures come from the shared zone,
so every worker renders the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "UPSTREAM_SERVER_STATES", "render"]

#: The Content-Type of ``render``'s output (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: nginx-prometheus-exporter's numeric encoding of a peer's state; anything else is 0.
UPSTREAM_SERVER_STATES: Mapping[str, float] = {
    "up": 1.0,
    "draining": 2.0,
    "down": 3.0,
    "unavail": 4.0,
    "checking": 5.0,
    "unhealthy": 6.0,
}

Kind = Literal["counter", "gauge"]
C: Kind = "counter"
G: Kind = "gauge"

# (JSON field, metric suffix, kind, HELP) tables, in the exporter's wording.
_CONNECTIONS: Sequence[tuple[str, str, Kind, str]] = (
    ("accepted", "connections_accepted", C, "Accepted client connections"),
    ("dropped", "connections_dropped", C, "Dropped client connections"),
    ("active", "connections_active", G, "Active client connections"),
    ("idle", "connections_idle", G, "Idle client connections"),
)
_HTTP_REQUESTS: Sequence[tuple[str, str, Kind, str]] = (
    ("total", "http_requests_total", C, "Total http requests"),
    ("current", "http_requests_current", G, "Current http requests"),
)
_SERVER_ZONE: Sequence[tuple[str, str, Kind, str]] = (
    ("processing", "processing", G, "Client requests that are currently being processed"),
    ("requests", "requests", C, "Total client requests"),
    ("discarded", "discarded", C, "Requests completed without sending a response"),
    ("received", "received", C, "Bytes received from clients"),
    ("sent", "sent", C, "Bytes sent to clients"),
)
_STREAM_SERVER_ZONE: Sequence[tuple[str, str, Kind, str]] = (
    ("processing", "processing", G, "Client connections that are currently being processed"),
    ("connections", "connections", C, "Total connections"),
    ("discarded", "discarded", C, "Connections completed without creating a session"),
    ("received", "received", C, "Bytes received from clients"),
    ("sent", "sent", C, "Bytes sent to clients"),
)
_UPSTREAM_SERVER: Sequence[tuple[str, str, Kind, str]] = (
    ("active", "active", G, "Active connections"),
    (
        "max_conns",
        "limit",
        G,
        "Limit for connections which corresponds to the max_conns parameter of the upstream server. "
        "Zero value means there is no limit",
    ),
    ("requests", "requests", C, "Total client requests"),
    ("sent", "sent", C, "Bytes sent to this server"),
    ("received", "received", C, "Bytes received to this server"),
    ("fails", "fails", C, "Number of unsuccessful attempts to communicate with the server"),
    (
        "unavail",
        "unavail",
        C,
        "How many times the server became unavailable for client requests (state 'unavail') due to "
        "the number of unsuccessful attempts reaching the max_fails threshold",
    ),
    ("header_time", "header_time", G, "Average time to get the response header from the server"),
    ("response_time", "response_time", G, "Average time to get the full response from the server"),
)
_STREAM_UPSTREAM_SERVER: Sequence[tuple[str, str, Kind, str]] = (
    ("active", "active", G, "Active connections"),
    (
        "max_conns",
        "limit",
        G,
        "Limit for connections which corresponds to the max_conns parameter of the upstream server. "
        "Zero value means there is no limit",
    ),
    ("connections", "connections", C, "Total number of client connections forwarded to this server"),
    ("connect_time", "connect_time", G, "Average time to connect to the upstream server"),
    ("first_byte_time", "first_byte_time", G, "Average time to receive the first byte of data"),
    ("response_time", "response_time", G, "Average time to receive the last byte of data"),
    ("sent", "sent", C, "Bytes sent to this server"),
    ("received", "received", C, "Bytes received from this server"),
    ("fails", "fails", C, "Number of unsuccessful attempts to communicate with the server"),
    (
        "unavail",
        "unavail",
        C,
        "How many times the server became unavailable for client connections (state 'unavail') due "
        "to the number of unsuccessful attempts reaching the max_fails threshold",
    ),
)
_HEALTH_CHECKS: Sequence[tuple[str, str, Kind, str]] = (
    ("checks", "health_checks_checks", C, "Total health check requests"),
    ("fails", "health_checks_fails", C, "Failed health checks"),
    (
        "unhealthy",
        "health_checks_unhealthy",
        C,
        "How many times the server became unhealthy (state 'unhealthy')",
    ),
)
_WORKER: Sequence[tuple[str, str, Kind, str]] = (
    ("cpu", "worker_cpu_seconds_total", C, "CPU time (user + system) used by the worker process"),
    ("rss", "worker_resident_memory_bytes", G, "Resident memory of the worker process"),
    ("connections", "worker_connections", G, "Client connections the worker is handling"),
    ("uptime", "worker_uptime_seconds", G, "Seconds since the worker process started"),
    ("heartbeat_age", "worker_heartbeat_age_seconds", G, "Seconds since the worker's last heartbeat"),
)
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_SESSION_CLASSES = ("2xx", "4xx", "5xx")
_RESPONSES_HELP = "Total responses sent to clients"

NGINXPLUS = "nginxplus_"
PREFORKLB = "preforklb_"


def render(documents: Mapping[str, Any]) -> bytes:
    """The Prometheus text exposition of the API ``documents``.

    Keys: ``nginx``, ``processes``, ``connections``, ``http_requests``, ``http_server_zones``,
    ``http_upstreams``, ``stream_server_zones``, ``stream_upstreams`` (the JSON documents of
    docs/api.md), ``workers`` (the /prefork/workers list), ``reloads`` (int) and ``uptime_s``
    (float). A missing or empty section yields no samples for it; a missing field of a present
    object reads as 0, as it does in nginx-prometheus-exporter.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DocumentCollector(documents))
    return generate_latest(registry)


class _DocumentCollector(Collector):
    """One collector over one snapshot of the documents."""

    def __init__(self, documents: Mapping[str, Any]) -> None:
        self._documents = documents

    def collect(self) -> Iterable[Metric]:
        out = _Families()
        _collect(out, self._documents)
        return out.metrics()


class _Families:
    """Metric families in first-use order; a family without samples is never emitted."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def add(self, kind: Kind, name: str, doc: str, labels: Mapping[str, str], value: float) -> None:
        family = self._families.get(name)
        if family is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = cls(name, doc, labels=list(labels))
            self._families[name] = family
        assert isinstance(family, CounterMetricFamily | GaugeMetricFamily)
        family.add_metric(list(labels.values()), value)

    def histogram(
        self,
        name: str,
        doc: str,
        labels: Mapping[str, str],
        buckets: Sequence[tuple[str, float]],
        sum_value: float,
    ) -> None:
        family = self._families.get(name)
        if family is None:
            family = HistogramMetricFamily(name, doc, labels=list(labels))
            self._families[name] = family
        assert isinstance(family, HistogramMetricFamily)
        family.add_metric(list(labels.values()), buckets=list(buckets), sum_value=sum_value)

    def metrics(self) -> Iterator[Metric]:
        return iter(self._families.values())


# ---------------------------------------------------------------------------- helpers


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num(value: Any) -> float:
    """A JSON number as a float; anything else (absent, null, text, bool) is 0."""
    return float(value) if _is_num(value) else 0.0


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else ()


def _fields(
    out: _Families,
    prefix: str,
    table: Sequence[tuple[str, str, Kind, str]],
    source: Mapping[str, Any],
    labels: Mapping[str, str],
) -> None:
    for field, suffix, kind, doc in table:
        out.add(kind, prefix + suffix, doc, labels, _num(source.get(field)))


def _response_classes(
    out: _Families,
    name: str,
    doc: str,
    responses: Mapping[str, Any],
    labels: Mapping[str, str],
    classes: Sequence[str],
) -> None:
    for cls in classes:
        out.add(C, name, doc, {**labels, "code": cls}, _num(responses.get(cls)))


def _response_codes(
    out: _Families, name: str, responses: Mapping[str, Any], labels: Mapping[str, str]
) -> None:
    """Per-status counts (``responses.codes``): only the codes that occurred, in numeric order."""
    codes = _obj(responses.get("codes"))
    for code in sorted(codes, key=lambda c: (len(str(c)), str(c))):
        out.add(C, name, _RESPONSES_HELP, {**labels, "code": str(code)}, _num(codes[code]))


def _health_checks(out: _Families, prefix: str, peer: Mapping[str, Any], labels: Mapping[str, str]) -> None:
    # The exporter only emits these once a peer has any health-check figure.
    checks = _obj(peer.get("health_checks"))
    if any(_num(checks.get(field)) for field, *_ in _HEALTH_CHECKS):
        _fields(out, prefix, _HEALTH_CHECKS, checks, labels)


def _state(peer: Mapping[str, Any]) -> float:
    state = peer.get("state")
    return UPSTREAM_SERVER_STATES.get(state, 0.0) if isinstance(state, str) else 0.0


def _le(value: Any) -> str | None:
    """A bucket bound as Prometheus writes it (``0.25``, ``+Inf``); None when unusable."""
    if isinstance(value, str):
        try:
            bound = float(value)
        except ValueError:
            return None
    elif _is_num(value):
        bound = float(value)
    else:
        return None
    if math.isnan(bound):
        return None
    if math.isinf(bound):
        return "+Inf" if bound > 0 else "-Inf"
    return repr(bound)


def _histogram_buckets(hist: Mapping[str, Any]) -> list[tuple[str, float]] | None:
    """The cumulative buckets of a ``response_time_histogram``, ending with ``+Inf``."""
    buckets: list[tuple[str, float]] = []
    for entry in _list(hist.get("buckets")):
        pair = _list(entry)
        if len(pair) != 2:
            return None
        le = _le(pair[0])
        if le is None:
            return None
        buckets.append((le, _num(pair[1])))
    if not buckets:
        return None
    if buckets[-1][0] != "+Inf":
        count = hist.get("count")
        buckets.append(("+Inf", _num(count) if count is not None else buckets[-1][1]))
    return buckets


# ---------------------------------------------------------------------------- sections


def _collect(out: _Families, docs: Mapping[str, Any]) -> None:
    p = NGINXPLUS
    out.add(G, p + "up", "Status of the last metric scrape", {}, 1.0)

    if "connections" in docs:
        _fields(out, p, _CONNECTIONS, _obj(docs["connections"]), {})
    if "http_requests" in docs:
        _fields(out, p, _HTTP_REQUESTS, _obj(docs["http_requests"]), {})

    for zone, doc in _obj(docs.get("http_server_zones")).items():
        _server_zone(out, str(zone), _obj(doc))
    for zone, doc in _obj(docs.get("stream_server_zones")).items():
        _stream_server_zone(out, str(zone), _obj(doc))
    for name, doc in _obj(docs.get("http_upstreams")).items():
        _upstream(out, str(name), _obj(doc))
    for name, doc in _obj(docs.get("stream_upstreams")).items():
        _stream_upstream(out, str(name), _obj(doc))
    for name, doc in _obj(docs.get("http_caches")).items():
        _cache(out, str(name), _obj(doc))

    _prefork(out, docs)


# issue 18: the exporter's cache metrics (nginxplus_cache_*{cache}), from /http/caches
_CACHE_GAUGES: Sequence[tuple[str, str, Kind, str]] = (
    ("size", "size", G, "Total size of the cache"),
    ("max_size", "max_size", G, "Maximum size of the cache"),
)
_CACHE_COUNTERS: Sequence[tuple[str, str, str]] = (
    ("hit", "hit", "cache hits"),
    ("stale", "stale", "stale responses"),
    ("updating", "updating", "cache updating responses"),
    ("revalidated", "revalidated", "revalidated responses"),
    ("miss", "miss", "cache misses"),
    ("expired", "expired", "expired responses"),
    ("bypass", "bypass", "cache bypass responses"),
)


def _cache(out: _Families, name: str, doc: Mapping[str, Any]) -> None:
    prefix = NGINXPLUS + "cache_"
    labels = {"cache": name}
    _fields(out, prefix, _CACHE_GAUGES, doc, labels)
    out.add(
        G, prefix + "cold", "Is the cache considered cold", labels, 1.0 if doc.get("cold") is True else 0.0
    )
    for field, suffix, what in _CACHE_COUNTERS:
        stats = _obj(doc.get(field))
        out.add(
            C, f"{prefix}{suffix}_responses", f"Total number of {what}", labels, _num(stats.get("responses"))
        )
        out.add(
            C, f"{prefix}{suffix}_bytes", f"Total number of bytes of {what}", labels, _num(stats.get("bytes"))
        )
        if "responses_written" in stats:
            out.add(
                C,
                f"{prefix}{suffix}_responses_written",
                f"Total number of {what} written to the cache",
                labels,
                _num(stats.get("responses_written")),
            )
            out.add(
                C,
                f"{prefix}{suffix}_bytes_written",
                f"Total number of bytes of {what} written to the cache",
                labels,
                _num(stats.get("bytes_written")),
            )


def _server_zone(out: _Families, zone: str, doc: Mapping[str, Any]) -> None:
    prefix = NGINXPLUS + "server_zone_"
    labels = {"server_zone": zone}
    responses = _obj(doc.get("responses"))
    _fields(out, prefix, _SERVER_ZONE[:2], doc, labels)
    _response_classes(out, prefix + "responses", _RESPONSES_HELP, responses, labels, _CLASSES)
    _fields(out, prefix, _SERVER_ZONE[2:], doc, labels)
    _response_codes(out, prefix + "responses_codes", responses, labels)


def _stream_server_zone(out: _Families, zone: str, doc: Mapping[str, Any]) -> None:
    prefix = NGINXPLUS + "stream_server_zone_"
    labels = {"server_zone": zone}
    _fields(out, prefix, _STREAM_SERVER_ZONE[:2], doc, labels)
    sessions = _obj(doc.get("sessions"))
    _response_classes(
        out, prefix + "sessions", "Total sessions completed", sessions, labels, _SESSION_CLASSES
    )
    _fields(out, prefix, _STREAM_SERVER_ZONE[2:], doc, labels)


def _upstream(out: _Families, name: str, doc: Mapping[str, Any]) -> None:
    prefix = NGINXPLUS + "upstream_server_"
    for item in _list(doc.get("peers")):
        peer = _obj(item)
        labels = {"upstream": name, "server": str(peer.get("server", ""))}
        responses = _obj(peer.get("responses"))
        out.add(G, prefix + "state", "Current state", labels, _state(peer))
        _fields(out, prefix, _UPSTREAM_SERVER[:3], peer, labels)
        _response_classes(out, prefix + "responses", _RESPONSES_HELP, responses, labels, _CLASSES)
        _fields(out, prefix, _UPSTREAM_SERVER[3:], peer, labels)
        _health_checks(out, prefix, peer, labels)
        _response_codes(out, prefix + "responses_codes", responses, labels)
        _peer_histogram(out, peer, labels)
    upstream = {"upstream": name}
    out.add(
        G,
        NGINXPLUS + "upstream_keepalives",
        "Idle keepalive connections",
        upstream,
        _num(doc.get("keepalive")),
    )
    out.add(
        G,
        NGINXPLUS + "upstream_zombies",
        "Servers removed from the group but still processing active client requests",
        upstream,
        _num(doc.get("zombies")),
    )


def _peer_histogram(out: _Families, peer: Mapping[str, Any], labels: Mapping[str, str]) -> None:
    hist = peer.get("response_time_histogram")
    if not isinstance(hist, Mapping):
        return
    buckets = _histogram_buckets(hist)
    if buckets is None:
        return
    out.histogram(
        PREFORKLB + "upstream_server_response_time_seconds",
        "Time to get the full response from the server",
        labels,
        buckets,
        _num(hist.get("sum")),
    )


def _stream_upstream(out: _Families, name: str, doc: Mapping[str, Any]) -> None:
    prefix = NGINXPLUS + "stream_upstream_server_"
    for item in _list(doc.get("peers")):
        peer = _obj(item)
        labels = {"upstream": name, "server": str(peer.get("server", ""))}
        out.add(G, prefix + "state", "Current state", labels, _state(peer))
        _fields(out, prefix, _STREAM_UPSTREAM_SERVER, peer, labels)
        _health_checks(out, prefix, peer, labels)
    out.add(
        G,
        NGINXPLUS + "stream_upstream_zombies",
        "Servers removed from the group but still processing active client connections",
        {"upstream": name},
        _num(doc.get("zombies")),
    )


def _prefork(out: _Families, docs: Mapping[str, Any]) -> None:
    p = PREFORKLB
    out.add(G, p + "up", "Whether prefork-lb answered this scrape (always 1 when it is rendered)", {}, 1.0)
    if "uptime_s" in docs:
        out.add(
            G, p + "uptime_seconds", "Seconds since the master process started", {}, _num(docs["uptime_s"])
        )
    if "reloads" in docs:
        out.add(
            C,
            p + "reloads_total",
            "Configuration reloads since the master started",
            {},
            _num(docs["reloads"]),
        )
    if "nginx" in docs:
        generation = _obj(docs["nginx"]).get("generation")
        out.add(G, p + "generation", "Configuration generation the workers are running", {}, _num(generation))
    if "processes" in docs:
        respawned = _obj(docs["processes"]).get("respawned")
        out.add(
            C, p + "processes_respawned_total", "Worker processes respawned after dying", {}, _num(respawned)
        )
    for item in _list(docs.get("workers")):
        worker = _obj(item)
        labels = {"pid": str(worker.get("pid", "")), "generation": str(worker.get("generation", ""))}
        for field, suffix, kind, doc in _WORKER:
            # rss/cpu are null when the process could not be read: no sample beats a false 0.
            if _is_num(worker.get(field)):
                out.add(kind, p + suffix, doc, labels, float(worker[field]))
