"""``prefork-lb top [--url URL] [--interval S] [--once]``: a terminal view of a running prefork-lb.

Polls the status API (docs/api.md; version: the highest one ``GET <url>`` lists) and shows what the
dashboard shows; rates come from two samples. :class:`Api` fetches, :func:`render` turns documents
into lines of styled segments (pure, testable without a network). ``--once`` prints one plain frame
(two samples ``--interval`` apart); otherwise curses refreshes every interval (q quits, j/k scroll).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8081/api/"
ENDPOINTS = {  # Sample.docs key -> path under <url>/<version>/
    **{"nginx": "nginx", "connections": "connections", "requests": "http/requests"},
    **{"upstreams": "http/upstreams", "zones": "http/server_zones", "streams": "stream/upstreams"},
    "workers": "prefork/workers",
    **{"limit_reqs": "http/limit_reqs", "limit_conns": "http/limit_conns"},
}

Segment = tuple[str, str]  # (text, style); style: "", "head", "title", "up", "bad", "warn"
Line = list[Segment]


class ApiError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Sample:
    docs: dict[str, Any]  # ENDPOINTS key -> JSON document (absent when the server has no such path)
    t: float  # time.monotonic() of the fetch
    wall: float  # time.time() of the fetch


class Api:
    """The status API at ``url`` (a base such as .../api/, or an already versioned .../api/9/)."""

    def __init__(self, url: str, timeout_s: float = 3.0) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.timeout_s = timeout_s
        self.base: str | None = None

    def get(self, url: str) -> Any:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as e:
            e.close()
            raise ApiError(f"{url}: HTTP {e.code} {e.reason}", e.code) from e
        except OSError as e:  # URLError, refused, timeouts
            raise ApiError(f"cannot reach the status API at {url}: {getattr(e, 'reason', e)}") from e
        except ValueError as e:
            raise ApiError(f"{url}: the answer is not JSON ({e})") from e

    def resolve(self) -> str:
        if re.search(r"/\d+/$", self.url):
            return self.url
        listed = self.get(self.url)
        versions = [v for v in listed if type(v) is int] if isinstance(listed, list) else []
        if not versions:
            raise ApiError(f"{self.url} does not list API versions (is it the status API?)")
        return f"{self.url}{max(versions)}/"

    def sample(self) -> Sample:
        try:
            self.base = self.base or self.resolve()
            docs: dict[str, Any] = {}
            for key, path in ENDPOINTS.items():
                try:
                    docs[key] = self.get(self.base + path)
                except ApiError as e:
                    if e.status != 404:
                        raise
        except ApiError:
            self.base = None  # negotiate again: the server may have been restarted or replaced
            raise
        return Sample(docs, time.monotonic(), time.time())


# ---------------------------------------------------------------- formatting (pure)

Cell = str | Segment  # a bare string is an unstyled cell


def num(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def rate(r: float | None) -> str:
    return "-" if r is None else f"{r:,.0f}" if r >= 100 else f"{r:.1f}"


def ms(v: Any) -> str:
    if not isinstance(v, int | float):
        return "-"
    if v >= 1000:
        return f"{v / 1000:.2f}s"
    return f"{v:.0f}ms" if isinstance(v, int) or v >= 10 else f"{v:.1f}ms"


def duration(s: Any) -> str:
    if not isinstance(s, int | float) or s < 0:
        return "-"
    if s < 60:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    d, h, m, sec = int(s) // 86400, int(s) % 86400 // 3600, int(s) % 3600 // 60, int(s) % 60
    return f"{d}d {h}h {m}m" if d else f"{h}h {m}m {sec}s" if h else f"{m}m {sec}s"


def state_cell(state: Any) -> Segment:
    """Green up, red unavail/down, yellow otherwise (workers: running is green)."""
    bad = state in ("unavail", "down", "unhealthy")
    return str(state), "up" if state in ("up", "running") else "bad" if bad else "warn"


def _peer_key(kind: str, upstream: str, peer: dict[str, Any]) -> str:
    return f"{kind}|{upstream}|{peer.get('id')}|{peer.get('server')}"


def counters(docs: dict[str, Any]) -> dict[str, Any]:
    """Every counter a rate is shown for, by a stable key."""
    c: dict[str, Any] = {"requests": (docs.get("requests") or {}).get("total")}
    for kind, doc_key, field in (("http", "upstreams", "requests"), ("stream", "streams", "connections")):
        for name, up in (docs.get(doc_key) or {}).items():
            for p in up.get("peers", []):
                c[_peer_key(kind, name, p)] = p.get(field)
    for name, zone in (docs.get("zones") or {}).items():
        c[f"zone|{name}"] = zone.get("requests")
    for w in docs.get("workers") or []:
        c[f"cpu|{w.get('pid')}"] = w.get("cpu")
    for kind in ("limit_reqs", "limit_conns"):
        for name, zone in (docs.get(kind) or {}).items():
            c[f"{kind}|{name}"] = zone.get("rejected")
    return c


def rates(cur: Sample, prev: Sample | None) -> dict[str, float]:
    """Per-second rates between two samples; a counter that is new or went backwards has none."""
    if prev is None or cur.t <= prev.t:
        return {}
    dt, before, out = cur.t - prev.t, counters(prev.docs), {}
    for key, v in counters(cur.docs).items():
        p = before.get(key)
        if isinstance(v, int | float) and isinstance(p, int | float) and v >= p:
            out[key] = (v - p) / dt
    return out


def table(title: Segment, heads: list[str], rows: list[list[Cell]], align: str) -> list[Line]:
    """A blank line, the title, then columns padded to their widest cell (``align``: "l"/"r" each)."""
    cells = [[(c, "") if isinstance(c, str) else c for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i][0]) for r in cells]) for i, h in enumerate(heads)]

    def pad(text: str, i: int) -> str:
        return text.ljust(widths[i]) if align[i] == "l" else text.rjust(widths[i])

    lines: list[Line] = [[], [title], [("  " + "  ".join(pad(h, i) for i, h in enumerate(heads)), "head")]]
    for row in cells:
        lines.append([seg for i, (t, st) in enumerate(row) for seg in (("  ", ""), (pad(t, i), st))])
    return lines


def header(cur: Sample, r: dict[str, float]) -> Line:
    nginx, conns = cur.docs.get("nginx") or {}, cur.docs.get("connections") or {}
    uptime = None
    try:
        now = datetime.fromisoformat(nginx["timestamp"]).timestamp() if "timestamp" in nginx else cur.wall
        uptime = now - datetime.fromisoformat(nginx["load_timestamp"]).timestamp()
    except (KeyError, TypeError, ValueError):
        pass
    active, idle, accepted = (num(conns.get(k)) for k in ("active", "idle", "accepted"))
    total = (cur.docs.get("requests") or {}).get("total")
    return [
        (f"prefork-lb {nginx.get('version', '?')}", "title"),
        (f"  gen {nginx.get('generation', '-')}  up {duration(uptime)}", ""),
        (f"  conns active {active} idle {idle} accepted {accepted}", ""),
        (f"  requests {num(total)} ({rate(r.get('requests'))}/s)", ""),
        (time.strftime("  at %H:%M:%S", time.localtime(cur.wall)), ""),
    ]


def upstream_lines(doc: dict[str, Any], kind: str, r: dict[str, float]) -> list[Line]:
    http = kind == "http"
    heads = ["Server", "State", "Active"]
    heads += ["Requests", "Req/s", "2xx", "4xx", "5xx"] if http else ["Conns", "Conn/s", "Connect"]
    heads += ["Resp time", "Fails"]
    lines: list[Line] = []
    for name in sorted(doc):
        peers, rows = doc[name].get("peers", []), []
        for p in peers:
            server = str(p.get("server", "?")) + (" [backup]" if p.get("backup") else "")
            active = num(p.get("active")) + (f"/{p['max_conns']}" if p.get("max_conns") else "")
            row: list[Cell] = [server, state_cell(p.get("state")), active]
            row += [num(p.get("requests" if http else "connections")), rate(r.get(_peer_key(kind, name, p)))]
            if http:
                res = p.get("responses") or {}
                five = res.get("5xx")
                row += [num(res.get("2xx")), num(res.get("4xx")), (num(five), "bad" * bool(five))]
            else:
                row.append(ms(p.get("connect_time")))
            fails = p.get("fails")
            rows.append([*row, ms(p.get("response_time")), (num(fails), "warn" * bool(fails))])
        ups = sum(p.get("state") == "up" for p in peers)
        title = (f"{'HTTP' if http else 'Stream'} upstream {name}  {ups}/{len(peers)} up", "title")
        lines += table(title if ups == len(peers) else (title[0], "warn"), heads, rows, "ll" + "r" * 10)
    return lines


def zone_lines(doc: dict[str, Any], r: dict[str, float]) -> list[Line]:
    rows: list[list[Cell]] = []
    for name in sorted(doc):
        z, res = doc[name], doc[name].get("responses") or {}
        rows.append([name, num(z.get("processing")), num(z.get("requests")), rate(r.get(f"zone|{name}"))])
        rows[-1] += [num(res.get(c)) for c in ("2xx", "4xx", "5xx")]
    heads = ["Zone", "Processing", "Requests", "Req/s", "2xx", "4xx", "5xx"]
    return table(("HTTP server zones", "title"), heads, rows, "lrrrrrr")


def limit_lines(docs: dict[str, Any], r: dict[str, float]) -> list[Line]:
    """limit_req / limit_conn zones (docs/api.md); no table where none is configured."""
    rows: list[list[Cell]] = []
    for kind, label in (("limit_reqs", "limit_req"), ("limit_conns", "limit_conn")):
        doc = docs.get(kind) or {}
        for name in sorted(doc):
            z = doc[name]
            delayed = num(z.get("delayed")) if kind == "limit_reqs" else "-"
            rejected = z.get("rejected")
            rows.append(
                [name, label, num(z.get("passed")), delayed, (num(rejected), "warn" * bool(rejected))]
            )
            rows[-1] += [rate(r.get(f"{kind}|{name}")), num(z.get("rejected_dry_run"))]
    if not rows:
        return []
    heads = ["Zone", "Limit", "Passed", "Delayed", "Rejected", "Rej/s", "Dry-run rej"]
    return table(("Rate and connection limits", "title"), heads, rows, "llrrrrr")


def worker_lines(workers: list[dict[str, Any]], r: dict[str, float]) -> list[Line]:
    rows: list[list[Cell]] = []
    for w in sorted(workers, key=lambda w: (-w.get("generation", 0), w.get("slot", 0))):
        cpu, hb, rss = r.get(f"cpu|{w.get('pid')}"), w.get("heartbeat_age"), w.get("rss")
        hb_style = "" if not isinstance(hb, int | float) else "bad" if hb > 10 else "warn" if hb > 3 else ""
        rows.append([str(w.get("pid", "?")), num(w.get("generation")), num(w.get("slot"))])
        rows[-1] += [state_cell(w.get("state")), duration(w.get("uptime"))]
        rows[-1] += [f"{rss / 1048576:.1f}" if isinstance(rss, int | float) else "-"]
        rows[-1] += [f"{w['cpu']:.1f}" if isinstance(w.get("cpu"), int | float) else "-"]
        rows[-1] += ["-" if cpu is None else f"{100 * cpu:.0f}%", num(w.get("connections"))]
        rows[-1].append((duration(hb), hb_style))
    heads = ["PID", "Gen", "Slot", "State", "Uptime", "RSS MiB", "CPU s", "CPU", "Conns", "Heartbeat"]
    return table(("Workers", "title"), heads, rows, "rrrlrrrrrr")


def render(cur: Sample, prev: Sample | None = None) -> list[Line]:
    """The whole frame; rates need ``prev`` (shown as "-" without it)."""
    r, docs = rates(cur, prev), cur.docs
    lines = [header(cur, r), *upstream_lines(docs.get("upstreams") or {}, "http", r)]
    lines += zone_lines(docs.get("zones") or {}, r)
    lines += limit_lines(docs, r)
    lines += upstream_lines(docs.get("streams") or {}, "stream", r)
    return lines + worker_lines(docs.get("workers") or [], r)


def plain(lines: list[Line]) -> str:
    return "\n".join("".join(text for text, _ in line).rstrip() for line in lines)


# ---------------------------------------------------------------- terminal


def run_curses(api: Api, interval: float) -> None:
    import curses

    for name in ("LINES", "COLUMNS"):  # ncurses would take these over the real size, and miss resizes
        os.environ.pop(name, None)

    def loop(scr: Any) -> None:
        with contextlib.suppress(curses.error):
            curses.curs_set(0)
        styles = {"head": curses.A_BOLD, "title": curses.A_BOLD, "warn": 0, "up": 0, "bad": curses.A_BOLD}
        if curses.has_colors():
            curses.start_color()
            try:
                curses.use_default_colors()
                bg = -1
            except curses.error:
                bg = curses.COLOR_BLACK
            colours = {"up": curses.COLOR_GREEN, "bad": curses.COLOR_RED, "warn": curses.COLOR_YELLOW}
            for i, (style, colour) in enumerate(colours.items(), 1):
                curses.init_pair(i, colour, bg)
                styles[style] |= curses.color_pair(i)
        prev: Sample | None = None
        last: Sample | None = None
        error, scroll, next_poll = "", 0, 0.0
        while True:
            if time.monotonic() >= next_poll:
                try:
                    prev, last, error = last, api.sample(), ""
                except ApiError as e:
                    error = str(e)
                next_poll = time.monotonic() + interval
            lines = render(last, prev) if last else []
            if error:
                since = time.strftime("; figures from %H:%M:%S", time.localtime(last.wall)) if last else ""
                lines[:0] = [[(error, "bad")], [(f"retrying every {interval:g}s{since}", "bad")]]
            height, width = scr.getmaxyx()
            scroll = max(0, min(scroll, len(lines) - height + 1))
            shown = lines[scroll : scroll + height - 1]
            foot = f"{api.base or api.url}  every {interval:g}s  q quit  arrows/j/k scroll"
            scr.erase()
            for y, line in [*enumerate(shown), (height - 1, [(foot, "head")])]:
                x = 0
                for text, style in line:
                    chunk = text[: max(0, width - 1 - x)]
                    with contextlib.suppress(curses.error):  # clipped, yet curses may still object
                        scr.addstr(y, x, chunk, styles.get(style, 0))
                    x += len(chunk)
            scr.noutrefresh()
            curses.doupdate()
            scr.timeout(max(10, int((next_poll - time.monotonic()) * 1000)))
            key = scr.getch()
            if key in (ord("q"), ord("Q")):
                return
            if key == curses.KEY_RESIZE:  # repaint all: a frame drawn for the old size may have garbled it
                scr.clear()
            scroll += {curses.KEY_DOWN: 1, ord("j"): 1, curses.KEY_UP: -1, ord("k"): -1}.get(key, 0)

    curses.wrapper(loop)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefork-lb top", description="A terminal view of a running prefork-lb.")
    p.add_argument("--url", default=DEFAULT_URL, help=f"status API base (default: {DEFAULT_URL})")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default: 1.0)")
    p.add_argument("--once", action="store_true", help="print one plain-text frame and exit (no curses)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.interval > 0:
        parser.error(f"--interval must be a positive number of seconds, not {args.interval}")
    api = Api(args.url, timeout_s=min(3.0, max(1.0, args.interval)))
    if args.once:
        try:
            first = api.sample()
            time.sleep(args.interval)
            second = api.sample()
        except ApiError as e:
            print(f"prefork-lb top: {e}", file=sys.stderr)
            return 1
        print(plain(render(second, first)))
        return 0
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("prefork-lb top: not a terminal; use --once for plain text", file=sys.stderr)
        return 2
    try:
        run_curses(api, args.interval)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
