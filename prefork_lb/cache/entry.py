"""Cache entry files: the on-disk format, verified opening, writing through a temp file.

A file is named by the hex md5 of its key; ``levels`` directories come from the END of the
hex string, as nginx (``levels = "1:2"``, md5 ``...5c3`` -> ``3/5c/<md5>``). No client input
ever reaches a path: only the md5 does.

Layout (version ``VERSION``, little endian):

    fixed header  HEADER.size bytes: magic "PLBCACHE", version, status, flags,
                  valid_until_ms, date_s, last_modified_s, created_ms,
                  stale_while_revalidate_s, stale_if_error_s, key/etag/vary/head lengths,
                  variant md5, body length, crc32, pad
    key           the full cache key (a different key = a miss: md5 collisions never serve)
    etag, vary    the stored ETag and the Vary header names (for revalidation and variants)
    head          the stored upstream status line and headers, raw bytes as given
    body          body length bytes

Rules:
1. The crc32 covers the fixed header (with the crc field zero), the key, etag, vary and head;
   the body is covered by its length: a file whose size is not exactly header + body
   length (truncated, or still growing) is a miss, as is a wrong magic, version, crc or key.
   Bad files are never served; the caller drops their index node.
2. A writer writes to ``<path>/tmp/<md5>.<pid>.<n>`` (same filesystem, so the rename is
   atomic) and renames into place on commit: no reader ever sees a partial entry. The body
   length is written into the header at commit. An abort, an error or a short body unlinks
   the temp file: an upstream that dies mid-body never leaves an entry.
3. A write error (ENOSPC, EDQUOT, EIO...) stops storing silently: the caller serves the
   response uncached; the error is reported once (``EntryWriter.error``).
4. ``rewrite_meta`` (REVALIDATED) writes the new fixed header in place when the variable
   part keeps its length (one pwrite of HEADER.size bytes), else it copies the file through
   a temp file and renames.
5. Files are created mode 0600 (nginx's default for cache files).
"""

from __future__ import annotations

import errno
import itertools
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Final

MAGIC: Final = b"PLBCACHE"
VERSION: Final = 1
HEADER: Final = struct.Struct("<8sHHIqqqqiiIHHI16sqII")
MAX_ETAG: Final = 1024
MAX_VARY: Final = 1024
TMP_DIR: Final = "tmp"
BLOCK: Final = 4096
_CRC_OFFSET: Final = HEADER.size - 8
_seq = itertools.count(1)


@dataclass(frozen=True, slots=True)
class EntryMeta:
    """Freshness and validators stored in the file header (nginx's header fields)."""

    valid_until_ms: int  # epoch ms; fresh while now < valid_until_ms
    date_s: int = 0  # the response's Date (epoch s), 0 unknown
    last_modified_s: int = -1  # Last-Modified (epoch s), -1 none
    etag: bytes = b""
    stale_while_revalidate_s: int = 0
    stale_if_error_s: int = 0
    vary: bytes = b""  # the Vary header's names as stored (lowercase, comma separated)
    variant_md5: bytes = b""  # 16 bytes when ``vary``: md5 of the request's values


class EntryError(Exception):
    """A file that must be treated as absent (rule 1)."""


def md5_hex(md5: bytes) -> str:
    return md5.hex()


def relative_path(md5: bytes, levels: tuple[int, ...]) -> str:
    name = md5.hex()
    parts = []
    end = len(name)
    for n in levels:
        parts.append(name[end - n : end])
        end -= n
    return os.path.join(*parts, name) if parts else name


def entry_path(root: str, levels: tuple[int, ...], md5: bytes) -> str:
    return os.path.join(root, relative_path(md5, levels))


def fs_size(nbytes: int) -> int:
    """Bytes a file takes on disk as counted against max_size (whole 4 KiB blocks)."""
    return (nbytes + BLOCK - 1) // BLOCK * BLOCK


def status_of(head: bytes) -> int:
    """The status code of a stored head ("HTTP/1.1 200 OK\\r\\n..."), 0 if unreadable."""
    first = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(first) >= 2 and first[1].isdigit() and len(first[1]) == 3:
        return int(first[1])
    return 0


