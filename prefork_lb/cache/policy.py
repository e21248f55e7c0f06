"""Content-cache decisions as nginx makes them (sans-IO: plain Python over bytes and ints).

Everything the request path (``http/cache_path.py``) decides about a cached response is
here, unit-tested without sockets (shared/reference/nginx-semantics-2.md sections 1.2-1.5).

Rules:
1. Storing (``store_decision``), the 1.23 order-independent rule: a parseable
   ``X-Accel-Expires`` (``N`` seconds, ``@T`` epoch, ``0`` = not cacheable) wins over
   everything; else ``Cache-Control`` (case-insensitive substring: ``no-cache``,
   ``no-store``, ``private`` -> not cacheable; ``s-maxage=`` preferred over ``max-age=``: 0
   or a non-digit before ``, ; space`` -> not cacheable; ``stale-while-revalidate=N`` sets
   updating and error windows, ``stale-if-error=N`` the error window); else ``Expires``
   (unparsable or in the past -> not cacheable). ``Set-Cookie``, ``Vary: *`` and a Vary
   value over 128 bytes -> not cacheable. A header named in ``proxy_ignore_headers`` is
   skipped. ``proxy_no_cache`` true -> not stored. No validity from the headers:
   ``proxy_cache_valid``, first match in config order (``any`` at its own position); no
   match, or 0 -> not stored. A 206 is never stored (ranges are cut from full responses).
2. ``proxy_cache_valid`` entries: ``"[code ...|any] time"``; a time alone means 200 301 302.
3. bypass / no_cache predicates: true when any value is non-empty and not "0".
4. Lookup (``stale_action``): fresh while ``now_ms <= valid_until_ms``. A stale entry:
   the request that marks the node updating goes upstream (EXPIRED), or, when stale use is
   allowed (``use_stale updating`` or inside ``stale-while-revalidate``) and
   ``background_update`` is on, is served the stale entry (STALE) while a background fetch
   refreshes it; a request that finds the node updating is served stale (UPDATING) when
   allowed, else goes upstream as EXPIRED without the mark (nginx: the lock never protects
   an expired key).
5. Stale on failure (``stale_on_error``): an EXPIRED request whose upstream failed with a
   condition listed in ``proxy_cache_use_stale`` (error, timeout, invalid_header, http_5xx
   ...), or inside the entry's ``stale-if-error`` window, gets the stale entry (STALE).
6. Ranges (``parse_ranges``): ``bytes=`` sets of ``a-b``, ``a-``, ``-n``; bad syntax ->
   ignored (full 200); every range unsatisfiable -> 416 with ``bytes */len``; ranges
   summing beyond the length -> full 200 (nginx). Only a 200 whose stored head carried
   ``Accept-Ranges`` (or ``proxy_force_ranges``) is cut; a MISS serves a single range only.
   ``If-Range`` must equal the stored ETag (strong) or Last-Modified, else full 200.
7. Client conditionals (``not_modified``): on a 200, ``If-None-Match`` matching the stored
   ETag (weak comparison, ``*``) -> 304; without INM, ``If-Modified-Since`` equal to the
   stored Last-Modified -> 304 (nginx's ``if_modified_since exact``).
8. Upstream requests of a cached location lose Range, If-Range, If-Match,
   If-Unmodified-Since, If-None-Match and If-Modified-Since (``UPSTREAM_DROP``);
   revalidation adds the stored validators back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final, Literal

from prefork_lb.units import UnitError, parse_duration_s

# ---- config-level vocabularies ----

IGNORABLE_HEADERS: Final = {
    "x-accel-redirect": "X-Accel-Redirect",
    "x-accel-expires": "X-Accel-Expires",
    "x-accel-limit-rate": "X-Accel-Limit-Rate",
    "x-accel-buffering": "X-Accel-Buffering",
    "x-accel-charset": "X-Accel-Charset",
    "expires": "Expires",
    "cache-control": "Cache-Control",
    "set-cookie": "Set-Cookie",
    "vary": "Vary",
}
USE_STALE_CONDITIONS: Final = frozenset(
    {
        "error",
        "timeout",
        "invalid_header",
        "updating",
        "http_500",
        "http_502",
        "http_503",
        "http_504",
        "http_403",
        "http_404",
        "http_429",
    }
)
UPSTREAM_DROP: Final = frozenset(
    {b"range", b"if-range", b"if-match", b"if-unmodified-since", b"if-none-match", b"if-modified-since"}
)
MAX_VARY_BYTES: Final = 128
DEFAULT_VALID_CODES: Final = (200, 301, 302)

# (codes or None for "any", seconds)
ValidRule = tuple[frozenset[int] | None, int]


def parse_valid_rule(text: str) -> ValidRule:
    """One ``proxy_cache_valid`` entry (rule 2); ValueError with a message."""
    words = text.split()
    if not words:
        raise ValueError('must be "[code ...|any] time", e.g. "200 302 10m"')
    try:
        seconds = parse_duration_s(words[-1])
    except UnitError as e:
        raise ValueError(f'"{text}": {e}') from None
    codes = words[:-1]
    if not codes:
        return frozenset(DEFAULT_VALID_CODES), int(seconds)
    if codes == ["any"]:
        return None, int(seconds)
    out = set()
    for code in codes:
        if code == "any":
            raise ValueError(f'"{text}": "any" must be the only code of its entry')
        if not code.isdigit() or not 100 <= int(code) <= 599:
            raise ValueError(f'"{text}": invalid status code "{code}"')
        out.add(int(code))
    return frozenset(out), int(seconds)


def valid_seconds(rules: Sequence[ValidRule], status: int) -> int:
    """Rule 2: the first entry matching ``status`` in config order; 0 = not cached."""
    for codes, seconds in rules:
        if codes is None or status in codes:
            return seconds
    return 0


def predicate(values: Iterable[str]) -> bool:
    """Rule 3: proxy_cache_bypass / proxy_no_cache."""
    return any(v and v != "0" for v in values)


# ---- storing (rule 1) ----


@dataclass(frozen=True, slots=True)
class StoreDecision:
    """A storable response: valid until ``valid_until_ms`` (epoch ms), its stale windows
    (seconds after expiry) and the request headers its Vary names (lowercased)."""

    valid_until_ms: int
    updating_s: int = 0  # stale-while-revalidate
    error_s: int = 0  # stale-if-error
    vary: tuple[bytes, ...] = ()


def _digits_after(value: bytes, at: int) -> int | None:
    """nginx's loop after ``max-age=``: digits up to ``, ; space`` or the end; None if a
    non-digit comes first."""
    n = 0
    for c in value[at:]:
        if c in b",; ":
            break
        if 48 <= c <= 57:
            n = n * 10 + c - 48
            continue
        return None
    return n


def parse_http_date(value: bytes) -> int | None:
    """An HTTP date as epoch seconds; None when unparsable."""
    try:
        dt = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if dt.tzinfo is None:
        return None
    return int(dt.timestamp())


def store_decision(
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    now_ms: int,
    valid_rules: Sequence[ValidRule],
    ignore: frozenset[str] = frozenset(),
    no_cache: bool = False,
) -> StoreDecision | None:
    """Rule 1: is the upstream response stored, and until when? ``ignore``: lowercased
    names from proxy_ignore_headers. None: not stored."""
    if no_cache or status == 206:
        return None
    xae: bytes | None = None
    cache_control: list[bytes] = []
    expires: bytes | None = None
    vary: list[bytes] = []
    for name, value in headers:
        lname = name.lower()
        if lname == b"x-accel-expires":
            if "x-accel-expires" not in ignore:
                xae = value
        elif lname == b"cache-control":
            if "cache-control" not in ignore:
                cache_control.append(value)
        elif lname == b"expires":
            if "expires" not in ignore and expires is None:
                expires = value
        elif lname == b"set-cookie":
            if "set-cookie" not in ignore:
                return None
        elif lname == b"vary" and "vary" not in ignore:
            vary.append(value)
    now_s = now_ms // 1000
    valid_ms: int | None = None
    updating_s = error_s = 0
    if xae is not None:
        text = xae.strip()
        if text.startswith(b"@"):
            t = _int(text[1:])
            if t is not None:
                valid_ms = t * 1000
        else:
            n = _int(text)
            if n is not None:
                if n == 0:
                    return None
                valid_ms = now_ms + n * 1000
    if valid_ms is None and cache_control:
        for value in cache_control:
            low = value.lower()
            if b"no-cache" in low or b"no-store" in low or b"private" in low:
                return None
        for value in cache_control:
            low = value.lower()
            at = low.find(b"s-maxage=")
            offset = 9
            if at < 0:
                at = low.find(b"max-age=")
                offset = 8
            if at >= 0:
                n = _digits_after(low, at + offset)
                if not n:  # 0 or a non-digit
                    return None
                valid_ms = now_ms + n * 1000
            at = low.find(b"stale-while-revalidate=")
            if at >= 0:
                n = _digits_after(low, at + 23)
                if n is None:
                    return None
                updating_s = error_s = n
            at = low.find(b"stale-if-error=")
            if at >= 0:
                n = _digits_after(low, at + 15)
                if n is None:
                    return None
                error_s = n
    if valid_ms is None and expires is not None:
        t = parse_http_date(expires)
        if t is None or t < now_s:
            return None
        valid_ms = t * 1000
    names: tuple[bytes, ...] = ()
    if vary:
        joined = b", ".join(v.strip() for v in vary)
        if len(joined) > MAX_VARY_BYTES:
            return None
        parts = tuple(sorted({p.strip().lower() for p in joined.split(b",") if p.strip()}))
        if b"*" in parts:
            return None
        names = parts
    if valid_ms is None:
        seconds = valid_seconds(valid_rules, status)
        if not seconds:
            return None
        valid_ms = now_ms + seconds * 1000
    return StoreDecision(valid_until_ms=valid_ms, updating_s=updating_s, error_s=error_s, vary=names)


def _int(text: bytes) -> int | None:
    text = text.strip()
    if not text or not text.isdigit():
        return None
    return int(text)


def refreshed_validity(
    status: int,
    stored_status: int,
    headers: Sequence[tuple[bytes, bytes]],
    now_ms: int,
    valid_rules: Sequence[ValidRule],
    ignore: frozenset[str] = frozenset(),
) -> StoreDecision | None:
    """A 304 to a revalidation: the validity restarts from the 304's headers, else from
    proxy_cache_valid for the stored status (V: REVALIDATED restarts validity). None: the
    304 itself says not cacheable (then the entry stays stale, not refreshed)."""
    if status != 304:
        return None
    # Set-Cookie or Vary on a 304 does not make the stored body uncacheable
    cleaned = [(n, v) for n, v in headers if n.lower() not in (b"set-cookie", b"vary")]
    return store_decision(stored_status, cleaned, now_ms, valid_rules, ignore)


# ---- Vary ----


def variant_md5(names: Sequence[bytes], header_index: dict[bytes, bytes]) -> bytes:
    """The md5 of the request's values for the headers a stored response varies on."""
    h = hashlib.md5(usedforsecurity=False)
    for name in names:
        h.update(name)
        h.update(b":")
        h.update(header_index.get(name, b""))
        h.update(b"\n")
    return h.digest()


