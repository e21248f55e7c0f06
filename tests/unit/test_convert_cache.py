"""``prefork-lb convert`` of nginx's proxy_cache directives (prefork_lb/convert/cache.py).

The mapping is sans-IO: a Directive tree in, the TOML document and the report out. The round
trip through the loader (the keys the cache's config takes) is in the differential tests
(tests/integration/test_cache_differential.py), which run every converted scenario.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from prefork_lb.convert import convert_file
from prefork_lb.convert.mapping import map_config
from prefork_lb.convert.read import Directive


def d(name: str, *args: str, block: list[Directive] | None = None, line: int = 1) -> Directive:
    out = Directive(name, list(args), "nginx.conf", line, block, "")
    out.where = f"nginx.conf:{line}"
    return out


def http(*directives: Directive) -> tuple[dict[str, Any], list[str]]:
    mapped = map_config([d("http", block=list(directives))])
    return mapped.doc["http"], [str(n) for n in mapped.notes]


def location(*directives: Directive) -> tuple[dict[str, Any], list[str]]:
    loc = d("location", "/", block=[d("proxy_pass", "http://be", line=2), *directives])
    doc, notes = http(d("server", block=[d("listen", "127.0.0.1:8080"), loc]))
    return doc["servers"][0]["locations"][0], notes


def test_cache_path_becomes_a_table_named_by_its_zone() -> None:
    """Catches: a proxy_cache_path parameter mapped to a wrong key, a size or time converted
    (the loader reads them as nginx wrote them), or a bare number left a string."""
    doc, notes = http(
        d(
            "proxy_cache_path",
            "/var/cache/plb",
            "levels=1:2",
            "keys_zone=mycache:10m",
            "inactive=600",
            "max_size=1g",
            "min_free=100m",
        )
    )
    assert doc["proxy_cache_paths"] == {
        "mycache": {
            "path": "/var/cache/plb",
            "levels": "1:2",
            "keys_zone": "10m",
            "inactive": 600,
            "max_size": "1g",
            "min_free": "100m",
        }
    }
    assert notes == []


def test_cache_path_knobs_without_equivalent_are_reported() -> None:
    """Catches: manager/loader/temp-path knobs dropped silently, or a path without keys_zone
    (nginx refuses it) converted into a table the loader would misname."""
    doc, notes = http(
        d("proxy_cache_path", "c", "keys_zone=z:1m", "use_temp_path=off", "loader_files=10", line=3),
        d("proxy_cache_path", "c2", "levels=1", line=4),
        d("proxy_cache_path", "c3", "keys_zone=z3:1m", "bogus=1", line=5),
    )
    assert doc["proxy_cache_paths"] == {"z": {"path": "c", "keys_zone": "1m", "use_temp_path": False}}
    assert notes == [
        'nginx.conf:3: "proxy_cache_path c keys_zone=z:1m use_temp_path=off loader_files=10": '
        '"loader_files=10": prefork-lb\'s cache manager and loader pace themselves; ignored (docs/cache.md)',
        'nginx.conf:4: "proxy_cache_path c2 levels=1" needs "keys_zone=NAME:SIZE"; skipped',
        'nginx.conf:5: "proxy_cache_path c3 keys_zone=z3:1m bogus=1" has the unknown parameter "bogus=1"; '
        "skipped",
    ]


def test_location_keys_and_accumulating_directives() -> None:
    """Catches: a repeated proxy_cache_valid / proxy_cache_bypass line replacing the previous
    one (nginx accumulates them within a level, first valid match wins in config order), a flag
    not turned into a bool, or the zone name lost."""
    loc, notes = location(
        d("proxy_cache", "mycache"),
        d("proxy_cache_key", "$scheme$host$request_uri"),
        d("proxy_cache_valid", "200", "302", "10m"),
        d("proxy_cache_valid", "404", "1m"),
        d("proxy_cache_valid", "5s"),
        d("proxy_cache_methods", "GET", "HEAD", "POST"),
        d("proxy_cache_min_uses", "3"),
        d("proxy_cache_bypass", "$cookie_nocache", "$arg_nocache"),
        d("proxy_cache_bypass", "$http_pragma"),
        d("proxy_no_cache", "$http_authorization"),
        d("proxy_cache_lock", "on"),
        d("proxy_cache_lock_timeout", "5s"),
        d("proxy_cache_lock_age", "7"),
        d("proxy_cache_use_stale", "error", "timeout", "updating", "http_500"),
        d("proxy_cache_background_update", "on"),
        d("proxy_cache_revalidate", "off"),
        d("proxy_cache_convert_head", "off"),
        d("proxy_ignore_headers", "Cache-Control", "Expires"),
        d("proxy_ignore_headers", "Set-Cookie"),
    )
    assert notes == []
    assert {k: v for k, v in loc.items() if k not in ("match", "proxy_pass")} == {
        "proxy_cache": "mycache",
        "proxy_cache_key": "$scheme$host$request_uri",
        "proxy_cache_valid": ["200 302 10m", "404 1m", "5s"],
        "proxy_cache_methods": ["GET", "HEAD", "POST"],
        "proxy_cache_min_uses": 3,
        "proxy_cache_bypass": ["$cookie_nocache", "$arg_nocache", "$http_pragma"],
        "proxy_no_cache": ["$http_authorization"],
        "proxy_cache_lock": True,
        "proxy_cache_lock_timeout": "5s",
        "proxy_cache_lock_age": 7,
        "proxy_cache_use_stale": ["error", "timeout", "updating", "http_500"],
        "proxy_cache_background_update": True,
        "proxy_cache_revalidate": False,
        "proxy_cache_convert_head": False,
        "proxy_ignore_headers": ["Cache-Control", "Expires", "Set-Cookie"],
    }


def test_use_stale_off_wins_and_duplicates_are_noted() -> None:
    """Catches: "proxy_cache_use_stale off" written as a condition named "off" (or losing to the
    other words of its level, which nginx ignores), and a duplicate bitmask word kept twice."""
    loc, notes = location(
        d("proxy_cache_use_stale", "error", "off", line=3),
        d("proxy_cache_use_stale", "timeout", line=4),
        d("proxy_cache_methods", "GET", "GET", line=5),
    )
    assert loc["proxy_cache_use_stale"] == []
    assert loc["proxy_cache_methods"] == ["GET"]
    assert notes == [
        'nginx.conf:3: "proxy_cache_use_stale error off": "off" wins over the other conditions of this '
        "level, as in nginx",
        'nginx.conf:4: "proxy_cache_use_stale timeout": "off" wins over the other conditions of this '
        "level, as in nginx",
        'nginx.conf:5: "proxy_cache_methods GET GET": "GET" is given twice; nginx warns "duplicate value", '
        "it counts once",
    ]


def test_levels_are_kept_where_written_and_unmapped_ones_reported() -> None:
    """Catches: an http- or server-level cache directive pushed into the wrong table (the loader
    inherits them, and a level's own list replaces the outer one whole), a variable zone name
    or proxy_cache_max_range_offset dropped without a word."""
    server = d(
        "server",
        block=[
            d("listen", "127.0.0.1:8080"),
            d("proxy_cache", "$zone", line=3),
            d("proxy_cache_valid", "404", "1m", line=4),
            d(
                "location",
                "/",
                block=[d("proxy_pass", "http://be"), d("proxy_cache_max_range_offset", "1m", line=6)],
            ),
        ],
    )
    doc, notes = http(d("proxy_cache", "c"), d("proxy_cache_valid", "10s"), server)
    assert (doc["proxy_cache"], doc["proxy_cache_valid"]) == ("c", ["10s"])
    s = doc["servers"][0]
    assert "proxy_cache" not in s and s["proxy_cache_valid"] == ["404 1m"]
    assert notes == [
        'nginx.conf:3: "proxy_cache $zone" names its zone with a variable, which prefork-lb does not take: '
        "name the zone; skipped",
        'nginx.conf:6: "proxy_cache_max_range_offset 1m" has no prefork-lb equivalent (a range of a cached '
        "key is answered from the cached entry whatever its offset); skipped",
    ]


def test_converted_file_reads_back_with_origins(tmp_path: Path) -> None:
    """Catches: the TOML writer emitting the zone table or the lists so that the TOML parser
    reads back something else, or an item's origin (the loader's error line) missing."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "http {\n"
        "    proxy_cache_path cache/one levels=1:2 keys_zone=one.zone:1m;\n"
        "    server {\n"
        "        listen 127.0.0.1:8080;\n"
        "        location / {\n"
        "            proxy_pass http://127.0.0.1:9;\n"
        "            proxy_cache one.zone;\n"
        "            proxy_cache_valid 200 1s;\n"
        "            proxy_cache_valid any 2s;\n"
        "        }\n"
        "    }\n"
        "}\n"
    )
    conv = convert_file(str(conf))
    doc = tomllib.loads(conv.toml)
    assert doc["http"]["proxy_cache_paths"] == {
        "one.zone": {"path": "cache/one", "levels": "1:2", "keys_zone": "1m"}
    }
    loc = doc["http"]["servers"][0]["locations"][0]
    assert (loc["proxy_cache"], loc["proxy_cache_valid"]) == ("one.zone", ["200 1s", "any 2s"])
    assert conv.origin("http.proxy_cache_paths.one.zone.levels") == "nginx.conf:2"
    assert conv.origin("http.servers[0].locations[0].proxy_cache_valid[1]") == "nginx.conf:9"


