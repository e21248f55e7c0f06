"""No control character reaches a backend through a variable (issue 11 item 11a).

Every variable whose value a client controls is rendered into ``proxy_set_header`` with a
value holding all 33 control characters (0x00-0x1f, 0x7f); the upstream head must contain
none of them except HTAB, each one percent-encoded, and exactly the fields configured (no
field split or injected). The old code encoded only CR, LF and NUL, so VT, FF, 0x1c-0x1f and
DEL went through raw: ``test_every_client_source_is_encoded`` fails there for each source.
The response side is checked as well: a ``return`` redirect's Location and the access log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prefork_lb.config.errors import ConfigError
from prefork_lb.config.load import load_config
from prefork_lb.http.accesslog import escape_log_value
from prefork_lb.http.connection import _safe_location
from prefork_lb.http.exchange import ConnectionInfo, Exchange
from prefork_lb.http.headers import HeaderPlan, build_upstream_head

CTLS = "".join(map(chr, range(0x20))) + "\x7f"
BAD_BYTES = frozenset(range(0x20)) - {0x09} | {0x7F}
ENCODED = "".join(c if c == "\t" else f"%{ord(c):02X}" for c in CTLS).encode()
OBS_TEXT = "\x80\xe9\xff"  # allowed in field values: forwarded byte for byte

# variable -> where the client put the control characters
SOURCES = {
    "$http_x_evil": "a header",
    "$http_cookie": "the Cookie header",
    "$cookie_c": "one cookie",
    "$arg_a": "one argument",
    "$args": "the query string",
    "$query_string": "the query string",
    "$uri": "the decoded path",
    "$document_uri": "the decoded path",
    "$request_uri": "the raw target",
    "$request": "the request line",
    "$host": "the Host",
    "$proxy_add_x_forwarded_for": "X-Forwarded-For",
}


def evil_exchange(value: str = CTLS) -> Exchange:
    """An exchange whose every client-controlled field holds ``value`` (the parser would
    refuse most of these bytes on the wire; this is the last line of defence)."""
    raw = value.encode("latin-1")
    headers = [
        (b"Host", b"h" + raw),
        (b"X-Evil", raw),
        (b"Cookie", b"c=" + raw),
        (b"X-Forwarded-For", raw),
    ]
    fields: dict[str, Any] = {
        "conn": ConnectionInfo("192.0.2.7", 54321, "127.0.0.1", 8080, 1),
        "method": b"GET",
        "target": b"/p" + raw + b"?a=" + raw,
        "path": "/p" + value,
        "args": "a=" + value,
        "version": (1, 1),
        "headers": headers,
        "header_index": {name.lower(): v for name, v in headers},
        "host": "h" + value,
        "start_time": 0.0,
        "request_length": 0,
    }
    return Exchange(**fields)


def fields_of(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")[1:]


@pytest.mark.parametrize("variable", list(SOURCES))
def test_every_client_source_is_encoded(variable: str) -> None:
    # The client's own fields are removed here ("" removes): only rendered values remain.
    removed = [("X-Evil", ""), ("Cookie", ""), ("X-Forwarded-For", "")]
    plan = HeaderPlan.compile([("Host", "backend"), ("X-V", f"[{variable}]"), *removed])
    head = build_upstream_head(evil_exchange(), plan, b"/", None, False, True)
    lines = fields_of(head)
    for line in lines:
        assert not BAD_BYTES & set(line), (variable, line)
    assert [line.partition(b":")[0] for line in lines] == [b"Host", b"X-V"]  # nothing split off
    assert ENCODED in lines[1]  # every CTL encoded as %XX, HTAB kept


def test_htab_and_obs_text_pass_unchanged() -> None:
    plan = HeaderPlan.compile([("X-V", "$http_x_evil")])
    head = build_upstream_head(evil_exchange("a\tb" + OBS_TEXT), plan, b"/", None, False, True)
    assert b"X-V: a\tb" + OBS_TEXT.encode("latin-1") + b"\r\n" in head


def test_config_text_with_a_control_character_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "lb.toml"
    conf.write_text(
        '[[http.servers]]\nlisten = ["127.0.0.1:1"]\n[[http.servers.locations]]\nmatch = "/"\n'
        'proxy_pass = "http://127.0.0.1:2"\nproxy_set_header = { X-A = "a\\u000bb", X-T = "a\\tb" }\n'
    )
    with pytest.raises(ConfigError, match="must not contain control characters"):
        load_config(str(conf))
    conf.write_text(conf.read_text().replace("a\\u000bb", "ab"))
    loc = load_config(str(conf)).http.servers[0].locations[0]
    assert loc.proxy_set_header == (("X-A", "ab"), ("X-T", "a\tb"))


def test_response_side_location_and_access_log_carry_no_control_character() -> None:
    location = _safe_location("/to" + CTLS)
    assert not BAD_BYTES & set(location) and b"\t" not in location
    assert not BAD_BYTES & set(escape_log_value(CTLS).encode())
