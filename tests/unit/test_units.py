"""Durations, sizes and strict wire numbers (prefork_lb.units)."""

from __future__ import annotations

import pytest

from prefork_lb.units import UnitError, parse_decimal, parse_duration_s, parse_hex, parse_size_bytes

# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("1ms", 0.001),
        ("5s", 5.0),
        ("1m", 60.0),
        ("1m30s", 90.0),
        ("1h 30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("1M", 30 * 86400.0),
        ("1y", 365 * 86400.0),
        ("1s 500ms", 1.5),
        ("0s", 0.0),
        ("5", 5.0),  # a bare number is seconds
        ("0", 0.0),
        ("1m30", 90.0),  # a trailing bare number is seconds
        ("999999999s", 999999999.0),
        (5, 5.0),
        (0, 0.0),
        (86400, 86400.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    result = parse_duration_s(value)
    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "5x",
        "",
        " ",
        "s",
        "ms",
        "5S",  # units are case-sensitive ("M" is months, "S" is nothing)
        "1.5s",
        "-5s",
        "+5s",
        "5s-",
        "1_0s",
        "\u0663s",  # Arabic-Indic digit three
        "\uff15s",  # fullwidth digit five
        "5 x",
        "1h\t30m",
        "1000000000s",  # more than 9 digits in a group
        -1,
        True,
        False,
        None,
        5.0,
        b"5s",
        ["5s"],
    ],
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(UnitError):
        parse_duration_s(value)


@pytest.mark.parametrize("value", ["5s5s", "1m 1m", "30s 1m", "500ms 1s"])
def test_parse_duration_rejects_unordered_units(value: str) -> None:
    with pytest.raises(UnitError):
        parse_duration_s(value)


def test_unit_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_duration_s("5x")
    with pytest.raises(ValueError):
        parse_size_bytes("5x")


# --- sizes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("16k", 16 * 1024),
        ("16K", 16 * 1024),
        ("1m", 1024**2),
        ("1M", 1024**2),
        ("1g", 1024**3),
        ("1G", 1024**3),
        ("512", 512),
        ("0", 0),
        ("0k", 0),
        ("008k", 8 * 1024),
        ("999999999999999", 999999999999999),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    result = parse_size_bytes(value)
    assert result == size
    assert type(result) is int


@pytest.mark.parametrize(
    "value",
    [
        "",
        "k",
        "16kb",
        "16 k",
        " 16k",
        "16k ",
        "1t",
        "1.5k",
        "-1",
        "+1",
        "1_0",
        "\u0663",
        "9999999999999999",  # 16 digits
        -1,
        True,
        None,
        1.5,
        b"16k",
    ],
)
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(UnitError):
        parse_size_bytes(value)


# --- wire numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"0", 0),
        (b"3", 3),
        (b"003", 3),
        (b"1234567890", 1234567890),
        (b"9" * 18, 10**18 - 1),
        (b"0" * 18, 0),
    ],
)
def test_parse_decimal(raw: bytes, value: int) -> None:
    assert parse_decimal(raw) == value


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"+5",
        b"-5",
        b"-0",
        b" 1_0",
        b"1_0",
        b" 3",
        b"3 ",
        b"3\n",
        b"3\x00",
        b"\xd9\xa3",  # Arabic-Indic 3 (UTF-8)
        b"\xef\xbc\x95",  # fullwidth 5 (UTF-8)
        b"\xb2",  # superscript two (latin-1)
        b"1" * 19,
        b"12345678901234567890",
        b"0x3",
        b"1e1",
        b"3.0",
        b"3,3",
    ],
)
def test_parse_decimal_rejects(raw: bytes) -> None:
    assert parse_decimal(raw) is None


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"0", 0),
        (b"a", 10),
        (b"fF", 255),
        (b"00000a", 10),
        (b"f" * 15, 16**15 - 1),
    ],
)
def test_parse_hex(raw: bytes, value: int) -> None:
    assert parse_hex(raw) == value


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"+5",
        b"-1",
        b" 1_0",
        b"1_f",
        b"0x1f",
        b" 3",
        b"3 ",
        b"\xd9\xa3",
        b"g",
        b"f" * 16,
        b"1" * 19,
    ],
)
def test_parse_hex_rejects(raw: bytes) -> None:
    assert parse_hex(raw) is None
