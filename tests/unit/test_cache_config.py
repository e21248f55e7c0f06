"""The location-level proxy_cache* keys (config/load_proxy_cache.py): values, inheritance, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefork_lb.config.errors import ConfigError
from tests.unit.test_config import load, make


def test_defaults_off(tmp_path: Path) -> None:
    loc = load(tmp_path, make()).http.servers[0].locations[0]
    assert loc.proxy_cache == ""
    assert loc.proxy_cache_key == "$scheme$proxy_host$request_uri"
    assert loc.proxy_cache_methods == {b"GET", b"HEAD"}
    assert loc.proxy_cache_min_uses == 1
    assert not loc.proxy_cache_lock
    assert (loc.proxy_cache_lock_timeout_s, loc.proxy_cache_lock_age_s) == (5.0, 5.0)
    assert loc.proxy_cache_convert_head and not loc.proxy_cache_revalidate
    assert loc.proxy_cache_use_stale == frozenset() and loc.proxy_ignore_headers == frozenset()


def test_values_and_inheritance(tmp_path: Path) -> None:
    """http -> server -> location, nearest wins, lists replaced whole (nginx)."""
    cfg = load(
        tmp_path,
        make(
            http='proxy_cache_valid = ["200 302 10m", "404 1m", "any 5s"]\nproxy_cache_lock = true',
            server='proxy_cache_methods = ["POST"]\nproxy_cache_use_stale = ["error", "updating"]',
            location="\n".join(
                [
                    'proxy_cache_key = "$scheme$host$request_uri"',
                    'proxy_cache_bypass = ["$cookie_nocache", "$arg_nocache"]',
                    'proxy_no_cache = "$http_authorization"',
                    'proxy_cache_lock_timeout = "2s"',
                    "proxy_cache_min_uses = 3",
                    'proxy_ignore_headers = ["Cache-Control", "Set-Cookie"]',
                    "proxy_cache_background_update = true",
                    "proxy_cache_revalidate = true",
                    "proxy_cache_convert_head = false",
                ]
            ),
        ),
    )
    loc = cfg.http.servers[0].locations[0]
    assert loc.proxy_cache_valid == ((frozenset({200, 302}), 600), (frozenset({404}), 60), (None, 5))
    assert loc.proxy_cache_lock and loc.proxy_cache_lock_timeout_s == 2.0
    assert loc.proxy_cache_methods == {b"GET", b"HEAD", b"POST"}
    assert loc.proxy_cache_use_stale == {"error", "updating"}
    assert loc.proxy_cache_key == "$scheme$host$request_uri"
    assert loc.proxy_cache_bypass == ("$cookie_nocache", "$arg_nocache")
    assert loc.proxy_no_cache == ("$http_authorization",)
    assert loc.proxy_cache_min_uses == 3
    assert loc.proxy_ignore_headers == {"cache-control", "set-cookie"}
    assert loc.proxy_cache_background_update and loc.proxy_cache_revalidate
    assert not loc.proxy_cache_convert_head


def test_off_cancels_inherited(tmp_path: Path) -> None:
    cfg = load(tmp_path, make(http='proxy_cache = "off"', location='proxy_cache_use_stale = "off"'))
    loc = cfg.http.servers[0].locations[0]
    assert loc.proxy_cache == "" and loc.proxy_cache_use_stale == frozenset()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('proxy_cache_valid = ["200 1x"]', "http.servers[0].locations[0].proxy_cache_valid: [0]:"),
        ('proxy_cache_valid = ["abc 1m"]', 'invalid status code "abc"'),
        ('proxy_cache_use_stale = ["http_418"]', 'unknown condition "http_418"'),
        ('proxy_ignore_headers = ["Content-Type"]', 'cannot ignore "Content-Type"'),
        ('proxy_cache_methods = ["get"]', '"get" is not a method name'),
        ("proxy_cache_min_uses = 0", "must be a positive integer"),
        ('proxy_cache_key = "$nosuchvar"', "proxy_cache_key"),
        ('proxy_cache_bypass = ["$arg_x", "$nosuch"]', "proxy_cache_bypass: [1]:"),
        ('proxy_cache_lock_timeout = "5x"', "invalid duration"),
        ('proxy_cache = "a b"', "is not a cache zone name"),
    ],
)
def test_errors_name_key_path(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, make(location=line))
    assert message in str(e.value)


def test_proxy_cache_names_a_cache_path(tmp_path: Path) -> None:
    """A known zone is accepted; an unknown one is an error where it is written."""
    paths = '[http.proxy_cache_paths.one]\npath = "c"\nkeys_zone = "1m"\n'
    cfg = load(tmp_path, make(location='proxy_cache = "one"', more=paths))
    assert cfg.http.servers[0].locations[0].proxy_cache == "one"
    with pytest.raises(ConfigError) as e:
        load(tmp_path, make(server='proxy_cache = "two"', more=paths))
    assert 'http.servers[0].proxy_cache: unknown cache zone "two"' in str(e.value)
