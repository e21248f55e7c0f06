"""Finding and parsing a buffered upstream head with CRLF or bare-LF line ends (response.py
rule 7): the head ends at the earliest blank line, whatever its line-end form."""

from __future__ import annotations

import pytest

from prefork_lb.http.response import UpstreamProtocolError, head_end, parse_buffered_head


def parse(buf: bytes, head_request: bool = False) -> tuple[int, bytes, bytes]:
    end, after = head_end(buf, 0)
    assert end >= 0
    resp, rest = parse_buffered_head(buf, end, after, head_request)
    return resp.status, dict(resp.headers).get(b"X", b""), buf[rest:]


def test_crlf_head() -> None:
    assert parse(b"HTTP/1.1 200 OK\r\nX: 1\r\nContent-Length: 2\r\n\r\nok") == (200, b"1", b"ok")


@pytest.mark.parametrize(
    "buf",
    [
        b"HTTP/1.1 200 OK\nX: 1\nContent-Length: 2\n\nok",
        b"HTTP/1.1 200 OK\r\nX: 1\nContent-Length: 2\r\n\nok",
        b"HTTP/1.1 200 OK\nX: 1\r\nContent-Length: 2\n\r\nok",
        b"HTTP/1.1 200 OK\nX: 1\nContent-Length: 2\r\n\r\nok",
    ],
)
def test_bare_lf_line_ends_accepted(buf: bytes) -> None:
    assert parse(buf) == (200, b"1", b"ok")


def test_earlier_lf_blank_line_wins_over_crlf_blank_line_in_the_body() -> None:
    buf = b"HTTP/1.1 200 OK\nX: 1\nContent-Length: 6\n\nab\r\n\r\n"
    assert parse(buf) == (200, b"1", b"ab\r\n\r\n")


def test_interim_and_final_head_in_one_buffer() -> None:
    buf = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nX: 2\r\n\r\n"
    end, after = head_end(buf, 0)
    first, rest = parse_buffered_head(buf, end, after, False)
    assert first.status == 103
    assert parse(buf[rest:]) == (200, b"2", b"")


def test_no_blank_line_yet() -> None:
    assert head_end(b"HTTP/1.1 200 OK\r\nX: 1\r\n", 0) == (-1, -1)
    assert head_end(b"HTTP/1.1 200 OK\nX: 1\n", 0) == (-1, -1)


@pytest.mark.parametrize(
    "buf",
    [
        b"HTTP/1.1 200 OK\rX: 1\r\n\r\n",  # bare CR stays invalid
        b"HTTP/1.1 200 OK\r\nX: 1\r\r\n\r\n",
        b"HTTP/1.1 200 OK\nX 1\n\n",
    ],
)
def test_still_rejected(buf: bytes) -> None:
    end, after = head_end(buf, 0)
    with pytest.raises(UpstreamProtocolError):
        parse_buffered_head(buf, end, after, False)
