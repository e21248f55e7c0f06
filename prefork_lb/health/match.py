"""Match evaluation (sans-IO): a response's status, headers and body against a ``match``.

Pure functions over bytes already read by the prober, so every rule is unit-tested without
sockets. ``http_verdict`` and ``stream_verdict`` return "" for a pass, else the reason (it
goes into the "is unhealthy" warning).
"""

from __future__ import annotations

from prefork_lb.health.model import BODY_LIMIT_BYTES, HttpMatch, StatusTest, StreamMatch


class BadResponse(ValueError):
    """A reply that is not an HTTP response head."""


def parse_head(head: bytes) -> tuple[int, list[tuple[str, str]]]:
    """Status code and (lower-case name, value) header pairs of a response head (without the
    blank line). Raises BadResponse on anything else (garbage is a failed check)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise BadResponse("not an HTTP response")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise BadResponse("malformed header line")
        headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
    return int(parts[1]), headers


def status_passes(test: StatusTest, status: int) -> bool:
    inside = any(lo <= status <= hi for lo, hi in test.ranges)
    return inside != test.negate


def http_verdict(match: HttpMatch | None, status: int, headers: list[tuple[str, str]], body: bytes) -> str:
    """Without a match block a check passes on 2xx and 3xx (nginx Plus)."""
    if match is None:
        return "" if 200 <= status < 400 else f"status {status}"
    if match.status is not None and not status_passes(match.status, status):
        return f"status {status}"
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name, []).append(value)
    for t in match.headers:
        got = values.get(t.name, [])
        if t.op == "present":
            ok = bool(got)
        elif t.op == "absent":
            ok = not got
        elif t.op == "=":
            ok = t.value in got
        elif t.op == "!=":
            ok = bool(got) and t.value not in got
        else:
            assert t.regex is not None
            found = any(t.regex.search(v) for v in got)
            ok = found if t.op == "~" else bool(got) and not found
        if not ok:
            return f'header "{t.name}" fails {t.op} {t.value}'.rstrip()
    if match.body is not None:
        negated, regex = match.body
        if (regex.search(body[:BODY_LIMIT_BYTES]) is not None) == negated:
            return "body does not match"
    return ""


def stream_verdict(match: StreamMatch | None, reply: bytes) -> str:
    """The reply so far against ``expect``: "" pass, else a reason (more data may still come:
    ``stream_may_pass`` says whether waiting can help)."""
    if match is None or match.expect is None:
        return ""
    is_regex, literal, regex = match.expect
    if is_regex:
        assert regex is not None
        return "" if regex.search(reply) else "reply does not match"
    return "" if reply.startswith(literal) else "reply does not match"


def stream_may_pass(match: StreamMatch, reply: bytes) -> bool:
    """Whether more bytes could still make ``reply`` pass (a literal: it is a prefix so far)."""
    assert match.expect is not None
    is_regex, literal, _ = match.expect
    return True if is_regex else literal.startswith(reply)