def encode_prefix(key: bytes, meta: EntryMeta, head: bytes, body_length: int, created_ms: int) -> bytes:
    """The fixed header and the variable part (key, etag, vary, head), crc filled in."""
    if len(meta.etag) > MAX_ETAG or len(meta.vary) > MAX_VARY:
        raise EntryError("etag or vary too long to store")
    variant = meta.variant_md5.ljust(16, b"\0")[:16]
    fixed = HEADER.pack(
        MAGIC,
        VERSION,
        status_of(head),
        0,
        meta.valid_until_ms,
        meta.date_s,
        meta.last_modified_s,
        created_ms,
        meta.stale_while_revalidate_s,
        meta.stale_if_error_s,
        len(key),
        len(meta.etag),
        len(meta.vary),
        len(head),
        variant,
        body_length,
        0,
        0,
    )
    rest = key + meta.etag + meta.vary + head
    crc = zlib.crc32(rest, zlib.crc32(fixed))
    return fixed[:_CRC_OFFSET] + struct.pack("<II", crc, 0) + rest


class Parsed:
    """A verified prefix: what ``parse_prefix`` read."""

    __slots__ = ("body_length", "body_offset", "created_ms", "head", "key", "meta", "status")

    def __init__(
        self, key: bytes, meta: EntryMeta, head: bytes, status: int, body_offset: int, body_length: int,
        created_ms: int,
    ) -> None:  # fmt: skip
        self.key = key
        self.meta = meta
        self.head = head
        self.status = status
        self.body_offset = body_offset
        self.body_length = body_length
        self.created_ms = created_ms


def parse_prefix(data: bytes) -> Parsed | int:
    """Parse and verify a file's start. Returns ``Parsed``, or the number of bytes needed when
    ``data`` is too short. Raises EntryError for a bad file (rule 1)."""
    if len(data) < HEADER.size:
        return HEADER.size
    (
        magic, version, status, _flags, valid_ms, date_s, lm_s, created_ms, swr_s, sie_s,
        key_len, etag_len, vary_len, head_len, variant, body_len, crc, _pad,
    ) = HEADER.unpack_from(data)  # fmt: skip
    if magic != MAGIC or version != VERSION:
        raise EntryError("not a cache file of this version")
    need: int = HEADER.size + key_len + etag_len + vary_len + head_len
    if etag_len > MAX_ETAG or vary_len > MAX_VARY or body_len < 0:
        raise EntryError("bad lengths")
    if len(data) < need:
        return need
    fixed = data[:_CRC_OFFSET] + b"\0" * 8
    if zlib.crc32(data[HEADER.size : need], zlib.crc32(fixed)) != crc:
        raise EntryError("header checksum mismatch")
    p = HEADER.size
    key = data[p : p + key_len]
    p += key_len
    etag = data[p : p + etag_len]
    p += etag_len
    vary = data[p : p + vary_len]
    p += vary_len
    head = data[p : p + head_len]
    meta = EntryMeta(
        valid_until_ms=valid_ms,
        date_s=date_s,
        last_modified_s=lm_s,
        etag=etag,
        stale_while_revalidate_s=swr_s,
        stale_if_error_s=sie_s,
        vary=vary,
        variant_md5=variant if vary else b"",
    )
    return Parsed(key, meta, head, status, need, body_len, created_ms)


def read_prefix(fd: int, first: int = 4096) -> Parsed:
    """Read and verify the start of an open file (raises EntryError, OSError)."""
    data = os.pread(fd, first, 0)
    while True:
        got = parse_prefix(data)
        if isinstance(got, Parsed):
            return got
        if got <= len(data):
            raise EntryError("short file")
        more = os.pread(fd, got - len(data), len(data))
        if not more:
            raise EntryError("short file")
        data += more


