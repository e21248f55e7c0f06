"""Why a directive has no prefork-lb equivalent, and what to do instead (sans-IO).

Rules:
- Each entry is one line of the conversion report: ``file:line: "directive args" <reason>;
  skipped``; so a reason reads after the quoted directive and says what to do.
- ``NOT_YET`` lists features that are planned (the issue tracker has them); when one lands,
  its directives move from here to the mapping tables in ``convert/mapping.py`` (and the
  coverage table in docs/convert.md). A family is matched by prefix (``ssl_``).
- Anything found in neither table gets ``DEFAULT_REASON``: never dropped silently.
"""

from __future__ import annotations

DEFAULT_REASON = "has no prefork-lb equivalent"

_FILES = "is about serving files; prefork-lb serves none (put static content behind a backend)"
_ACCEPT = "is not needed: prefork-lb's workers share accepts their own way (docs/architecture.md)"
_HEAD_LIMITS = "has no prefork-lb equivalent (request head limits are fixed: docs/http-conformance.md)"
_CLIENT_CERT = (
    "is not supported: prefork-lb presents no client certificate to upstreams (an upstream that requires "
    "one refuses the handshake: 502); until then let the upstream accept prefork-lb without one"
)
_PROXY_HTTP_ONLY = "is not supported: prefork-lb proxies HTTP/1.1 and TCP/UDP only"

