"""nginx's escapes in nginx.conf arguments (prefork_lb/convert/read.py ``unescape``): nginx's
reader turns ``\\``, ``\t``, ``\r``, ``\n`` into one character (ngx_conf_read_token);
crossplane leaves them as written. Found by the cache differential (test_x22: nginx answered
``return 404 "custom\n"`` with a newline, prefork-lb with a backslash and an ``n``)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from prefork_lb.convert import convert_file
from prefork_lb.convert.read import unescape


@pytest.mark.parametrize(
    ("written", "read"),
    [
        (r"custom\n", "custom\n"),
        (r"a\tb\r\n", "a\tb\r\n"),
        (r"c\\d", "c\\d"),
        (r"a\\n", "a\\n"),  # left to right: an escaped backslash, then a plain n
        (r"^/(\d+)\.php$", r"^/(\d+)\.php$"),  # other backslashes stay (regexes)
        ("plain", "plain"),
    ],
)
def test_unescape_as_nginx_reads(written: str, read: str) -> None:
    """Catches: an escape nginx resolves left as written, or a regex backslash removed."""
    assert unescape(written) == read


def test_converted_file_resolves_escapes(tmp_path: Path) -> None:
    """Catches: the converter passing crossplane's raw arguments on (a return text ending in
    a literal backslash-n), the loader trimming the text's newline (nginx sends it), a regex
    location losing its escapes; and a control character from an escape reaching a response
    header (the loader refuses it, naming the line)."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "events {}\n"
        "http {\n"
        "    server {\n"
        "        listen 127.0.0.1:8080;\n"
        '        location / { return 200 "ok\\n"; }\n'
        "        location ~ \\.php$ { return 404; }\n"
        "    }\n"
        "}\n"
    )
    doc = tomllib.loads(convert_file(str(conf)).toml)
    root, php = doc["http"]["servers"][0]["locations"]
    assert root["return"] == "200 ok\n"
    assert php["match"] == "~ \\.php$"
    loaded = load_config(str(conf)).http.servers[0].locations
    assert loaded[0].return_ is not None and loaded[0].return_.text == "ok\n"
    conf.write_text(conf.read_text().replace('return 200 "ok\\n";', 'add_header X-A "a\\nb"; return 200;'))
    with pytest.raises(ConfigError, match=r"nginx.conf:5: .*add_header"):
        load_config(str(conf))