class Entry:
    """An opened, verified cache file. ``fd`` and ``body_offset`` serve sendfile; ``read``
    and ``pread`` read the body. ``close()`` when done (the file may be unlinked meanwhile:
    the open descriptor still reads it whole). An entry borrowed from a worker's memo
    (``Shared``) may hold its body in memory (``body``; ``fd`` is -1 then); its ``close``
    returns it to the memo."""

    __slots__ = ("_owner", "_pos", "body", "body_length", "body_offset", "created_ms", "fd", "head", "key",
                 "meta", "path", "status")  # fmt: skip

    def __init__(
        self, fd: int, path: str, parsed: Parsed, body: bytes | None = None, owner: Shared | None = None
    ) -> None:
        self.fd = fd
        self.path = path
        self.key = parsed.key
        self.meta = parsed.meta
        self.head = parsed.head
        self.status = parsed.status
        self.body_offset = parsed.body_offset
        self.body_length = parsed.body_length
        self.created_ms = parsed.created_ms
        self.body = body
        self._owner = owner
        self._pos = 0

    def pread(self, n: int, pos: int) -> bytes:
        """Up to ``n`` body bytes from body position ``pos`` (Range requests)."""
        n = max(0, min(n, self.body_length - pos))
        if not n:
            return b""
        if self.body is not None:
            return self.body[pos : pos + n]
        return os.pread(self.fd, n, self.body_offset + pos)

    def read(self, n: int = 65536) -> bytes:
        """The next body bytes (b"" at the end)."""
        data = self.pread(n, self._pos)
        self._pos += len(data)
        return data

    @property
    def shared(self) -> Shared | None:
        """The memo record this entry was borrowed from (None: opened for this request)."""
        return self._owner

    def invalidate(self) -> None:
        """The file failed while served (cut short, an I/O error): a memo holding it drops
        it, so the next lookup opens and verifies the file again."""
        if self._owner is not None:
            self._owner.drop()

    def close(self) -> None:
        owner = self._owner
        if owner is not None:
            self._owner = None
            self.fd = -1
            owner.release()
        elif self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Entry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Shared:
    """One verified entry kept open by a worker for its HITs (cache/store.py rule 8):
    the parsed prefix, and the body in memory (``fd`` -1) or the open descriptor. The
    descriptor is closed once the memo dropped it and its last borrower closed."""

    __slots__ = ("body", "dropped", "fd", "heads", "parsed", "path", "refs", "version")

    def __init__(self, fd: int, path: str, parsed: Parsed, version: int, body: bytes | None) -> None:
        self.heads: object = None  # the serving side's prebuilt response head (cache_serve.py)
        self.fd = fd
        self.path = path
        self.parsed = parsed
        self.version = version
        self.body = body
        self.refs = 0
        self.dropped = False

    @classmethod
    def adopt(cls, entry: Entry, version: int, body_max: int) -> Shared:
        """Take over a freshly opened entry (its descriptor is ours now): a body of at most
        ``body_max`` bytes is read into memory and the descriptor closed. Raises OSError."""
        parsed = Parsed(
            entry.key, entry.meta, entry.head, entry.status, entry.body_offset, entry.body_length,
            entry.created_ms,
        )  # fmt: skip
        fd, entry.fd = entry.fd, -1
        if parsed.body_length > body_max:
            return cls(fd, entry.path, parsed, version, None)
        try:
            body = os.pread(fd, parsed.body_length, parsed.body_offset)
        finally:
            os.close(fd)
        if len(body) != parsed.body_length:
            raise OSError(errno.EIO, "file shorter than its header says")
        return cls(-1, entry.path, parsed, version, body)

    def borrow(self) -> Entry:
        self.refs += 1
        return Entry(self.fd, self.path, self.parsed, self.body, self)

    def release(self) -> None:
        self.refs -= 1
        if self.dropped and self.refs <= 0:
            self._close()

    def drop(self) -> None:
        self.dropped = True
        if self.refs <= 0:
            self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_entry(path: str, key: bytes | None) -> Entry | None:
    """The verified entry at ``path`` for ``key`` (None: check no key), None if absent or
    bad (rule 1). Raises nothing but unexpected errors of the caller's own making."""
    entry, _ = open_checked(path, key)
    return entry


