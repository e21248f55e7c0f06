"""TLS termination (``ssl_*``) in http and stream servers (sans-IO; used by map_http, map_stream).

Rules:
- prefork-lb's keys are server-level only, so an http- or stream-level value is copied into
  each server that listens with ``ssl`` (the server's own value wins; a server's own
  ``ssl_certificate`` set replaces the inherited set, as nginx's arrays do).
- ``ssl on`` (removed in nginx 1.25) adds the flag to the listens it covers.
- ``ssl`` is per address in nginx: a server with a certificate on an address another server
  flags ``ssl`` gets the flag too.
- A server without an ``ssl`` listen gets no ``ssl_*`` key (nginx ignores them there; the
  loader refuses them): noted, not converted. A level value no server takes is noted too.
- Stream-level ``ssl_handshake_timeout``, ``ssl_preread``, ``preread_timeout`` are copied into
  each server (``ssl_preread`` only into TCP servers without ``ssl``).
"""

from __future__ import annotations

from typing import Any

from prefork_lb.convert.map_common import Handler, Mapper, Note, join_path, put_flag, put_text, simple
from prefork_lb.convert.read import Directive

# keys the loader accepts only on a server with an ``ssl`` listen
_SSL_KEYS = (
    "ssl_certificate",
    "ssl_certificate_key",
    "ssl_protocols",
    "ssl_ciphers",
    "ssl_session_cache",
    "ssl_session_timeout",
    "ssl_session_tickets",
    "ssl_client_certificate",
    "ssl_verify_client",
)


# stream keys the loader takes on any server; a stream-level value is copied into each
_STREAM_INHERITED = ("ssl_handshake_timeout", "ssl_preread", "preread_timeout")


_OLD_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1")


