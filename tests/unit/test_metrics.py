"""prefork_lb.metrics: the Prometheus exposition of the status API documents.

The fixtures are written by hand from docs/api.md; the output is read back with
prometheus_client's own parser, so the checks are on what a scraper sees (family names,
types, labels, values), not on the formatting.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from prefork_lb.metrics import UPSTREAM_SERVER_STATES, render


def _responses(r1: int, r2: int, r3: int, r4: int, r5: int, codes: Mapping[str, int]) -> dict[str, Any]:
    return {
        "1xx": r1,
        "2xx": r2,
        "3xx": r3,
        "4xx": r4,
        "5xx": r5,
        "codes": dict(codes),
        "total": r1 + r2 + r3 + r4 + r5,
    }


def _http_peer(pid: int, server: str, **overrides: Any) -> dict[str, Any]:
    peer: dict[str, Any] = {
        "id": pid,
        "server": server,
        "name": server,
        "backup": False,
        "weight": 1,
        "state": "up",
        "active": 0,
        "requests": 0,
        "responses": _responses(0, 0, 0, 0, 0, {}),
        "sent": 0,
        "received": 0,
        "fails": 0,
        "unavail": 0,
        "health_checks": {"checks": 0, "fails": 0, "unhealthy": 0},
        "downtime": 0,
    }
    peer.update(overrides)
    return peer


HISTOGRAM = {"buckets": [[0.005, 1], [0.05, 4], [0.5, 6], [5, 7]], "sum": 1.75, "count": 7}


def documents() -> dict[str, Any]:
    """A realistic snapshot: one HTTP site with two peers (one down), a stream site, two workers."""
    return {
        "nginx": {
            "version": "0.1.0",
            "build": "prefork-lb",
            "address": "127.0.0.1",
            "generation": 3,
            "load_timestamp": "2026-11-21T10:00:00.000Z",
            "timestamp": "2026-11-21T10:05:00.000Z",
            "pid": 4242,
            "ppid": 4200,
        },
        "processes": {"respawned": 2},
        "connections": {"accepted": 120, "dropped": 1, "active": 5, "idle": 3},
        "http_requests": {"total": 345, "current": 2},
        "http_server_zones": {
            "example.com": {
                "processing": 2,
                "requests": 340,
                "responses": _responses(
                    0, 300, 10, 25, 5, {"200": 290, "204": 10, "301": 10, "404": 25, "502": 5}
                ),
                "discarded": 3,
                "received": 40_000,
                "sent": 900_000,
            },
            "127.0.0.1:8081": {
                "processing": 0,
                "requests": 5,
                "responses": _responses(0, 5, 0, 0, 0, {"200": 5}),
                "discarded": 0,
                "received": 500,
                "sent": 5_000,
            },
        },
        "http_upstreams": {
            "backend": {
                "peers": [
                    _http_peer(
                        0,
                        "127.0.0.1:9001",
                        active=2,
                        max_conns=100,
                        requests=200,
                        responses=_responses(0, 190, 0, 5, 5, {"200": 190, "404": 5, "502": 5}),
                        sent=20_000,
                        received=600_000,
                        fails=1,
                        unavail=0,
                        selected="2026-11-21T10:04:59.000Z",
                        header_time=12,
                        response_time=34,
                        response_time_histogram=copy.deepcopy(HISTOGRAM),
                    ),
                    _http_peer(
                        1,
                        "127.0.0.1:9002",
                        state="down",
                        requests=130,
                        responses=_responses(
                            0, 110, 10, 10, 0, {"200": 100, "204": 10, "301": 10, "404": 10}
                        ),
                        fails=4,
                        unavail=2,
                        downtime=1500,
                        downstart="2026-11-21T10:04:58.500Z",
                    ),
                ],
                "keepalive": 4,
                "zombies": 0,
                "zone": "backend",
            }
        },
        "stream_server_zones": {
            "127.0.0.1:6380": {
                "processing": 1,
                "connections": 50,
                "sessions": {"2xx": 45, "4xx": 1, "5xx": 3, "total": 49},
                "discarded": 0,
                "received": 7_000,
                "sent": 9_000,
            }
        },
        "stream_upstreams": {
            "redis": {
                "peers": [
                    {
                        "id": 0,
                        "server": "127.0.0.1:6379",
                        "name": "127.0.0.1:6379",
                        "backup": False,
                        "weight": 1,
                        "state": "unavail",
                        "active": 1,
                        "connections": 50,
                        "connect_time": 1,
                        "first_byte_time": 2,
                        "response_time": 40,
                        "sent": 7_000,
                        "received": 9_000,
                        "fails": 3,
                        "unavail": 1,
                        "health_checks": {"checks": 10, "fails": 2, "unhealthy": 1},
                        "downtime": 0,
                    }
                ],
                "zombies": 1,
                "zone": "redis",
            }
        },
        "workers": [
            {
                "pid": 4242,
                "generation": 3,
                "slot": 0,
                "state": "running",
                "uptime": 300.5,
                "rss": 52_428_800,
                "cpu": 12.25,
                "connections": 4,
                "heartbeat_age": 0.5,
            },
            {
                "pid": 4100,
                "generation": 2,
                "slot": 1,
                "state": "shutting down",
                "uptime": 900.0,
                "rss": 48_000_000,
                "cpu": 30.5,
                "connections": 1,
                "heartbeat_age": 0.25,
            },
        ],
        "reloads": 2,
        "uptime_s": 1234.5,
    }


Families = dict[str, Any]


def parse(docs: Mapping[str, Any]) -> Families:
    text = render(docs).decode("utf-8")
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(families: Families, family: str, name: str | None = None) -> list[Sample]:
    return [s for s in families[family].samples if name is None or s.name == name]


def value(families: Families, family: str, suffix: str = "", **labels: str) -> float:
    """The one sample ``family + suffix`` with exactly these labels."""
    found = [s.value for s in families[family].samples if s.name == family + suffix and s.labels == labels]
    assert len(found) == 1, f"{family}{suffix}{labels}: {found} in {families[family].samples}"
    return float(found[0])


@pytest.fixture(scope="module")
def fams() -> Families:
    return parse(documents())


# nginx-prometheus-exporter's kinds (collector/nginx_plus.go: CounterValue / GaugeValue).
EXPORTER_KINDS = {
    "nginxplus_up": "gauge",
    "nginxplus_connections_accepted": "counter",
    "nginxplus_connections_dropped": "counter",
    "nginxplus_connections_active": "gauge",
    "nginxplus_connections_idle": "gauge",
    "nginxplus_http_requests": "counter",  # exposed as nginxplus_http_requests_total
    "nginxplus_http_requests_current": "gauge",
    "nginxplus_server_zone_processing": "gauge",
    "nginxplus_server_zone_requests": "counter",
    "nginxplus_server_zone_responses": "counter",
    "nginxplus_server_zone_responses_codes": "counter",
    "nginxplus_server_zone_discarded": "counter",
    "nginxplus_server_zone_received": "counter",
    "nginxplus_server_zone_sent": "counter",
    "nginxplus_stream_server_zone_processing": "gauge",
    "nginxplus_stream_server_zone_connections": "counter",
    "nginxplus_stream_server_zone_sessions": "counter",
    "nginxplus_stream_server_zone_discarded": "counter",
    "nginxplus_stream_server_zone_received": "counter",
    "nginxplus_stream_server_zone_sent": "counter",
    "nginxplus_upstream_keepalives": "gauge",
    "nginxplus_upstream_zombies": "gauge",
    "nginxplus_stream_upstream_zombies": "gauge",
    "nginxplus_upstream_server_state": "gauge",
    "nginxplus_upstream_server_active": "gauge",
    "nginxplus_upstream_server_limit": "gauge",
    "nginxplus_upstream_server_requests": "counter",
    "nginxplus_upstream_server_responses": "counter",
    "nginxplus_upstream_server_responses_codes": "counter",
    "nginxplus_upstream_server_sent": "counter",
    "nginxplus_upstream_server_received": "counter",
    "nginxplus_upstream_server_fails": "counter",
    "nginxplus_upstream_server_unavail": "counter",
    "nginxplus_upstream_server_header_time": "gauge",
    "nginxplus_upstream_server_response_time": "gauge",
    "nginxplus_stream_upstream_server_state": "gauge",
    "nginxplus_stream_upstream_server_active": "gauge",
    "nginxplus_stream_upstream_server_limit": "gauge",
    "nginxplus_stream_upstream_server_connections": "counter",
    "nginxplus_stream_upstream_server_connect_time": "gauge",
    "nginxplus_stream_upstream_server_first_byte_time": "gauge",
    "nginxplus_stream_upstream_server_response_time": "gauge",
    "nginxplus_stream_upstream_server_sent": "counter",
    "nginxplus_stream_upstream_server_received": "counter",
    "nginxplus_stream_upstream_server_fails": "counter",
    "nginxplus_stream_upstream_server_unavail": "counter",
    "nginxplus_stream_upstream_server_health_checks_checks": "counter",
    "nginxplus_stream_upstream_server_health_checks_fails": "counter",
    "nginxplus_stream_upstream_server_health_checks_unhealthy": "counter",
}
PREFORKLB_KINDS = {
    "preforklb_up": "gauge",
    "preforklb_uptime_seconds": "gauge",
    "preforklb_reloads": "counter",  # exposed as preforklb_reloads_total
    "preforklb_generation": "gauge",
    "preforklb_processes_respawned": "counter",
    "preforklb_worker_cpu_seconds": "counter",  # exposed as preforklb_worker_cpu_seconds_total
    "preforklb_worker_resident_memory_bytes": "gauge",
    "preforklb_worker_connections": "gauge",
    "preforklb_worker_uptime_seconds": "gauge",
    "preforklb_worker_heartbeat_age_seconds": "gauge",
    "preforklb_upstream_server_response_time_seconds": "histogram",
}


# ---------------------------------------------------------------------------- names and types


def test_every_family_has_the_expected_name_and_type(fams: Families) -> None:
    assert {name: f.type for name, f in fams.items()} == EXPORTER_KINDS | PREFORKLB_KINDS


def test_every_family_has_a_help_line(fams: Families) -> None:
    text = render(documents()).decode()
    for name, family in fams.items():
        assert family.documentation, name
        exposed = name + "_total" if family.type == "counter" else name
        assert f"# HELP {exposed} " in text
        assert f"# TYPE {exposed} {family.type}\n" in text


def test_counters_are_exposed_with_the_total_suffix_gauges_bare() -> None:
    text = render(documents()).decode()
    lines = text.splitlines()
    assert "nginxplus_http_requests_total 345.0" in lines
    assert "nginxplus_connections_accepted_total 120.0" in lines
    assert "nginxplus_connections_active 5.0" in lines
    assert 'preforklb_worker_cpu_seconds_total{generation="3",pid="4242"} 12.25' in lines
    assert "preforklb_reloads_total 2.0" in lines
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if family.type == "counter":
                assert s.name == family.name + "_total"
            elif family.type == "gauge":
                assert s.name == family.name


# ---------------------------------------------------------------------------- globals


def test_connections_and_requests(fams: Families) -> None:
    assert value(fams, "nginxplus_up") == 1
    assert value(fams, "nginxplus_connections_accepted", "_total") == 120
    assert value(fams, "nginxplus_connections_dropped", "_total") == 1
    assert value(fams, "nginxplus_connections_active") == 5
    assert value(fams, "nginxplus_connections_idle") == 3
    assert value(fams, "nginxplus_http_requests", "_total") == 345
    assert value(fams, "nginxplus_http_requests_current") == 2


def test_prefork_process_metrics(fams: Families) -> None:
    assert value(fams, "preforklb_up") == 1
    assert value(fams, "preforklb_uptime_seconds") == 1234.5
    assert value(fams, "preforklb_reloads", "_total") == 2
    assert value(fams, "preforklb_generation") == 3
    assert value(fams, "preforklb_processes_respawned", "_total") == 2


def test_worker_metrics_are_labelled_by_pid_and_generation(fams: Families) -> None:
    new = {"pid": "4242", "generation": "3"}
    old = {"pid": "4100", "generation": "2"}
    assert value(fams, "preforklb_worker_cpu_seconds", "_total", **new) == 12.25
    assert value(fams, "preforklb_worker_cpu_seconds", "_total", **old) == 30.5
    assert value(fams, "preforklb_worker_resident_memory_bytes", **new) == 52_428_800
    assert value(fams, "preforklb_worker_connections", **new) == 4
    assert value(fams, "preforklb_worker_connections", **old) == 1
    assert value(fams, "preforklb_worker_uptime_seconds", **old) == 900
    assert value(fams, "preforklb_worker_heartbeat_age_seconds", **new) == 0.5
    for name in PREFORKLB_KINDS:
        if name.startswith("preforklb_worker_"):
            assert {tuple(sorted(s.labels)) for s in fams[name].samples} == {("generation", "pid")}


# ---------------------------------------------------------------------------- server zones


def test_http_server_zones(fams: Families) -> None:
    zone = {"server_zone": "example.com"}
    assert value(fams, "nginxplus_server_zone_processing", **zone) == 2
    assert value(fams, "nginxplus_server_zone_requests", "_total", **zone) == 340
    assert value(fams, "nginxplus_server_zone_discarded", "_total", **zone) == 3
    assert value(fams, "nginxplus_server_zone_received", "_total", **zone) == 40_000
    assert value(fams, "nginxplus_server_zone_sent", "_total", **zone) == 900_000
    by_class = {
        s.labels["code"]: s.value
        for s in samples(fams, "nginxplus_server_zone_responses")
        if s.labels["server_zone"] == "example.com"
    }
    assert by_class == {"1xx": 0, "2xx": 300, "3xx": 10, "4xx": 25, "5xx": 5}
    by_code = {
        s.labels["code"]: s.value
        for s in samples(fams, "nginxplus_server_zone_responses_codes")
        if s.labels["server_zone"] == "example.com"
    }
    assert by_code == {"200": 290, "204": 10, "301": 10, "404": 25, "502": 5}
    zones = {s.labels["server_zone"] for s in samples(fams, "nginxplus_server_zone_requests")}
    assert zones == {"example.com", "127.0.0.1:8081"}


def test_stream_server_zones(fams: Families) -> None:
    zone = {"server_zone": "127.0.0.1:6380"}
    assert value(fams, "nginxplus_stream_server_zone_processing", **zone) == 1
    assert value(fams, "nginxplus_stream_server_zone_connections", "_total", **zone) == 50
    assert value(fams, "nginxplus_stream_server_zone_received", "_total", **zone) == 7_000
    assert value(fams, "nginxplus_stream_server_zone_sent", "_total", **zone) == 9_000
    sessions = {s.labels["code"]: s.value for s in samples(fams, "nginxplus_stream_server_zone_sessions")}
    assert sessions == {"2xx": 45, "4xx": 1, "5xx": 3}


# ---------------------------------------------------------------------------- upstreams


A = {"upstream": "backend", "server": "127.0.0.1:9001"}
B = {"upstream": "backend", "server": "127.0.0.1:9002"}


def test_upstream_server_counters_and_gauges(fams: Families) -> None:
    assert value(fams, "nginxplus_upstream_server_requests", "_total", **A) == 200
    assert value(fams, "nginxplus_upstream_server_requests", "_total", **B) == 130
    assert value(fams, "nginxplus_upstream_server_active", **A) == 2
    assert value(fams, "nginxplus_upstream_server_limit", **A) == 100
    assert value(fams, "nginxplus_upstream_server_limit", **B) == 0  # no max_conns: no limit
    assert value(fams, "nginxplus_upstream_server_sent", "_total", **A) == 20_000
    assert value(fams, "nginxplus_upstream_server_received", "_total", **A) == 600_000
    assert value(fams, "nginxplus_upstream_server_fails", "_total", **B) == 4
    assert value(fams, "nginxplus_upstream_server_unavail", "_total", **B) == 2
    assert value(fams, "nginxplus_upstream_server_header_time", **A) == 12
    assert value(fams, "nginxplus_upstream_server_response_time", **A) == 34
    # Not measured yet: 0, as the exporter reports it.
    assert value(fams, "nginxplus_upstream_server_response_time", **B) == 0
    assert value(fams, "nginxplus_upstream_keepalives", upstream="backend") == 4
    assert value(fams, "nginxplus_upstream_zombies", upstream="backend") == 0


def test_upstream_server_responses_by_class_and_code(fams: Families) -> None:
    classes = {
        s.labels["code"]: s.value
        for s in samples(fams, "nginxplus_upstream_server_responses")
        if s.labels.items() >= A.items()
    }
    assert classes == {"1xx": 0, "2xx": 190, "3xx": 0, "4xx": 5, "5xx": 5}
    codes = {
        s.labels["code"]: s.value
        for s in samples(fams, "nginxplus_upstream_server_responses_codes")
        if s.labels["server"] == B["server"]
    }
    assert codes == {"200": 100, "204": 10, "301": 10, "404": 10}
    for s in samples(fams, "nginxplus_upstream_server_responses"):
        assert set(s.labels) == {"upstream", "server", "code"}


def test_upstream_server_state_values(fams: Families) -> None:
    assert value(fams, "nginxplus_upstream_server_state", **A) == 1
    assert value(fams, "nginxplus_upstream_server_state", **B) == 3
    assert (
        value(fams, "nginxplus_stream_upstream_server_state", upstream="redis", server="127.0.0.1:6379") == 4
    )


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("up", 1),
        ("draining", 2),
        ("down", 3),
        ("unavail", 4),
        ("checking", 5),
        ("unhealthy", 6),
        ("bogus", 0),
    ],
)
def test_state_mapping_matches_the_exporter(state: str, expected: int) -> None:
    docs = {"http_upstreams": {"u": {"peers": [_http_peer(0, "127.0.0.1:1", state=state)]}}}
    got = value(parse(docs), "nginxplus_upstream_server_state", upstream="u", server="127.0.0.1:1")
    assert got == expected
    assert UPSTREAM_SERVER_STATES.get(state, 0) == expected


def test_health_checks_only_once_a_peer_has_any(fams: Families) -> None:
    # The exporter skips all-zero health checks; the HTTP peers here have none.
    assert not any(name.startswith("nginxplus_upstream_server_health_checks") for name in fams)
    redis = {"upstream": "redis", "server": "127.0.0.1:6379"}
    assert value(fams, "nginxplus_stream_upstream_server_health_checks_checks", "_total", **redis) == 10
    assert value(fams, "nginxplus_stream_upstream_server_health_checks_fails", "_total", **redis) == 2
    assert value(fams, "nginxplus_stream_upstream_server_health_checks_unhealthy", "_total", **redis) == 1


def test_stream_upstream_servers(fams: Families) -> None:
    redis = {"upstream": "redis", "server": "127.0.0.1:6379"}
    assert value(fams, "nginxplus_stream_upstream_server_connections", "_total", **redis) == 50
    assert value(fams, "nginxplus_stream_upstream_server_active", **redis) == 1
    assert value(fams, "nginxplus_stream_upstream_server_connect_time", **redis) == 1
    assert value(fams, "nginxplus_stream_upstream_server_first_byte_time", **redis) == 2
    assert value(fams, "nginxplus_stream_upstream_server_response_time", **redis) == 40
    assert value(fams, "nginxplus_stream_upstream_server_fails", "_total", **redis) == 3
    assert value(fams, "nginxplus_stream_upstream_zombies", upstream="redis") == 1
    # HTTP-only figures never leak into the stream families.
    assert "nginxplus_stream_upstream_server_requests" not in fams


# ---------------------------------------------------------------------------- histogram


def test_response_time_histogram_exposition(fams: Families) -> None:
    hist = "preforklb_upstream_server_response_time_seconds"
    buckets = {
        s.labels["le"]: s.value
        for s in samples(fams, hist, hist + "_bucket")
        if s.labels.items() >= A.items()
    }
    assert buckets == {"0.005": 1, "0.05": 4, "0.5": 6, "5.0": 7, "+Inf": 7}
    assert value(fams, hist, "_sum", **A) == 1.75
    assert value(fams, hist, "_count", **A) == 7
    # Only the peer that carries a histogram has one.
    assert {s.labels["server"] for s in fams[hist].samples} == {A["server"]}
    text = render(documents()).decode()
    assert f'{hist}_bucket{{le="+Inf",server="127.0.0.1:9001",upstream="backend"}} 7.0' in text.splitlines()


def test_histogram_with_an_explicit_inf_bucket_is_not_doubled() -> None:
    peer = _http_peer(
        0, "127.0.0.1:1", response_time_histogram={"buckets": [[0.1, 2], ["+Inf", 3]], "sum": 0.4}
    )
    fams = parse({"http_upstreams": {"u": {"peers": [peer]}}})
    hist = "preforklb_upstream_server_response_time_seconds"
    assert [(s.labels["le"], s.value) for s in samples(fams, hist, hist + "_bucket")] == [
        ("0.1", 2),
        ("+Inf", 3),
    ]
    assert value(fams, hist, "_count", upstream="u", server="127.0.0.1:1") == 3


@pytest.mark.parametrize(
    "histogram",
    [
        None,
        {},
        {"buckets": []},
        {"buckets": [[0.1]]},
        {"buckets": [["soon", 1]]},
        {"buckets": [[math.nan, 1]]},
        "x",
    ],
)
def test_unusable_histograms_are_skipped(histogram: Any) -> None:
    peer = _http_peer(0, "127.0.0.1:1", requests=3, response_time_histogram=histogram)
    fams = parse({"http_upstreams": {"u": {"peers": [peer]}}})
    assert "preforklb_upstream_server_response_time_seconds" not in fams
    assert (
        value(fams, "nginxplus_upstream_server_requests", "_total", upstream="u", server="127.0.0.1:1") == 3
    )


# ---------------------------------------------------------------------------- empty and missing


def test_no_documents_only_the_up_gauges() -> None:
    fams = parse({})
    assert set(fams) == {"nginxplus_up", "preforklb_up"}
    assert value(fams, "nginxplus_up") == 1


@pytest.mark.parametrize("empty", [{}, None, [], "garbage"])
def test_empty_sections_yield_no_families(empty: Any) -> None:
    docs = documents()
    for key in ("http_server_zones", "http_upstreams", "stream_server_zones", "stream_upstreams", "workers"):
        docs[key] = empty
    fams = parse(docs)
    assert not [n for n in fams if "zone" in n or "upstream" in n or n.startswith("preforklb_worker_")]
    assert value(fams, "nginxplus_connections_accepted", "_total") == 120


def test_missing_sections_are_skipped_independently() -> None:
    docs = documents()
    for key in (
        "connections",
        "http_requests",
        "stream_server_zones",
        "stream_upstreams",
        "reloads",
        "uptime_s",
    ):
        del docs[key]
    fams = parse(docs)
    assert "nginxplus_connections_accepted" not in fams
    assert "nginxplus_http_requests" not in fams
    assert "preforklb_reloads" not in fams
    assert "preforklb_uptime_seconds" not in fams
    assert not [n for n in fams if n.startswith("nginxplus_stream_")]
    assert value(fams, "nginxplus_upstream_server_requests", "_total", **A) == 200


def test_upstream_without_peers_still_reports_the_group() -> None:
    fams = parse({"http_upstreams": {"empty": {"peers": [], "keepalive": 0, "zombies": 0, "zone": "empty"}}})
    assert value(fams, "nginxplus_upstream_keepalives", upstream="empty") == 0
    assert not [n for n in fams if n.startswith("nginxplus_upstream_server_")]


def test_missing_and_malformed_fields_read_as_zero() -> None:
    peer = {"server": "127.0.0.1:1", "requests": None, "fails": "3", "active": True}
    fams = parse({"http_upstreams": {"u": {"peers": [peer]}}})
    labels = {"upstream": "u", "server": "127.0.0.1:1"}
    assert value(fams, "nginxplus_upstream_server_requests", "_total", **labels) == 0
    assert value(fams, "nginxplus_upstream_server_fails", "_total", **labels) == 0
    assert value(fams, "nginxplus_upstream_server_active", **labels) == 0
    assert value(fams, "nginxplus_upstream_server_state", **labels) == 0


def test_unreadable_worker_figures_are_left_out() -> None:
    # /prefork/workers reports rss and cpu as null when psutil could not read the process.
    worker = {"pid": 7, "generation": 1, "connections": 2, "rss": None, "cpu": None}
    fams = parse({"workers": [worker]})
    assert "preforklb_worker_resident_memory_bytes" not in fams
    assert "preforklb_worker_cpu_seconds" not in fams
    assert value(fams, "preforklb_worker_connections", pid="7", generation="1") == 2


def test_a_malformed_peer_is_an_empty_one_not_an_error() -> None:
    fams = parse({"http_upstreams": {"u": {"peers": ["not a peer"]}}})
    assert value(fams, "nginxplus_upstream_server_requests", "_total", upstream="u", server="") == 0


# ---------------------------------------------------------------------------- exposition


def test_label_values_are_escaped() -> None:
    zone = 'we"ird\\zone\nname'
    fams = parse({"http_server_zones": {zone: {"requests": 1}}})
    assert value(fams, "nginxplus_server_zone_requests", "_total", server_zone=zone) == 1


def test_render_is_pure_and_leaves_the_global_registry_alone() -> None:
    before = set(REGISTRY._names_to_collectors)
    docs = documents()
    snapshot = copy.deepcopy(docs)
    first = render(docs)
    assert render(docs) == first
    assert docs == snapshot
    assert set(REGISTRY._names_to_collectors) == before
    assert isinstance(first, bytes)
    assert first.endswith(b"\n")
    assert b"process_" not in first and b"python_" not in first