def key_md5(key: bytes) -> bytes:
    return hashlib.md5(key, usedforsecurity=False).digest()


# ---- lookup (rule 4) ----

StaleAction = Literal["STALE", "UPDATING", "EXPIRED"]


def is_fresh(valid_until_ms: int, now_ms: int) -> bool:
    return now_ms <= valid_until_ms


def stale_ok(use_stale_updating: bool, valid_until_ms: int, updating_s: int, now_ms: int) -> bool:
    """May a stale entry be served while it is being updated?"""
    return use_stale_updating or (updating_s > 0 and now_ms <= valid_until_ms + updating_s * 1000)


def stale_action(locked: bool, may_serve_stale: bool, background_update: bool) -> StaleAction:
    """Rule 4 for a stale entry. ``locked``: this request marked the node updating.

    STALE: serve the entry now and refresh it in the background (keeps the mark);
    UPDATING: serve the entry, someone else refreshes it; EXPIRED: go upstream (holding the
    mark when ``locked``)."""
    if locked:
        return "STALE" if may_serve_stale and background_update else "EXPIRED"
    return "UPDATING" if may_serve_stale else "EXPIRED"


def stale_on_error(
    condition: str, use_stale: frozenset[str], valid_until_ms: int, error_s: int, now_ms: int
) -> bool:
    """Rule 5: an upstream failure (``error``, ``timeout``, ``invalid_header``, ``http_500``
    ...) on an EXPIRED request: serve the stale entry instead?"""
    return condition in use_stale or (error_s > 0 and now_ms <= valid_until_ms + error_s * 1000)