def _ssl_file(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``ssl_certificate`` / ``ssl_certificate_key``: each directive adds one file."""
    if "$" in d.args[0] or d.args[0].startswith("data:"):
        m.skip(d, "is not supported: certificates and keys are files (no variables, no data:)")
        return
    files = t.setdefault(d.name, [])
    m.out.origins.setdefault(join_path(path, d.name), d.where)
    m.out.origins[f"{join_path(path, d.name)}[{len(files)}]"] = d.where
    if d.comment:
        m.out.comments[join_path(path, d.name)] = "\n".join(
            filter(None, (m.out.comments.get(join_path(path, d.name)), d.comment))
        )
    files.append(d.args[0])


def _ssl_server_protocols(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    kept = [p for p in d.args if p not in _OLD_PROTOCOLS]
    if not kept:
        m.skip(
            d,
            "names only protocols prefork-lb does not speak (it terminates TLSv1.2 and TLSv1.3; its "
            "default, both, is used)",
        )
        return
    if len(kept) < len(d.args):
        m.differ(d, "prefork-lb terminates TLSv1.2 and TLSv1.3 only; mapped without the older ones")
    m.put(t, path, "ssl_protocols", kept, d)


def _ssl_session_cache(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``off | none | [builtin[:size]] [shared:name:size]``; prefork-lb's cache is OpenSSL's
    built-in one per worker (what nginx's ``builtin`` is), written ``shared:NAME:SIZE``."""
    words = d.args
    if words[0] in ("off", "none"):
        m.put(t, path, "ssl_session_cache", words[0], d)
        return
    shared = [w for w in words if w.startswith("shared:")]
    builtin = [w for w in words if w == "builtin" or w.startswith("builtin:")]
    if shared:
        value = shared[0]
    elif builtin:
        sessions = builtin[0].partition(":")[2]
        count = int(sessions) if sessions.isdigit() else 20480  # nginx's builtin default
        value = f"shared:builtin:{max(1, count * 256 // 1024)}k"  # ~256 bytes a session
    else:
        m.put(t, path, "ssl_session_cache", " ".join(words), d)  # the loader names the line
        return
    m.differ(
        d,
        f'mapped to "{value}": prefork-lb\'s session cache is per worker (a session ID resumes only on '
        "the worker that issued it; tickets resume on any worker)",
    )
    m.put(t, path, "ssl_session_cache", value, d)


def _ssl_verify_client(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    if d.args[0] == "optional_no_ca":
        m.skip(d, "is not supported: client certificates are verified against ssl_client_certificate")
        return
    m.put(t, path, "ssl_verify_client", d.args[0], d)


def _ssl_on(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """``ssl on`` (deprecated, removed in nginx 1.25): every listen of the server(s) is TLS."""
    if d.args[0] == "on":
        t["_ssl_on"] = d
        m.differ(d, 'deprecated (removed in nginx 1.25): mapped to the "ssl" flag on the listen addresses')


def _prefer_server_ciphers(m: Mapper, d: Directive, t: dict[str, Any], path: str) -> None:
    """Python's ssl sets OP_CIPHER_SERVER_PREFERENCE: ``on`` is what prefork-lb does; with
    ``off`` (certbot's) the cipher picked may differ, always one of ssl_ciphers."""
    if d.args[0] == "on":
        m.differ(d, "prefork-lb always prefers its own cipher order; nothing to set")
    else:
        m.differ(
            d,
            "prefork-lb always prefers its own cipher order (nginx's on), not the client's; the cipher is "
            "still one of ssl_ciphers",
        )


def _has_ssl_listen(s: dict[str, Any]) -> bool:
    return any("ssl" in entry.split()[1:] for entry in s.get("listen", []))


def tls_server(m: Mapper, s: dict[str, Any], d: Directive, kp: str) -> None:
    """A server's own ``ssl on``: every listen of it gets the ``ssl`` flag."""
    if s.pop("_ssl_on", None) is not None:
        s["listen"] = [e if "ssl" in e.split()[1:] else f"{e} ssl" for e in s.get("listen", [])]


def _address(entry: str) -> str:
    """A listen entry's address, for comparing them: ``443``, ``*:443``, ``0.0.0.0:443`` are one."""
    address = entry.split()[0]
    if address.isdigit():
        return f"*:{address}"
    return "*:" + address[len("0.0.0.0:") :] if address.startswith("0.0.0.0:") else address


def _drop_plain_ssl(m: Mapper, s: dict[str, Any], kp: str) -> None:
    """A server without an ``ssl`` listen: nginx ignores its ``ssl_*``, the loader refuses them."""
    for key in _SSL_KEYS:
        if key in s:
            value = s.pop(key)
            if isinstance(value, bool):
                text = "on" if value else "off"
            else:
                text = " ".join(value) if isinstance(value, list) else str(value)
            where = m.out.origins.get(f"{kp}.{key}", m.out.origins.get(kp, ""))
            m.forget(f"{kp}.{key}")
            m.out.notes.append(
                Note(
                    where,
                    f'"{key} {text}": the server has no "ssl" listen, where nginx ignores it too; '
                    "not converted",
                    False,
                )
            )


def inherit_tls(m: Mapper, level: dict[str, Any], path: str, servers: list[dict[str, Any]]) -> None:
    """Copy ``level``'s (http or stream) TLS values into its servers; the server's own wins."""
    ssl_on = level.pop("_ssl_on", None)
    values = {k: level.pop(k) for k in (*_SSL_KEYS, *_STREAM_INHERITED) if k in level}
    used: set[str] = set()
    for s in servers:
        if ssl_on is not None and "listen" in s:
            s["listen"] = [e if "ssl" in e.split()[1:] else f"{e} ssl" for e in s["listen"]]
    # nginx: "ssl" on one server's listen makes the address TLS for all its servers; the
    # loader takes a server's certificate only with the flag on its own listen, so a server
    # with a certificate on such an address gets it (one without uses the default server's)
    tls_addresses = {_address(e) for s in servers for e in s.get("listen", []) if "ssl" in e.split()[1:]}
    for i, s in enumerate(servers):
        kp = f"{path}.servers[{i}]"
        if "ssl_certificate" in s or "ssl_certificate" in values:
            for j, e in enumerate(s.get("listen", [])):
                if _address(e) in tls_addresses and "ssl" not in e.split()[1:]:
                    s["listen"][j] = f"{e} ssl"
                    m.out.notes.append(
                        Note(
                            m.out.origins.get(f"{kp}.listen[{j}]", ""),
                            f'"listen {e}": another server listens on this address with "ssl", which '
                            'makes it TLS for every server (nginx); mapped with "ssl"',
                            False,
                        )
                    )
        tls = _has_ssl_listen(s)
        if not tls:
            _drop_plain_ssl(m, s, kp)
        udp = any("udp" in e.split()[1:] for e in s.get("listen", []))
        for key, value in values.items():
            if key in _SSL_KEYS and not tls:
                continue
            if key == "ssl_preread" and (tls or udp):
                continue  # nginx: no ClientHello to read there; the loader refuses it
            used.add(key)
            if key not in s:
                s[key] = value
                for store in (m.out.origins, m.out.comments):
                    for k in [k for k in store if k == f"{path}.{key}" or k.startswith(f"{path}.{key}[")]:
                        store[kp + k[len(path) :]] = store[k]
    for key in [k for k in values if k not in used]:  # nginx has nothing to apply them to either
        where = m.out.origins.get(f"{path}.{key}", "")
        m.forget(f"{path}.{key}")
        m.out.notes.append(Note(where, f'"{key}": no server here it applies to; not converted', False))


TLS: dict[str, Handler] = {
    "ssl": _ssl_on,
    "ssl_certificate": _ssl_file,
    "ssl_certificate_key": _ssl_file,
    "ssl_protocols": _ssl_server_protocols,
    "ssl_ciphers": put_text,
    "ssl_session_cache": _ssl_session_cache,
    "ssl_session_timeout": simple,
    "ssl_session_tickets": put_flag,
    "ssl_client_certificate": put_text,
    "ssl_verify_client": _ssl_verify_client,
    "ssl_prefer_server_ciphers": _prefer_server_ciphers,
}


STREAM_TLS: dict[str, Handler] = {
    **TLS,
    "ssl_handshake_timeout": simple,
    "ssl_preread": put_flag,
    "preread_timeout": simple,
}
