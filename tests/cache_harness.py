"""The cache tests' rig: nginx or prefork-lb on one nginx.conf with a cache zone ``c`` and the
query-driven upstream (tests/cache_upstream.py), and a client that reads ``X-Cache-Status``
(``add_header X-Cache-Status $upstream_cache_status always``) and the upstream answer ``n``.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.backends import free_port
from tests.cache_upstream import CacheUpstream
from tests.harness import LB, request, wait_for
from tests.nginx_conf import Nginx, lb_from_conf, scenario


@dataclass(frozen=True)
class Seen:
    status: int
    cache: str  # X-Cache-Status ("" when absent)
    n: int  # which upstream answer (0: no n= in the body)
    headers: dict[str, str]
    body: bytes
    elapsed_s: float

    @property
    def row(self) -> tuple[int, str, int]:
        return (self.status, self.cache, self.n)


def conf(
    port: int, backend: str, location: str, http: str = "", server: str = "", workers: int = 1, ssl: str = ""
) -> str:
    """``ssl``: ``"CERT KEY"`` paths: the server listens with TLS (1.2 and 1.3 in both)."""
    listen = f"127.0.0.1:{port}"
    if ssl:
        cert, key = ssl.split()
        listen += f" ssl;\n        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
        listen += "        ssl_protocols TLSv1.2 TLSv1.3"
    text = scenario(f"""
    proxy_cache_path cache levels=1:2 keys_zone=c:1m;
    {http}
    server {{
        listen {listen};
        {server}
        location / {{
            proxy_pass http://{backend};
            proxy_cache c;
            add_header X-Cache-Status $upstream_cache_status always;
            {location}
        }}
    }}
""")
    return text.replace("worker_processes 1;", f"worker_processes {workers};")


_MD5 = re.compile(r"[0-9a-f]{32}")


class Rig:
    """nginx or prefork-lb (``target``) serving ``conf`` in ``directory``."""

    def __init__(
        self,
        target: str,
        directory: Path,
        backend: CacheUpstream,
        location: str,
        http: str = "",
        server: str = "",
        workers: int = 1,
        upstream: str | None = None,
        ssl: str = "",
    ) -> None:
        """``upstream``: what the location proxies to instead of ``backend``'s address (an
        ``upstream`` block's name, defined in ``http``); ``ssl``: "CERT KEY" to listen with TLS."""
        self.port = free_port()
        text = conf(self.port, upstream or backend.addr, location, http, server, workers, ssl)
        self.server: Nginx | LB = (
            Nginx(directory / "nginx", self.port, text)
            if target == "nginx"
            else lb_from_conf(directory / "lb", text, self.port)
        )

    @property
    def cache_dir(self) -> Path:
        return self.server.dir / "cache"

    def stored(self) -> int:
        """How many entry files (named by the key's hex md5) the cache directory holds."""
        return sum(1 for p in self.cache_dir.rglob("*") if _MD5.fullmatch(p.name) and p.is_file())

    def wait_stored(self, count: int) -> None:
        """Until ``count`` entries are on disk: a HEAD's (or a client that went away) entry is
        written after the client has its answer, while the upstream body is still read."""
        wait_for(lambda: self.stored() >= count, timeout_s=10, what=f"{count} cache entries on disk")

    def __enter__(self) -> Rig:
        self.server.__enter__()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.__exit__(t, e, tb)

    def ask(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> Seen:
        start = time.monotonic()
        status, got, data = request(self.port, method, path, body=body, headers=headers, timeout_s=15)
        elapsed = time.monotonic() - start
        m = re.search(rb"n=(\d+)", data)
        return Seen(status, got.get("x-cache-status", ""), int(m.group(1)) if m else 0, got, data, elapsed)

    def rows(self, path: str, times: int, **kw: object) -> list[tuple[int, str, int]]:
        return [self.ask(path, **kw).row for _ in range(times)]  # type: ignore[arg-type]

    def burst(self, path: str, count: int) -> list[Seen]:
        """``count`` concurrent GETs, released together."""
        start = threading.Barrier(count)
        out: list[Seen | BaseException] = [RuntimeError("no answer")] * count

        def one(i: int) -> None:
            start.wait()
            try:
                out[i] = self.ask(path)
            except BaseException as exc:
                out[i] = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        errors = [x for x in out if isinstance(x, BaseException)]
        assert not errors, errors[:3]
        return [x for x in out if isinstance(x, Seen)]


def expire(ttl_s: float) -> None:
    """Let an entry of ``ttl_s`` expire on the servers' whole-second clock (see the module doc)."""
    time.sleep(ttl_s + 1.1)


def settled(backend: CacheUpstream, path: str, count: int) -> int:
    """The upstream count for ``path`` once it reached ``count`` (a background update lands
    after its client's answer); then a short look for any extra request."""
    wait_for(lambda: backend.count(path) >= count, timeout_s=10, what=f"{count} upstream requests for {path}")
    return backend.count(path)
