from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import pytest

from prefork_lb.http.accesslog import (
    BUILTIN_FORMATS,
    COMBINED,
    AccessLogs,
    AccessLogWriter,
    compile_log_format,
    escape_log_value,
)
from prefork_lb.http.exchange import Attempt
from prefork_lb.http.variables import VariableError
from tests.unit.test_variables import make_exchange

T0 = 1_795_255_200.0  # 2026-11-21T10:00:00Z; each test below uses its own second (time cache)


# --- formats ---------------------------------------------------------------------------------------


def test_builtin_combined() -> None:
    assert BUILTIN_FORMATS["combined"] == COMBINED
    assert COMBINED == (
        '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
        '"$http_referer" "$http_user_agent"'
    )


def test_combined_without_referer(utc: None) -> None:
    ex = make_exchange(end_time=T0 + 10.25)
    line = compile_log_format(COMBINED).render(ex)
    assert line == (
        '192.0.2.7 - - [21/Nov/2026:10:00:10 +0000] "GET /index.html?a=1&b=two HTTP/1.1" 200 612 '
        '"-" "curl/8.0"'
    )


def test_combined_with_referer_and_escapes(utc: None) -> None:
    ex = make_exchange(
        target=b'/a"b?q=\\',
        headers=[(b"Referer", b"http://x/\x01"), (b"User-Agent", b'Mozilla "5.0" \xe9\x7f')],
        status=404,
        body_bytes_sent=0,
        end_time=T0 + 11.0,
    )
    line = compile_log_format(COMBINED).render(ex)
    assert line == (
        '192.0.2.7 - - [21/Nov/2026:10:00:11 +0000] "GET /a\\x22b?q=\\x5C HTTP/1.1" 404 0 '
        '"http://x/\\x01" "Mozilla \\x225.0\\x22 \\xE9\\x7F"'
    )
    assert line.isascii()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        ("plain text", "plain text"),
        ('"', "\\x22"),
        ("\\", "\\x5C"),
        ("a\nb\r\t", "a\\x0Ab\\x0D\\x09"),
        ("\x00\x1f\x20\x7e\x7f", "\\x00\\x1F ~\\x7F"),
        ("\x80\xe9\xff", "\\x80\\xE9\\xFF"),
        ("'<>{}$%", "'<>{}$%"),
        ("\u2192", "\\xE2\\x86\\x92"),  # never produced by getters; escaped as its UTF-8 bytes
    ],
)
def test_escape_log_value(value: str, expected: str) -> None:
    assert escape_log_value(value) == expected


@pytest.mark.parametrize(
    ("fmt", "kwargs", "expected"),
    [
        # unset ("not found" in nginx) renders as "-"
        ("[$http_referer]", {}, "[-]"),
        ("[$remote_user]", {}, "[-]"),
        ("[$cookie_x]", {}, "[-]"),
        ("[$arg_zz]", {}, "[-]"),
        ("[$upstream_addr|$upstream_status|$upstream_response_time]", {}, "[-|-|-]"),
        ("[$args|$query_string]", {"target": b"/p"}, "[-|-]"),
        # set but empty stays empty, as in nginx
        ("[$http_referer]", {"headers": [(b"Referer", b"")]}, "[]"),
        ("[$cookie_x]", {"headers": [(b"Cookie", b"x=")]}, "[]"),
        ("[$arg_a]", {"target": b"/p?a="}, "[]"),
        ("[$args]", {"target": b"/p?"}, "[]"),
        ("[$is_args]", {"target": b"/p"}, "[]"),
        ("$uri$is_args$args", {"target": b"/p"}, "/p-"),  # nginx prints exactly this
        ("[$server_name]", {}, "[]"),
        # values
        ("$status $request_time", {"status": 0, "end_time": 1_700_000_000.0 + 1.2345}, "000 1.234"),
        ("$request_time", {"end_time": 1_700_000_000.0 - 3}, "0.000"),
        ("$scheme://$host$request_uri", {}, "http://example.com/index.html?a=1&b=two"),
        ("$remote_addr:$remote_port", {}, "192.0.2.7:54321"),
        ("${status}x $$ 100%", {}, "200x $$ 100%"),
        ("$http_x_forwarded_for", {"headers": [(b"X-Forwarded-For", b"1.1.1.1")]}, "1.1.1.1"),
        ("caf\u00e9", {}, "caf\u00c3\u00a9"),  # literal text as its UTF-8 bytes
    ],
)
def test_log_values(fmt: str, kwargs: dict[str, object], expected: str) -> None:
    assert compile_log_format(fmt).render(make_exchange(**kwargs)) == expected  # type: ignore[arg-type]


