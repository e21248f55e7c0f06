"""Durations and sizes written the nginx way, and strict decimal numbers from the wire.

Rules:
- Durations: one or more ``<digits><unit>`` groups, units ms s m h d w M y as in nginx
  ("500ms", "5s", "1m30s", "1h 30m"); a bare integer (TOML int or digit string) is seconds.
- Sizes: ``<digits>[k|K|m|M|g|G]``; a bare integer is bytes.
- Wire numbers never go through bare ``int()``: it accepts "+5", " 1_0 " and non-ASCII
  digits. Every number is checked against an anchored ASCII regex first.
"""

from __future__ import annotations

import re

_DURATION_UNITS_S = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "M": 30 * 86400.0,
    "y": 365 * 86400.0,
}
_DURATION_PART = re.compile(r"([0-9]{1,9})(ms|s|m|h|d|w|M|y)?")
_SIZE = re.compile(r"([0-9]{1,15})([kKmMgG]?)")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DECIMAL = re.compile(rb"[0-9]{1,18}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")


class UnitError(ValueError):
    pass


def parse_duration_s(value: object) -> float:
    """Seconds from an nginx duration ("500ms", "1m30s", 5); raises UnitError."""
    if isinstance(value, bool):
        raise UnitError('must be a duration such as "500ms", "5s" or "1m"')
    if isinstance(value, int):
        if value < 0:
            raise UnitError("must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise UnitError('must be a duration such as "500ms", "5s" or "1m"')
    text = value.replace(" ", "")
    if not text:
        raise UnitError('must be a duration such as "500ms", "5s" or "1m"')
    total = 0.0
    pos = 0
    last_unit_s = float("inf")
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        unit = m.group(2) if m else None
        if m is None or m.end() == pos or (unit is None and m.end() != len(text)):
            raise UnitError(f'invalid duration {value!r} (use e.g. "500ms", "5s", "1m", "1h")')
        unit_s = _DURATION_UNITS_S[unit or "s"]
        if unit_s >= last_unit_s:  # nginx: each unit once, largest first ("1h30m", not "30m1h")
            raise UnitError(f"invalid duration {value!r}: units must be in decreasing order, each once")
        last_unit_s = unit_s
        total += int(m.group(1)) * unit_s
        pos = m.end()
    return total


def parse_size_bytes(value: object) -> int:
    """Bytes from an nginx size ("16k", "1m", 4096); raises UnitError."""
    if isinstance(value, bool):
        raise UnitError('must be a size such as "16k" or "1m"')
    if isinstance(value, int):
        if value < 0:
            raise UnitError("must not be negative")
        return value
    if not isinstance(value, str):
        raise UnitError('must be a size such as "16k" or "1m"')
    m = _SIZE.fullmatch(value)
    if m is None:
        raise UnitError(f'invalid size {value!r} (use e.g. "512", "16k", "1m", "1g")')
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def parse_decimal(raw: bytes) -> int | None:
    """A non-negative decimal from the wire (Content-Length, status), or None if invalid.

    Leading zeros are accepted ("003" -> 3) as RFC 9110 allows; signs, spaces, "_" and
    non-ASCII digits are not.
    """
    if _DECIMAL.fullmatch(raw) is None:
        return None
    return int(raw)


def parse_hex(raw: bytes) -> int | None:
    """A chunk size from the wire (1-15 hex digits), or None if invalid."""
    if _HEX.fullmatch(raw) is None:
        return None
    return int(raw, 16)