# ---- ranges (rule 6) ----

Ranges = list[tuple[int, int]]  # inclusive (first, last) byte positions
UNSATISFIABLE: Final = "unsatisfiable"


def parse_ranges(value: bytes, length: int) -> Ranges | Literal["unsatisfiable"] | None:
    """The ranges of a Range header against a body of ``length`` bytes. None: ignore the
    header (full response); "unsatisfiable": 416."""
    value = value.strip()
    if value[:6].lower() != b"bytes=":
        return None
    out: Ranges = []
    total = 0
    for part in value[6:].split(b","):
        part = part.strip(b" \t")
        if not part:
            continue
        first_s, dash, last_s = part.partition(b"-")
        first_s, last_s = first_s.strip(), last_s.strip()
        if not dash:
            return None
        if first_s:
            if not first_s.isdigit() or (last_s and not last_s.isdigit()):
                return None
            first = int(first_s)
            last = int(last_s) if last_s else length - 1
            if last_s and last < first:
                return None
            if first >= length:
                continue  # unsatisfiable on its own
            last = min(last, length - 1)
        else:
            if not last_s.isdigit():
                return None
            suffix = int(last_s)
            if suffix == 0:
                continue
            first, last = max(0, length - suffix), length - 1
            if length == 0:
                continue
        out.append((first, last))
        total += last - first + 1
    if not out:
        return UNSATISFIABLE
    if total > length:
        return None
    return out


