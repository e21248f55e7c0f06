"""Request-target parsing and path / host normalization (sans-IO, nginx semantics).

Rules:
- Inputs are raw bytes from the request line or a header; every rejection raises ``UriError``
  whose ``status`` is 400. Nothing here does I/O or allocates tables per call: every regex and
  lookup table is built at import time.
- ``split_target`` accepts origin-form (``/p?q``) and absolute-form (``http[s]://auth/p?q``)
  only. Asterisk-form (``OPTIONS *``), authority-form, userinfo, fragments, bytes < 0x21 and
  0x7f are rejected. Bytes >= 0x80 (obs-text) pass through untouched. The query is everything
  after the first ``?``, without it.
- Paths become ``str`` by latin-1 decoding, so every char is exactly one byte (U+0000..U+00FF).
  Location patterns and proxy_pass URIs must use the same representation
  (``text.encode("utf-8").decode("latin-1")``) to compare byte for byte, as nginx does.
- ``normalize_path`` works in nginx's order: percent-decode first (``%2F`` becomes a real
  ``/``, ``%2e%2e`` a real ``..``), then merge slashes, then resolve ``.`` / ``..``. A decoded
  NUL, a bad escape, or a ``..`` above the root is a 400. A trailing slash is kept. A path with
  no ``%``, ``/.`` or ``//`` is returned as decoded, with no further work (the fast path).
- ``encode_path`` is the inverse for sending a rewritten path upstream: it keeps
  unreserved, sub-delims, ``:``, ``@`` and ``/`` and escapes every other byte as ``%XX``
  (uppercase), so ``normalize_path(encode_path(p)) == p`` for any normalized ``p``.
- ``normalize_host`` validates a Host value or absolute-form authority and returns the host
  lowercased, without the port and without one trailing dot; IPv6 literals keep brackets.
"""

from __future__ import annotations

import re

__all__ = ["UriError", "encode_path", "normalize_host", "normalize_path", "split_target"]


class UriError(Exception):
    """An unacceptable request-target, path or host; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --- request-target -------------------------------------------------------------------------

_find_bad_target_byte = re.compile(rb"[\x00-\x20\x7f#]").search
_ABSOLUTE_FORM = re.compile(rb"https?://([^/?]*)([^?]*)(?:\?(.*))?", re.IGNORECASE | re.DOTALL)


def split_target(target: bytes) -> tuple[str | None, bytes, bytes]:
    """Split a request-target into (authority or None, raw path, raw query)."""
    if _find_bad_target_byte(target) is not None:
        raise UriError("invalid character in request-target")
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        return None, path, query
    return _split_absolute(target)


def _split_absolute(target: bytes) -> tuple[str, bytes, bytes]:
    if target == b"*":
        raise UriError("asterisk-form request-target is not supported")
    m = _ABSOLUTE_FORM.fullmatch(target)
    if m is None:
        raise UriError("invalid request-target")
    authority, path, query = m.group(1, 2, 3)
    if b"@" in authority:
        raise UriError("userinfo in request-target")
    normalize_host(authority)  # validation only; the caller normalizes the returned authority
    return authority.lower().decode("ascii"), path or b"/", query or b""


# --- path ---------------------------------------------------------------------------------

_HEX_DIGITS = "0123456789abcdefABCDEF"
_HEX_PAIRS: dict[bytes, bytes] = {
    (hi + lo).encode("ascii"): bytes([int(hi + lo, 16)]) for hi in _HEX_DIGITS for lo in _HEX_DIGITS
}


def normalize_path(raw: bytes) -> str:
    """Percent-decode, merge slashes and resolve dot segments of a raw path (``$uri``)."""
    # str membership tests are much cheaper than bytes ones (``b"%" in raw`` first tries to
    # read the operand as an int and swallows the TypeError), so decode first.
    path = raw.decode("latin-1")
    if path[:1] != "/":
        raise UriError("path does not start with '/'")
    if "%" not in path and "/." not in path and "//" not in path:
        return path
    if "%" in path:
        path = _percent_decode(raw).decode("latin-1")
    return _resolve_segments(path)


def _percent_decode(raw: bytes) -> bytes:
    chunks = raw.split(b"%")
    parts = [chunks[0]]
    pairs = _HEX_PAIRS
    for i in range(1, len(chunks)):
        chunk = chunks[i]
        byte = pairs.get(chunk[:2])
        if byte is None:
            raise UriError("invalid percent-encoding in path")
        parts.append(byte)
        parts.append(chunk[2:])
    decoded = b"".join(parts)
    if b"\x00" in decoded:
        raise UriError("NUL in path")
    return decoded


def _resolve_segments(path: str) -> str:
    """Merge slashes and resolve ``.``/``..``; ``path`` starts with ``/``."""
    if "/." not in path and "//" not in path:
        return path
    segments = path.split("/")
    out: list[str] = []
    for i in range(1, len(segments)):
        segment = segments[i]
        if segment == "" or segment == ".":
            continue
        if segment == "..":
            if not out:
                raise UriError("path climbs above the root")
            out.pop()
            continue
        out.append(segment)
    if not out:
        return "/"
    if segments[-1] in ("", ".", ".."):
        out.append("")  # keep the trailing slash
    return "/" + "/".join(out)


_SAFE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/"
_SAFE_BYTES = frozenset(_SAFE_CHARS.encode("ascii"))
_ENCODE_TABLE: tuple[bytes, ...] = tuple(
    bytes([b]) if b in _SAFE_BYTES else b"%%%02X" % b for b in range(256)
)
_UNSAFE_CHAR = re.compile("[^" + re.escape(_SAFE_CHARS) + "]")


def encode_path(path: str) -> bytes:
    """Percent-encode a normalized path for the upstream request line."""
    if _UNSAFE_CHAR.search(path) is None:
        return path.encode("ascii")
    table = _ENCODE_TABLE
    return b"".join([table[b] for b in _path_bytes(path)])


def _path_bytes(path: str) -> bytes:
    """latin-1 (one char per byte); chars above U+00FF (config text) are sent as UTF-8."""
    try:
        return path.encode("latin-1")
    except UnicodeEncodeError:
        return b"".join(c.encode("latin-1") if ord(c) < 0x100 else c.encode("utf-8") for c in path)


# --- host ---------------------------------------------------------------------------------

# The host is group 1 (an IPv6 literal, brackets kept) or group 2 (dot-separated non-empty
# labels, which rules out a leading dot and "..", then one optional trailing dot that is
# dropped); then an optional ":port" (RFC 3986 allows an empty port: "example.com:" is
# accepted, as nginx does).
_LABEL = rb"[A-Za-z0-9\-_~!$&'()*+,;=%]+"
_match_host = re.compile(
    rb"(?:(\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\])|(" + _LABEL + rb"(?:\." + _LABEL + rb")*)\.?)(?::([0-9]{0,5}))?"
).fullmatch


def normalize_host(value: bytes) -> str:
    """Validate a Host header / authority; return the lowercase host without port."""
    m = _match_host(value)
    if m is None or (m[3] and int(m[3]) > 65535):
        raise UriError("invalid host")
    host: bytes = m[2] or m[1]
    return host.lower().decode("ascii")
