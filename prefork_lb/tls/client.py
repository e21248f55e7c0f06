"""TLS client contexts for connections to upstreams (http ``proxy_ssl_*``, stream
``proxy_ssl``, health probes of ``https://`` locations): one builder, one rule set.

Rules (nginx's ``proxy_ssl_*`` semantics, shared/reference/nginx-semantics-2.md section 5):
1. ``protocols`` bound the versions offered (lowest to highest listed); ``ciphers`` is an
   OpenSSL cipher list, checked at config load.
2. Verify off (nginx's default): no certificate check at all. On: the chain against the
   trusted CA file and the host name the caller passes as ``server_hostname``.
3. ``is_ip``: nginx never sends an IP literal as SNI.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence
from typing import Final, TypeVar

VERSIONS: Final = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
C = TypeVar("C", bound=ssl.SSLContext)


def client_context(factory: type[C], protocols: Sequence[str], ciphers: str, verify: bool, cafile: str) -> C:
    """A client context of ``factory`` (ssl.SSLContext, or gevent's for gevent sockets)."""
    ctx = factory(ssl.PROTOCOL_TLS_CLIENT)
    versions = sorted(VERSIONS[p] for p in protocols)
    ctx.minimum_version = versions[0]
    ctx.maximum_version = versions[-1]
    ctx.set_ciphers(ciphers)
    if verify:
        ctx.load_verify_locations(cafile=cafile)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