def test_upstream_log_line() -> None:
    fmt = compile_log_format(
        "$uri|$status|$upstream_addr|$upstream_status|$upstream_connect_time|"
        "$upstream_header_time|$upstream_response_time|$request_time"
    )
    ex = make_exchange(
        target=b"/u?r=2",
        end_time=1_700_000_000.0,
        attempts=[
            Attempt("127.0.0.1:24089", 502, None, None, 0.0),
            Attempt("127.0.0.1:24081", 200, 0.0, 0.0, 0.0),
        ],
    )
    assert (
        fmt.render(ex)
        == "/u|200|127.0.0.1:24089, 127.0.0.1:24081|502, 200|-, 0.000|-, 0.000|0.000, 0.000|0.000"
    )
    ex = make_exchange(
        target=b"/x?status=503",
        end_time=1_700_000_000.006,
        attempts=[
            Attempt("127.0.0.1:24082", 503, 0.0, 0.005, 0.005),
            None,
            Attempt("127.0.0.1:24081", 200, 0.0, 0.0, 0.0),
        ],
    )
    assert fmt.render(ex) == (
        "/x|200|127.0.0.1:24082 : 127.0.0.1:24081|503 : 200|0.000 : 0.000|0.005 : 0.000|0.005 : 0.000|0.006"
    )
    ex = make_exchange(
        target=b"/dn?r=1",
        status=502,
        end_time=1_700_000_000.0,
        attempts=[Attempt("dn", 502, None, None, 0.0)],
    )
    assert fmt.render(ex) == "/dn|502|dn|502|-|-|0.000|0.000"


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("$remote_addr $foo", 'unknown variable "$foo"'),
        ("${bar}", 'unknown variable "$bar"'),
        ("$http_", 'unknown variable "$http_"'),
        ("${status", 'the closing bracket in "${status" variable is missing'),
    ],
)
def test_log_format_errors(fmt: str, message: str) -> None:
    with pytest.raises(VariableError) as info:
        compile_log_format(fmt)
    assert message in str(info.value)


def test_log_format_metadata() -> None:
    fmt = compile_log_format(COMBINED)
    assert fmt.text == COMBINED
    assert fmt.variables == (
        "remote_addr",
        "remote_user",
        "time_local",
        "request",
        "status",
        "body_bytes_sent",
        "http_referer",
        "http_user_agent",
    )


# --- writer ------------------------------------------------------------------------------------------


