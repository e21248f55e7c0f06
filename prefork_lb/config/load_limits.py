"""``[http.limit_req_zones]``, ``[http.limit_conn_zones]``, the location-level ``limit_*``
keys and a server's realip keys (nginx's limit_req, limit_conn and realip modules).

Rules:
- Zones are loaded before any level's settings, so a ``limit_req``/``limit_conn`` naming an
  unknown zone is an error where it is written (file and key).
- ``limit_req``/``limit_conn`` take one table or an array of tables; a level that sets one
  replaces the inherited list whole (nginx: used from the outer level only if the current
  level has none).
- A rate is nginx's "Nr/s" or "Nr/m" with N > 0; stored as milli-requests per second
  (r/m: N*1000/60, as nginx).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from prefork_lb.config.model import LimitConn, LimitConnZone, LimitReq, LimitReqZone, RealIp
from prefork_lb.config.source import Source, Table, boolean, size, string, string_list
from prefork_lb.limits.table import MIN_SIZE

_RATE = re.compile(r"(\d+)r/([sm])")
LOG_LEVELS = ("info", "notice", "warn", "error")


def _rate(value: object) -> tuple[int, str]:
    if not isinstance(value, str) or (m := _RATE.fullmatch(value)) is None:
        raise ValueError('must be a rate such as "10r/s" or "30r/m"')
    n = int(m.group(1))
    if n <= 0:
        raise ValueError("must be above 0")
    return (n * 1000 if m.group(2) == "s" else n * 1000 // 60), value


def _zone_size(value: object) -> int:
    n = size(value)
    if n < MIN_SIZE:
        raise ValueError(f"is too small (at least {MIN_SIZE} bytes)")
    return n


def _key(t: Table) -> str:
    from prefork_lb.http.template import compile_template
    from prefork_lb.http.variables import VariableError

    key = t.take("key", string)
    try:
        compile_template(key)
    except VariableError as e:
        raise t.error("key", str(e)) from None
    return key


def limit_zones(t: Table) -> tuple[dict[str, LimitReqZone], dict[str, LimitConnZone]]:
    reqs: dict[str, LimitReqZone] = {}
    zones = t.table("limit_req_zones")
    for name in list(zones.data):
        z = zones.table(name, default_empty=False)
        rate_mrps, rate = z.take("rate", _rate)
        reqs[name] = LimitReqZone(name, _key(z), z.take("size", _zone_size, 1024 * 1024), rate_mrps, rate)
        z.finish()
    zones.finish()
    conns: dict[str, LimitConnZone] = {}
    zones = t.table("limit_conn_zones")
    for name in list(zones.data):
        z = zones.table(name, default_empty=False)
        conns[name] = LimitConnZone(name, _key(z), z.take("size", _zone_size, 1024 * 1024))
        z.finish()
    zones.finish()
    return reqs, conns


def _tables(value: object) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, dict) for i in items):
        raise ValueError("must be a table or an array of tables")
    return items  # type: ignore[return-value]


def _int(item: dict[str, Any], key: str, default: int, low: int) -> int:
    v = item.pop(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f'"{key}" must be an integer >= {low}')
    return v


def _unknown(item: dict[str, Any], allowed: str) -> None:
    if item:
        raise ValueError(f'unknown key "{next(iter(item))}" (allowed: {allowed})')


def limit_req(value: object) -> tuple[LimitReq, ...]:
    out = []
    for raw in _tables(value):
        item = dict(raw)
        zone = item.pop("zone", None)
        if not isinstance(zone, str):
            raise ValueError('needs "zone", the name of a [http.limit_req_zones] entry')
        burst = _int(item, "burst", 0, 0)
        nodelay = item.pop("nodelay", False)
        if not isinstance(nodelay, bool):
            raise ValueError('"nodelay" must be true or false')
        if nodelay and "delay" in item:
            raise ValueError('"nodelay" and "delay" cannot be combined')
        delay = _int(item, "delay", 0, 0)
        _unknown(item, "zone, burst, nodelay, delay")
        out.append(LimitReq(zone, burst, None if nodelay else delay))
    return tuple(out)


def limit_conn(value: object) -> tuple[LimitConn, ...]:
    out = []
    for raw in _tables(value):
        item = dict(raw)
        zone = item.pop("zone", None)
        if not isinstance(zone, str):
            raise ValueError('needs "zone", the name of a [http.limit_conn_zones] entry')
        number = _int(item, "number", 0, 1) if "number" in item else None
        if number is None:
            raise ValueError('needs "number", the connections allowed per key')
        _unknown(item, "zone, number")
        out.append(LimitConn(zone, number))
    return tuple(out)


def limit_status(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise ValueError("must be a status between 400 and 599 (as nginx)")
    return value


def log_level(value: object) -> str:
    if value not in LOG_LEVELS:
        raise ValueError(f"must be one of: {', '.join(LOG_LEVELS)}")
    return str(value)


# location-level keys (config/load_http.py LOCATION_KEYS): key -> (field, converter)
LIMIT_KEYS = {
    "limit_req": ("limit_req", limit_req),
    "limit_req_status": ("limit_req_status", limit_status),
    "limit_req_dry_run": ("limit_req_dry_run", boolean),
    "limit_req_log_level": ("limit_req_log_level", log_level),
    "limit_conn": ("limit_conn", limit_conn),
    "limit_conn_status": ("limit_conn_status", limit_status),
    "limit_conn_dry_run": ("limit_conn_dry_run", boolean),
    "limit_conn_log_level": ("limit_conn_log_level", log_level),
}


def check_zone_names(
    t: Table, key: str, value: Any, reqs: dict[str, LimitReqZone], conns: dict[str, LimitConnZone]
) -> None:
    """A ``limit_req``/``limit_conn`` naming an unknown zone: an error where it is written."""
    if key == "limit_req":
        for i, lr in enumerate(value):
            if lr.zone not in reqs:
                raise t.error(key, f'[{i}]: unknown zone "{lr.zone}" (define it in [http.limit_req_zones])')
    elif key == "limit_conn":
        for i, lc in enumerate(value):
            if lc.zone not in conns:
                raise t.error(key, f'[{i}]: unknown zone "{lc.zone}" (define it in [http.limit_conn_zones])')


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f'"{text}" is not an address or CIDR') from None


def realip(source: Source, t: Table) -> RealIp | None:
    """``set_real_ip_from`` / ``real_ip_header`` / ``real_ip_recursive`` of a server."""
    if not t.has("set_real_ip_from"):
        for key in ("set_real_ip_from", "real_ip_header", "real_ip_recursive"):
            if t.has(key):
                raise t.error(key, 'has no effect without "set_real_ip_from"')
            t.raw(key, None)
        return None
    nets = []
    for i, text in enumerate(t.take("set_real_ip_from", string_list)):
        try:
            nets.append(_network(text))
        except ValueError as e:
            raise source.error(f"{t.key_path('set_real_ip_from')}[{i}]", str(e)) from None
    header = t.take("real_ip_header", string, "X-Real-IP")
    if header.lower() == "proxy_protocol":
        raise t.error("real_ip_header", '"proxy_protocol" needs PROXY protocol listeners, not supported yet')
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", header):
        raise t.error("real_ip_header", "must be a header name")
    return RealIp(tuple(nets), header, t.take("real_ip_recursive", boolean, False))