def test_cache_path_round_trip_through_the_loader(tmp_path: Path) -> None:
    """Catches: a converted proxy_cache_path the loader reads differently from nginx (the
    relative path against the nginx.conf's directory, sizes, times, levels, use_temp_path), or
    an error in it not naming the nginx line."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "http {\n"
        "    proxy_cache_path cache/one levels=1:2 keys_zone=one:2m inactive=30s max_size=1g\n"
        "                     min_free=100m use_temp_path=on;\n"
        "    server { listen 127.0.0.1:8080; location / { return 200; } }\n"
        "}\n"
    )
    zone = load_config(str(conf)).http.cache_paths["one"]
    assert (zone.path, zone.levels, zone.keys_zone_bytes, zone.inactive_s) == (
        str(tmp_path / "cache/one"),
        (1, 2),
        2 << 20,
        30.0,
    )
    assert (zone.max_size_bytes, zone.min_free_bytes, zone.use_temp_path) == (1 << 30, 100 << 20, True)
    conf.write_text(conf.read_text().replace("levels=1:2", "levels=1:3"))
    with pytest.raises(ConfigError, match=r"nginx.conf:2: http.proxy_cache_paths.one.levels: must be 1 to 3"):
        load_config(str(conf))


def test_location_keys_round_trip_with_nginx_inheritance(tmp_path: Path) -> None:
    """Catches: a converted proxy_cache* directive the loader reads differently from nginx:
    http- and server-level values not reaching the location, a location's own list not
    replacing the inherited one whole, repeated lines not accumulated, ``off`` not
    cancelling an inherited zone or stale use."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "http {\n"
        "    proxy_cache_path cache keys_zone=c:1m;\n"
        "    proxy_cache c;\n"
        "    proxy_cache_valid 200 302 10m;\n"
        "    proxy_cache_valid 404 1m;\n"
        "    proxy_cache_use_stale error updating;\n"
        "    server {\n"
        "        listen 127.0.0.1:8080;\n"
        "        proxy_cache_lock on;\n"
        "        proxy_cache_lock_timeout 2s;\n"
        "        location / {\n"
        "            proxy_pass http://127.0.0.1:9;\n"
        "            proxy_cache_key $scheme$host$request_uri;\n"
        "            proxy_cache_methods POST;\n"
        "            proxy_cache_min_uses 2;\n"
        "            proxy_cache_bypass $cookie_nocache $arg_nocache;\n"
        "            proxy_cache_bypass $http_pragma;\n"
        "            proxy_no_cache $http_authorization;\n"
        "            proxy_cache_background_update on;\n"
        "            proxy_cache_revalidate on;\n"
        "            proxy_cache_convert_head off;\n"
        "            proxy_ignore_headers Cache-Control Set-Cookie;\n"
        "            proxy_force_ranges on;\n"
        "        }\n"
        "        location /own/ { proxy_pass http://127.0.0.1:9; proxy_cache_valid any 5s; }\n"
        "        location /off/ {\n"
        "            proxy_pass http://127.0.0.1:9;\n"
        "            proxy_cache off;\n"
        "            proxy_cache_use_stale off;\n"
        "        }\n"
        "    }\n"
        "}\n"
    )
    root, own, off = load_config(str(conf)).http.servers[0].locations
    assert (root.proxy_cache, own.proxy_cache, off.proxy_cache) == ("c", "c", "")
    assert root.proxy_cache_valid == ((frozenset({200, 302}), 600), (frozenset({404}), 60))
    assert own.proxy_cache_valid == ((None, 5),)
    assert root.proxy_cache_use_stale == own.proxy_cache_use_stale == frozenset({"error", "updating"})
    assert off.proxy_cache_use_stale == frozenset()
    assert (root.proxy_cache_lock, root.proxy_cache_lock_timeout_s, own.proxy_cache_lock) == (True, 2.0, True)
    assert root.proxy_cache_key == "$scheme$host$request_uri"
    assert own.proxy_cache_key == "$scheme$proxy_host$request_uri"
    assert root.proxy_cache_methods == frozenset({b"GET", b"HEAD", b"POST"})
    assert (root.proxy_cache_min_uses, own.proxy_cache_min_uses) == (2, 1)
    assert root.proxy_cache_bypass == ("$cookie_nocache", "$arg_nocache", "$http_pragma")
    assert root.proxy_no_cache == ("$http_authorization",)
    assert (root.proxy_cache_background_update, root.proxy_cache_revalidate) == (True, True)
    assert (root.proxy_cache_convert_head, own.proxy_cache_convert_head) == (False, True)
    assert root.proxy_ignore_headers == frozenset({"cache-control", "set-cookie"})
    assert (root.proxy_force_ranges, own.proxy_force_ranges) == (True, False)


def test_unknown_zone_error_names_the_nginx_line(tmp_path: Path) -> None:
    """Catches: a proxy_cache naming a zone no proxy_cache_path defines accepted (nginx
    refuses it), or the error not pointing at the nginx line that names it."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "http {\n"
        "    proxy_cache_path cache keys_zone=c:1m;\n"
        "    server {\n"
        "        listen 127.0.0.1:8080;\n"
        "        location / { proxy_pass http://127.0.0.1:9; proxy_cache d; }\n"
        "    }\n"
        "}\n"
    )
    with pytest.raises(ConfigError, match=r'nginx.conf:5: .*proxy_cache: unknown cache zone "d"'):
        load_config(str(conf))