def test_unbuffered_writes_through(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    w = AccessLogWriter(str(path))
    w.write("one")
    assert path.read_bytes() == b"one\n"
    w.write("t\xe9o")  # latin-1: one byte per char
    assert path.read_bytes() == b"one\nt\xe9o\n"
    w.close()


def test_file_is_created_0644_and_appended(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_bytes(b"old\n")
    w = AccessLogWriter(str(path))
    w.write("new")
    w.close()
    assert path.read_bytes() == b"old\nnew\n"
    fresh = tmp_path / "fresh.log"
    old_umask = os.umask(0)
    try:
        AccessLogWriter(str(fresh)).close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644


def test_buffered_writes_when_full(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    w = AccessLogWriter(str(path), buffer_bytes=100, flush_s=3600)
    line = "x" * 29  # 30 bytes with the newline
    for _ in range(3):
        w.write(line)
    assert path.read_bytes() == b""  # 90 bytes buffered
    w.write(line)  # would overflow: the 90 buffered bytes go out first, whole lines only
    assert path.read_bytes() == (line + "\n").encode() * 3
    w.flush()
    assert path.read_bytes() == (line + "\n").encode() * 4
    w.write("y" * 99)  # fills the buffer by itself: written at once
    assert path.read_bytes().endswith(b"y" * 99 + b"\n")
    w.write("z")
    w.close()  # close flushes
    assert path.read_bytes().endswith(b"\nz\n")


def test_buffered_flush_after_flush_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    path = tmp_path / "access.log"
    w = AccessLogWriter(str(path), buffer_bytes=4096, flush_s=1.0)
    w.write("a")
    now[0] += 0.5
    w.write("b")
    w.flush_expired()
    assert path.read_bytes() == b""
    now[0] += 0.5  # the oldest line is 1 s old
    w.flush_expired()
    assert path.read_bytes() == b"a\nb\n"
    w.write("c")
    now[0] += 2.0
    w.write("d")  # write itself notices the deadline
    assert path.read_bytes() == b"a\nb\nc\nd\n"
    w.write("e")
    w.flush_expired(now[0] + 0.9)
    assert path.read_bytes() == b"a\nb\nc\nd\n"
    w.flush_expired(now[0] + 1.0)
    assert path.read_bytes() == b"a\nb\nc\nd\ne\n"
    w.close()


def test_reopen_after_rename(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    w = AccessLogWriter(str(path), buffer_bytes=4096)
    w.write("before")
    os.rename(path, rotated)
    w.write("still old")  # buffered; reopen flushes it to the old (renamed) file
    w.reopen()
    w.write("after")
    w.flush()
    assert rotated.read_bytes() == b"before\nstill old\n"
    assert path.read_bytes() == b"after\n"
    w.close()


def test_reopen_failure_keeps_old_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    w = AccessLogWriter(str(logdir / "access.log"))
    w.write("a")
    moved = tmp_path / "moved"
    os.rename(logdir, moved)
    with caplog.at_level(logging.ERROR, logger="prefork_lb.error"):
        w.reopen()  # the directory is gone: open() fails, nothing raises
    w.write("b")
    w.close()
    assert (moved / "access.log").read_bytes() == b"a\nb\n"
    assert [r.getMessage() for r in caplog.records] == [
        f'open() to access log "{logdir}/access.log" failed (2: No such file or directory)'
    ]


def test_open_failure_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        AccessLogWriter(str(tmp_path / "missing" / "access.log"))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("buffer_bytes", [0, 64])
def test_dev_full_never_raises(
    buffer_bytes: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [5000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    w = AccessLogWriter("/dev/full", buffer_bytes=buffer_bytes, flush_s=0.0)
    with caplog.at_level(logging.ERROR, logger="prefork_lb.error"):
        for i in range(50):
            w.write(f"line {i}")
        w.flush()
        assert len(caplog.records) == 1  # once per interval, however many failures
        record = caplog.records[0]
        assert record.name == "prefork_lb.error" and record.levelno == logging.ERROR
        assert '"/dev/full"' in record.getMessage()
        assert "No space left on device" in record.getMessage()
        now[0] += 59.0
        w.write("again")
        assert len(caplog.records) == 1
        now[0] += 1.0
        w.write("later")
        assert len(caplog.records) == 2
        assert "more failures since the last report" in caplog.records[1].getMessage()
        w.reopen()
        w.close()


def test_write_after_close_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    w = AccessLogWriter(str(path))
    w.close()
    w.write("late")
    w.flush()
    w.reopen()
    w.close()
    assert path.read_bytes() == b""


def test_non_latin1_line_does_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    w = AccessLogWriter(str(path))
    w.write("\u2192")
    w.close()
    assert path.read_bytes() == "\u2192\n".encode()


@pytest.mark.parametrize(("name", "fd"), [("stderr", 2), ("stdout", 1)])
def test_std_streams(name: str, fd: int, capfd: pytest.CaptureFixture[str]) -> None:
    w = AccessLogWriter(name)
    w.write("to the stream")
    w.reopen()  # no-op
    w.close()  # must not close the process's fd
    os.fstat(fd)
    out, err = capfd.readouterr()
    assert (err if fd == 2 else out) == "to the stream\n"


# --- registry ----------------------------------------------------------------------------------------


def test_access_logs_share_one_writer_per_path(tmp_path: Path) -> None:
    logs = AccessLogs()
    a = logs.get(str(tmp_path / "a.log"), buffer_bytes=1024)
    assert logs.get(str(tmp_path / "a.log")) is a
    b = logs.get(str(tmp_path / "b.log"))
    assert b is not a and len(logs) == 2
    a.write("1")
    assert (tmp_path / "a.log").read_bytes() == b""
    for writer in logs:
        writer.flush()
    assert (tmp_path / "a.log").read_bytes() == b"1\n"
    os.rename(tmp_path / "b.log", tmp_path / "b.log.1")
    logs.reopen_all()
    b.write("2")
    assert (tmp_path / "b.log").read_bytes() == b"2\n"
    a.write("3")
    logs.flush_expired(time.monotonic() + 3600)
    assert (tmp_path / "a.log").read_bytes() == b"1\n3\n"
    a.write("4")
    logs.close_all()
    assert (tmp_path / "a.log").read_bytes() == b"1\n3\n4\n"
    assert len(logs) == 0
    assert logs.get(str(tmp_path / "a.log")) is not a
    logs.close_all()