# directive (or family prefix ending in "_"/"*") -> reason
REASONS: dict[str, str] = {
    "add_trailer": "is not supported: prefork-lb adds no response trailers",
    "gzip": "has no prefork-lb equivalent (compression belongs to the backend here)",
    "gzip_*": "has no prefork-lb equivalent (compression belongs to the backend here)",
    "gunzip": "has no prefork-lb equivalent (compression belongs to the backend here)",
    "sendfile": _FILES,
    "tcp_nopush": _FILES,
    "aio": _FILES,
    "directio": _FILES,
    "open_file_cache*": _FILES,
    "root": _FILES,
    "alias": _FILES,
    "index": _FILES,
    "autoindex": _FILES,
    "try_files": _FILES,
    "types": _FILES,
    "default_type": _FILES,
    "types_hash_max_size": _FILES,
    "types_hash_bucket_size": _FILES,
    "charset": _FILES,
    "expires": _FILES,
    "etag": _FILES,
    "use": _ACCEPT,
    "multi_accept": _ACCEPT,
    "accept_mutex": _ACCEPT,
    "accept_mutex_delay": _ACCEPT,
    "worker_cpu_affinity": "has no prefork-lb equivalent (use taskset or systemd's CPUAffinity=)",
    "worker_priority": "has no prefork-lb equivalent (use nice or systemd's Nice=)",
    "master_process": "has no prefork-lb equivalent (there is always a master)",
    "load_module": "has no prefork-lb equivalent (no dynamic modules)",
    "pcre_jit": "has no prefork-lb equivalent (regexes are Python's re)",
    "env": "has no prefork-lb equivalent (the workers inherit the master's environment)",
    "resolver": "is not needed: hostnames are resolved when the config is loaded (and on reload)",
    "resolver_timeout": "is not needed: hostnames are resolved when the config is loaded (and on reload)",
    "server_tokens": "has no prefork-lb equivalent (the Server header is prefork-lb's)",
    "server_names_hash_bucket_size": "is not needed (server names are matched without a hash table)",
    "server_names_hash_max_size": "is not needed (server names are matched without a hash table)",
    "variables_hash_max_size": "is not needed",
    "variables_hash_bucket_size": "is not needed",
    "proxy_headers_hash_max_size": "is not needed",
    "proxy_headers_hash_bucket_size": "is not needed",
    "client_body_temp_path": "is not needed: bodies beyond client_body_buffer_size stream, no temp files",
    "proxy_temp_path": "is not needed: responses stream to the client, no temp files",
    "proxy_buffering": "has no prefork-lb equivalent (responses always stream to the client)",
    "proxy_buffers": "has no prefork-lb equivalent (responses always stream to the client)",
    "proxy_busy_buffers_size": "has no prefork-lb equivalent (responses always stream to the client)",
    "proxy_max_temp_file_size": "has no prefork-lb equivalent (responses always stream to the client)",
    "proxy_temp_file_write_size": "has no prefork-lb equivalent (responses always stream to the client)",
    "proxy_request_buffering": "has no prefork-lb equivalent (see client_body_buffer_size in docs/config.md)",
    "client_header_buffer_size": _HEAD_LIMITS,
    "stub_status": "has no prefork-lb equivalent as such: use `api = true` or `metrics = true` in a location "
    "(docs/api.md)",
    "fastcgi_*": _PROXY_HTTP_ONLY,
    "uwsgi_*": _PROXY_HTTP_ONLY,
    "scgi_*": _PROXY_HTTP_ONLY,
    "grpc_*": _PROXY_HTTP_ONLY,
    "memcached_*": _PROXY_HTTP_ONLY,
    "mail": _PROXY_HTTP_ONLY,
    # TLS to upstreams: what convert/mapping.py does not map
    "proxy_ssl_certificate": _CLIENT_CERT,
    "proxy_ssl_certificate_key": _CLIENT_CERT,
    "proxy_ssl_password_file": _CLIENT_CERT,
    "proxy_ssl_certificate_cache": _CLIENT_CERT,
    "proxy_ssl_verify_depth": "is not supported: chains are verified to OpenSSL's default depth (100; "
    "nginx's default of 1 allows one intermediate CA); remove it",
    "proxy_ssl_crl": "is not supported: no certificate revocation lists (rotate the upstream's certificate "
    "and its CA bundle instead)",
    "proxy_ssl_conf_command": "is not supported: OpenSSL configuration commands are not passed through",
    "proxy_ssl_key_log": "is not supported: no TLS key log",
    "proxy_ssl*": "is not converted for stream servers yet: write proxy_ssl = true and its proxy_ssl_* keys "
    "in the TOML by hand (docs/config.md, stream servers)",
    # TLS termination: the ssl_* directives convert/mapping.py does not map
    "ssl_dhparam": "is not supported: no custom DH parameters (key exchange is ECDHE, and TLS 1.3's); "
    "remove it",
    "ssl_ecdh_curve": "is not supported: OpenSSL's default groups are offered (X25519, P-256, ...)",
    "ssl_stapling*": "is not supported: no OCSP stapling (clients check revocation themselves)",
    "ssl_trusted_certificate": "is not supported: it serves OCSP stapling, which prefork-lb does not do; "
    "client certificates are verified against ssl_client_certificate",
    "ssl_verify_depth": "is not supported: client chains are verified to OpenSSL's default depth "
    "(100; nginx's default of 1 allows one intermediate CA)",
    "ssl_session_ticket_key": "is not supported: the ticket key is made in the master on each load and "
    "reload (shared by the workers, rotated by reload); tickets from other machines do not resume",
    "ssl_buffer_size": "is not supported: TLS records are as large as prefork-lb's writes (up to 16k)",
    "ssl_password_file": "is not supported: keys must be unencrypted PEM (the master reads them as root "
    "before dropping privileges: protect them with file permissions)",
    "ssl_early_data": "is not supported: no TLS 1.3 early data (0-RTT); clients send after the handshake",
    "ssl_conf_command": "is not supported: OpenSSL configuration commands are not passed through",
    "ssl_crl": "is not supported: no certificate revocation lists for client certificates",
    "ssl_ocsp*": "is not supported: client certificates are not checked with OCSP",
    "ssl_reject_handshake": "is not supported: a handshake for an unknown name gets the default server's "
    "certificate",
    "ssl_*": "is not supported by prefork-lb's TLS termination (docs/config.md lists its ssl_* keys)",
    # the content cache: what convert/cache.py does not map
    "proxy_cache_max_range_offset": "has no prefork-lb equivalent (a range of a cached key is answered "
    "from the cached entry whatever its offset)",
    "proxy_cache_purge": "is NGINX Plus (or the third-party ngx_cache_purge): purge through the API instead, "
    "DELETE /api/9/http/caches/NAME (docs/cache.md)",
    "proxy_cache*": "is not supported by prefork-lb's cache (docs/cache.md lists its keys)",
    "js_*": "has no prefork-lb equivalent (no njs)",
    "perl*": "has no prefork-lb equivalent",
}

# Planned features: the directive families other work is building. Move an entry to
# convert/mapping.py when its feature lands.
_PLANNED = "is not built in prefork-lb yet (planned)"
NOT_YET: dict[str, str] = {
    "split_clients": f"{_PLANNED}: map",
    "geo": f"{_PLANNED}: map",
    "limit_rate*": f"{_PLANNED}: rate limiting",
    "health_check": f"{_PLANNED}: active health checks (passive checks work: max_fails, fail_timeout)",
    "match": f"{_PLANNED}: active health checks",
    "ntlm": "has no prefork-lb equivalent (connections are not pinned to clients)",
}


def reason(name: str) -> str:
    """The report text for a directive with no mapping."""
    for table in (NOT_YET, REASONS):
        if name in table:
            return table[name]
    best = ""
    for table in (NOT_YET, REASONS):
        for key in table:
            if key.endswith("*") and name.startswith(key[:-1]) and len(key) > len(best):
                best = key
    if best:
        return NOT_YET.get(best) or REASONS[best]
    return DEFAULT_REASON