def if_range_matches(value: bytes | None, etag: bytes, last_modified: bytes) -> bool:
    """Rule 6: no If-Range, or one equal to the stored strong ETag or Last-Modified."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith(b'"') or value.startswith(b"W/"):
        return bool(etag) and not etag.startswith(b"W/") and value == etag
    return bool(last_modified) and value == last_modified.strip()


def content_range(first: int, last: int, length: int) -> bytes:
    return b"bytes %d-%d/%d" % (first, last, length)


BOUNDARY: Final = b"00000000001"


def multipart_parts(ranges: Ranges, length: int, content_type: bytes | None) -> list[tuple[bytes, int, int]]:
    """For a multipart/byteranges body: (part header, first, last) per range; the body is
    each header then its bytes, then ``multipart_tail()`` (nginx's layout)."""
    start = b"\r\n--" + BOUNDARY + b"\r\n"
    if content_type:
        start += b"Content-Type: " + content_type + b"\r\n"
    return [(start + b"Content-Range: " + content_range(a, b, length) + b"\r\n\r\n", a, b) for a, b in ranges]


def multipart_tail() -> bytes:
    return b"\r\n--" + BOUNDARY + b"--\r\n"


def multipart_length(parts: Sequence[tuple[bytes, int, int]]) -> int:
    return sum(len(h) + b - a + 1 for h, a, b in parts) + len(multipart_tail())


# ---- client conditionals (rule 7) ----


def _etag_list(value: bytes) -> list[bytes]:
    return [t.strip() for t in value.split(b",") if t.strip()]


def _weak(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def not_modified(
    status: int, inm: bytes | None, ims: bytes | None, etag: bytes, last_modified: bytes
) -> bool:
    """Rule 7: answer 304 instead of the stored 200?"""
    if status != 200:
        return False
    if inm is not None:
        if not etag:
            return False
        tags = _etag_list(inm)
        return b"*" in tags or _weak(etag) in {_weak(t) for t in tags}
    if ims is not None and last_modified:
        return ims.strip() == last_modified.strip() or (
            parse_http_date(ims) is not None and parse_http_date(ims) == parse_http_date(last_modified)
        )
    return False