def open_checked(path: str, key: bytes | None) -> tuple[Entry | None, bool]:
    """``open_entry`` and whether a None means the file is absent or bad (True), rather than
    a passing failure of this process (EMFILE, ENOMEM, EACCES...: False, the file may be
    fine for the next request)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, True
    except OSError:
        return None, False
    try:
        parsed = read_prefix(fd)
        if key is not None and parsed.key != key:
            raise EntryError("key mismatch")
        if os.fstat(fd).st_size != parsed.body_offset + parsed.body_length:
            raise EntryError("truncated")
        return Entry(fd, path, parsed), False
    except EntryError:
        os.close(fd)
        return None, True
    except OSError:
        os.close(fd)
        return None, False


class EntryWriter:
    """Writes one entry through a temp file (rule 2). ``write`` never raises on a disk error
    (rule 3): ``failed`` turns true, later writes are dropped and ``commit`` returns False."""

    __slots__ = ("_fd", "_prefix", "_tmp", "body_length", "created_ms", "error", "failed", "key", "meta",
                 "on_commit", "path")  # fmt: skip

    def __init__(
        self, root: str, path: str, key: bytes, meta: EntryMeta, head: bytes, created_ms: int
    ) -> None:
        """Raises OSError (unwritable directory, disk full) or EntryError: no writer then."""
        self.path = path
        self.key = key
        self.meta = meta
        self.created_ms = created_ms
        self.body_length = 0
        self.failed = False
        self.error: OSError | None = None
        self._prefix = encode_prefix(key, meta, head, 0, created_ms)
        self._tmp = os.path.join(root, TMP_DIR, f"{os.path.basename(path)}.{os.getpid()}.{next(_seq)}")
        try:
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self._tmp), 0o700, exist_ok=True)
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._write_all(self._prefix)
        if self.failed:
            err = self.error
            self.abort()
            raise err if err is not None else OSError(errno.EIO, "write failed")

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            self.failed = True
            self.error = e

    def write(self, chunk: bytes | memoryview) -> None:
        if self.failed or self._fd < 0:
            return
        self._write_all(chunk)
        self.body_length += len(chunk)

    def finish(self, expected_length: int | None = None) -> int:
        """Write the final header and rename into place: the file's size on disk, or -1 when
        nothing was stored (a failed write, a body shorter than ``expected_length``)."""
        if self._fd < 0:
            return -1
        if self.failed or (expected_length is not None and expected_length != self.body_length):
            self.abort()
            return -1
        try:
            prefix = encode_prefix(
                self.key, self.meta, self._parsed_head(), self.body_length, self.created_ms
            )
            os.pwrite(self._fd, prefix[: HEADER.size], 0)
            os.close(self._fd)
            self._fd = -1
            try:
                os.rename(self._tmp, self.path)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(self.path), 0o700, exist_ok=True)
                os.rename(self._tmp, self.path)
        except OSError as e:
            self.failed = True
            self.error = e
            self.abort()
            return -1
        return fs_size(len(prefix) + self.body_length)

    def _parsed_head(self) -> bytes:
        p = HEADER.size + len(self.key) + len(self.meta.etag) + len(self.meta.vary)
        return self._prefix[p:]

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self._tmp)
        except OSError:
            pass


def rewrite_meta(path: str, key: bytes | None, meta: EntryMeta) -> bool:
    """Rule 4: store new freshness/validators for the file at ``path`` (REVALIDATED)."""
    entry = open_entry(path, key)
    if entry is None:
        return False
    try:
        old_len = len(entry.meta.etag) + len(entry.meta.vary)
        prefix = encode_prefix(entry.key, meta, entry.head, entry.body_length, entry.created_ms)
        if len(meta.etag) + len(meta.vary) == old_len:
            with open(path, "r+b", buffering=0) as f:
                os.pwrite(f.fileno(), prefix, 0)
            return True
        root_tmp = os.path.join(
            os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.{next(_seq)}"
        )
        fd = os.open(root_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, prefix)
            pos = 0
            while pos < entry.body_length:
                chunk = entry.pread(1 << 20, pos)
                if not chunk:
                    raise EntryError("short body")
                os.write(fd, chunk)
                pos += len(chunk)
        except BaseException:
            os.close(fd)
            os.unlink(root_tmp)
            raise
        os.close(fd)
        os.rename(root_tmp, path)
        return True
    except (OSError, EntryError):
        return False
    finally:
        entry.close()
