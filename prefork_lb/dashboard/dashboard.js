/* prefork-lb live dashboard: polls the status API (NGINX Plus shapes, version 9; see
 * docs/api.md) once a second and renders it. Plain DOM, no dependencies. Rows are keyed and
 * updated in place (no flicker; a row keeps its identity). Rates come from the difference
 * between two successive polls. ?api=/some/prefix/ reads another API base (default /api/;
 * "9/" is appended unless the base already ends with a version number). */
"use strict";
(() => {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 3000;
  const HISTORY = 60; // samples kept for the sparklines
  const SVG_NS = "http://www.w3.org/2000/svg";
  const API = apiBase(new URLSearchParams(location.search).get("api"));
  const ENDPOINTS = {
    upstreams: "http/upstreams", zones: "http/server_zones", streams: "stream/upstreams",
    connections: "connections", nginx: "nginx", workers: "prefork/workers",
    caches: "http/caches",
  };

  function apiBase(param) {
    let base = param || "/api/";
    if (!base.endsWith("/")) base += "/";
    return /\/\d+\/$/.test(base) ? base : base + "9/";
  }

  // ---------------------------------------------------------------- formatting
  const nf = new Intl.NumberFormat("en-US");
  const int = (n) => (Number.isFinite(n) ? nf.format(Math.round(n)) : "–");
  const rate = (r) => (r == null ? "–" : r >= 100 ? nf.format(Math.round(r)) : r.toFixed(1));
  const pct = (part, total) => (total > 0 ? ((100 * part) / total).toFixed(part && part < total / 1000 ? 2 : 1) + "%" : "–");
  function ms(v) {
    if (!Number.isFinite(v)) return "–";
    return v >= 1000 ? (v / 1000).toFixed(2) + " s" : (v >= 10 || Number.isInteger(v) ? Math.round(v) : v.toFixed(1)) + " ms";
  }
  function bytes(n) {
    if (!Number.isFinite(n)) return "–";
    let i = 0;
    for (; n >= 1024 && i < 4; i++) n /= 1024;
    return (i ? n.toFixed(n >= 100 ? 0 : 1) : n) + " " + ["B", "KiB", "MiB", "GiB", "TiB"][i];
  }
  function duration(s) {
    if (!Number.isFinite(s) || s < 0) return "–";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    const [d, hh, mm, ss] = [s / 86400, (s % 86400) / 3600, (s % 3600) / 60, s % 60].map(Math.floor);
    return d ? `${d}d ${hh}h ${mm}m` : hh ? `${hh}h ${mm}m ${ss}s` : `${mm}m ${ss}s`;
  }
  const clock = (t) => new Date(t).toLocaleTimeString("en-GB");

  // ---------------------------------------------------------------- DOM helpers
  function h(tag, attrs, ...kids) {
    const svg = ["svg", "path", "title", "circle"].includes(tag);
    const el = svg ? document.createElementNS(SVG_NS, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v != null && v !== false) el.setAttribute(k, v);
    el.append(...kids.flat().filter((k) => k != null));
    return el;
  }
  const $ = (id) => document.getElementById(id);
  const setText = (id, text) => { if ($(id).textContent !== text) $(id).textContent = text; };

  /* Make the keyed children of `parent` match `items` (in order), reusing existing nodes.
   * Children without data-key (a <thead>, say) stay in front. */
  function sync(parent, items, keyOf, create, update) {
    const old = new Map();
    let head = null;
    for (const c of parent.children) {
      if (c.dataset.key !== undefined) old.set(c.dataset.key, c);
      else if (!old.size) head = c;
    }
    let prev = head;
    for (const item of items) {
      const key = String(keyOf(item));
      let node = old.get(key);
      if (node) old.delete(key);
      else { node = create(item); node.dataset.key = key; }
      update(node, item);
      const ref = prev ? prev.nextSibling : parent.firstChild;
      if (node !== ref) parent.insertBefore(node, ref);
      prev = node;
    }
    old.forEach((node) => node.remove());
  }

  /* A table row from column definitions: {cls, cell(item) -> string | Node | Node[]}. */
  function fillRow(tr, columns, item) {
    while (tr.cells.length < columns.length) tr.insertCell();
    columns.forEach((col, i) => {
      const td = tr.cells[i], value = col.cell(item);
      if (col.cls) td.className = col.cls;
      if (typeof value === "string") { if (td.textContent !== value || td.children.length) td.textContent = value; }
      else td.replaceChildren(...[value].flat().filter((v) => v != null));
    });
  }

  const stateClass = (state) => "state-" + String(state).replace(/\s+/g, "-");
  const badge = (state, title) => h("span", { class: `badge ${stateClass(state)}`, title }, String(state));

  // ---------------------------------------------------------------- rates and history
  const previous = new Map(); // key -> last sample {value, t | avg, sum}
  const histories = new Map(); // key -> [values], for the sparklines
  const touched = new Set(); // keys used by the current poll

  /* Forget the peers, zones and workers that are gone (only after a complete poll). */
  function prune(complete) {
    if (complete) for (const map of [previous, histories]) for (const key of map.keys()) if (!touched.has(key)) map.delete(key);
    touched.clear();
  }

  /* Per-second rate of a counter since the last poll; null on the first sample or a reset. */
  function perSecond(key, value, t) {
    touched.add(key);
    const p = previous.get(key);
    previous.set(key, { value, t });
    if (!p || !Number.isFinite(value) || value < p.value || t <= p.t) return null;
    return ((value - p.value) * 1000) / (t - p.t);
  }

  /* The average time over the last interval: exact from a running sum when the API gives one
   * (response_time_histogram), else estimated from two cumulative averages when their
   * rounding allows it (the API floors to whole ms); else the cumulative average itself.
   * null when nothing completed in the interval. */
  function intervalAverage(key, avg, count, sum) {
    touched.add(key);
    const p = previous.get(key);
    previous.set(key, { value: count, avg, sum });
    if (!Number.isFinite(avg)) return null;
    if (!p || !Number.isFinite(p.avg)) return avg;
    const dn = count - p.value;
    if (dn <= 0) return dn < 0 ? avg : null;
    if (Number.isFinite(sum) && Number.isFinite(p.sum)) return (sum - p.sum) / dn;
    const v = (avg * count - p.avg * p.value) / dn;
    const err = Number.isInteger(avg) ? Math.max(count, p.value) / dn : 0;
    return v >= 0 && err <= Math.max(1, 0.1 * v) ? v : avg;
  }

  function remember(key, value) {
    touched.add(key);
    let list = histories.get(key);
    if (!list) histories.set(key, (list = []));
    list.push(Number.isFinite(value) ? value : null);
    if (list.length > HISTORY) list.shift();
    return list;
  }

  /* A small line chart of the last HISTORY samples, newest on the right; gaps for nulls
   * (nothing measured). The width shows 15 to HISTORY samples, as many as there are. */
  function sparkline(values, kind, unit) {
    const W = 84, H = 22;
    const svg = h("svg", { class: `spark spark-${kind}`, viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
    const nums = values.filter((v) => v != null);
    const max = Math.max(...nums, 0) || 1;
    const span = Math.min(HISTORY, Math.max(values.length, 15)); // slots across the width
    const x = (i) => ((i + span - values.length) * (W - 3)) / (span - 1) + 1;
    const y = (v) => H - 2 - (v / max) * (H - 4);
    let d = "", pen = false, last = null;
    values.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)} ${y(v).toFixed(1)}`;
      pen = true;
      last = [x(i), y(v)];
    });
    svg.append(h("title", {}, `last ${values.length} s, peak ${unit(max)}`), h("path", { d: `M1 ${H - 1.5}H${W - 2}`, class: "base" }));
    if (d) svg.append(h("path", { d, class: "line" }));
    if (last) svg.append(h("circle", { cx: last[0].toFixed(1), cy: last[1].toFixed(1), r: 1.8, class: "dot" }));
    return svg;
  }

  const withSpark = (text, values, kind, unit) => [h("span", { class: "value" }, text), sparkline(values, kind, unit)];

  // ---------------------------------------------------------------- header
  function renderHeader(nginx, conns, t) {
    if (nginx) {
      setText("f-version", `${nginx.version || "?"}${nginx.build ? " · " + nginx.build : ""}`);
      setText("f-generation", String(nginx.generation ?? "–"));
      const now = Date.parse(nginx.timestamp) || Date.now();
      const loaded = Date.parse(nginx.load_timestamp);
      setText("f-uptime", duration((now - loaded) / 1000));
      $("f-uptime").title = loaded ? "since the last (re)load at " + new Date(loaded).toLocaleString() : "";
      $("facts").title = `master pid ${nginx.ppid ?? "?"}, answered by worker ${nginx.pid ?? "?"}`;
    }
    if (conns) {
      setText("f-active", int(conns.active));
      setText("f-idle", int(conns.idle));
      const r = perSecond("conn|accepted", conns.accepted, t);
      setText("f-accepted", int(conns.accepted) + (r == null ? "" : ` (${rate(r)}/s)`));
      setText("f-dropped", int(conns.dropped));
    }
  }

  // ---------------------------------------------------------------- upstreams
  function peerColumns(kind) {
    const http = kind === "http";
    const serverCell = (p) => [
      h("span", { class: "server" }, p.server),
      p.name && p.name !== p.server ? h("span", { class: "tag" }, p.name) : null,
      p.backup ? h("span", { class: "tag" }, "backup") : null,
      p.weight > 1 ? h("span", { class: "tag" }, `w=${p.weight}`) : null,
    ];
    const stateTitle = (p) =>
      [`fails ${p.fails ?? 0}`, `unavailable ${p.unavail ?? 0}×`, `downtime ${duration((p.downtime || 0) / 1000)}`,
        p.downstart ? `down since ${new Date(p.downstart).toLocaleTimeString()}` : null].filter(Boolean).join(", ");
    const cols = [
      { cell: serverCell },
      { cell: (p) => badge(p.state, stateTitle(p)) },
      { cls: "num", cell: (p) => int(p.active) + (p.max_conns ? ` / ${int(p.max_conns)}` : "") },
      { cls: "num", cell: (p) => int(http ? p.requests : p.connections) },
      { cls: "num spark-cell", cell: (p) => withSpark(rate(p._rate), p._rates, "rate", (v) => rate(v) + "/s") },
    ];
    const errors5xx = (p) => {
      const r = p.responses || {};
      const el = h("span", { class: r["5xx"] ? "bad-text" : null, title: `${int(r["5xx"])} of ${int(r.total)} responses` }, pct(r["5xx"] || 0, r.total));
      return p._rate5xx ? [el, h("span", { class: "sub" }, ` ${rate(p._rate5xx)}/s`)] : el;
    };
    if (http) cols.push({ cls: "num", cell: errors5xx });
    cols.push({ cls: "num", cell: (p) => int(p.fails) });
    for (const field of http ? ["header_time"] : ["connect_time", "first_byte_time"]) cols.push({ cls: "num", cell: (p) => ms(p[field]) });
    cols.push({ cls: "num spark-cell", cell: (p) => withSpark(ms(p.response_time), p._times, "time", ms) });
    return cols;
  }

  const PEER_HEADS = {
    http: ["Server", "State", "Active", "Requests", "Req/s", "5xx", "Fails", "Header time", "Resp. time"],
    stream: ["Server", "State", "Active", "Connections", "Conn/s", "Fails", "Connect", "First byte", "Resp. time"],
  };
  const COLUMNS = { http: peerColumns("http"), stream: peerColumns("stream") };

  function upstreamCard(kind) {
    const heads = PEER_HEADS[kind].map((text, i) => h("th", { scope: "col", class: i > 1 ? "num" : null }, text));
    return h("article", { class: "card upstream" },
      h("header", { class: "card-head" }, h("h3", {}), h("span", { class: "summary" })),
      h("table", { class: "grid peers" }, h("thead", {}, h("tr", {}, heads)), h("tbody")));
  }

  function renderUpstreams(containerId, doc, kind, t) {
    const box = $(containerId);
    const names = Object.keys(doc).sort();
    if (!names.length) {
      box.replaceChildren(h("p", { class: "empty" }, kind === "http" ? "No HTTP upstreams." : "No stream upstreams."));
      return;
    }
    box.querySelector(".empty")?.remove();
    sync(box, names, (n) => n, () => upstreamCard(kind), (card, name) => {
      const up = doc[name], peers = up.peers || [];
      const upCount = peers.filter((p) => p.state === "up").length;
      card.dataset.upstream = name;
      card.classList.toggle("degraded", upCount < peers.length);
      card.querySelector("h3").textContent = name;
      card.querySelector(".summary").textContent =
        `${upCount}/${peers.length} up` + (up.keepalive != null ? ` · keepalive ${up.keepalive}` : "") +
        (up.zombies ? ` · zombies ${up.zombies}` : "");
      for (const p of peers) {
        const key = `${kind}|${name}|${p.id}|${p.server}`;
        const count = kind === "http" ? p.requests : p.connections;
        p._rate = perSecond(key + "|n", count, t);
        p._rates = remember(key + "|rate", p._rate);
        if (p.responses) p._rate5xx = perSecond(key + "|5xx", p.responses["5xx"], t);
        const hist = p.response_time_histogram; // prefork-lb extra: exact sum (s) and count
        const done = hist?.count ?? (kind === "http" ? p.responses?.total ?? p.requests : p.connections);
        p._times = remember(key + "|time", intervalAverage(key + "|avg", p.response_time, done, hist && hist.sum * 1000));
      }
      sync(card.querySelector("tbody"), peers, (p) => `${p.id}|${p.server}`, () => h("tr", { class: "peer" }), (tr, p) => {
        tr.dataset.server = p.server;
        tr.dataset.state = p.state;
        tr.dataset.upstream = name;
        fillRow(tr, COLUMNS[kind], p);
      });
    });
  }

  // ---------------------------------------------------------------- server zones
  const ZONE_COLUMNS = [
    { cell: (z) => h("span", { class: "server" }, z._name) },
    { cls: "num", cell: (z) => int(z.processing) },
    { cls: "num", cell: (z) => int(z.requests) },
    { cls: "num spark-cell", cell: (z) => withSpark(rate(z._rate), z._rates, "rate", (v) => rate(v) + "/s") },
    ...["2xx", "3xx", "4xx", "5xx"].map((c) => ({
      cls: "num", cell: (z) => h("span", { class: z.responses?.[c] ? `code-${c}` : null }, int(z.responses?.[c])),
    })),
    { cls: "num", cell: (z) => bytes(z.received) },
    { cls: "num", cell: (z) => bytes(z.sent) },
  ];

  function renderZones(doc, t) {
    const tbody = document.querySelector("#zones-table tbody");
    const zones = Object.keys(doc).sort().map((name) => {
      const z = { ...doc[name], _name: name };
      z._rate = perSecond(`zone|${name}`, z.requests, t);
      z._rates = remember(`zone|${name}|rate`, z._rate);
      return z;
    });
    sync(tbody, zones, (z) => z._name, () => h("tr", { class: "zone" }), (tr, z) => {
      tr.dataset.zone = z._name;
      fillRow(tr, ZONE_COLUMNS, z);
    });
  }

  // ---------------------------------------------------------------- caches (issue 18)
  const CACHE_STATUSES = ["hit", "stale", "updating", "revalidated", "miss", "expired", "bypass"];
  const served = (c) => CACHE_STATUSES.reduce((n, s) => n + (c[s]?.responses || 0), 0);
  const CACHE_COLUMNS = [
    { cell: (c) => h("span", { class: "mono" }, c._name) },
    { cell: (c) => badge(c.cold ? "cold" : "warm", c.cold ? "the cache loader has not finished reading the directory" : null) },
    { cls: "num", cell: (c) => bytes(c.size) },
    { cls: "num", cell: (c) => (c.max_size ? bytes(c.max_size) : "–") },
    { cls: "num", cell: (c) => `${int(c.entries)} / ${int(c.max_entries)}` },
    { cls: "num", cell: (c) => pct((c.hit?.responses || 0) + (c.stale?.responses || 0) + (c.updating?.responses || 0) + (c.revalidated?.responses || 0), served(c)) },
    { cls: "num", cell: (c) => rate(c._rate) },
    ...CACHE_STATUSES.map((s) => ({ cls: "num", cell: (c) => int(c[s]?.responses) })),
    { cls: "num", cell: (c) => bytes(["miss", "expired", "bypass"].reduce((n, s) => n + (c[s]?.bytes_written || 0), 0)) },
  ];

  function renderCaches(doc, t) {
    const tbody = document.querySelector("#caches-table tbody");
    const caches = Object.keys(doc).sort().map((name) => {
      const c = { ...doc[name], _name: name };
      c._rate = perSecond(`cache|${name}`, served(c), t);
      return c;
    });
    if (!caches.length) return;
    tbody.querySelector(".empty-row")?.remove();
    sync(tbody, caches, (c) => c._name, () => h("tr", { class: "cache" }), (tr, c) => {
      tr.dataset.cache = c._name;
      fillRow(tr, CACHE_COLUMNS, c);
    });
  }

  // ---------------------------------------------------------------- workers
  const heartbeatClass = (s) => (s > 10 ? "bad-text" : s > 3 ? "warn-text" : null);
  const WORKER_COLUMNS = [
    { cell: (w) => h("span", { class: "mono" }, String(w.pid)) },
    { cls: "num", cell: (w) => String(w.slot ?? "–") },
    { cell: (w) => badge(w.state) },
    { cls: "num", cell: (w) => duration(w.uptime) },
    { cls: "num", cell: (w) => bytes(w.rss) },
    { cls: "num", cell: (w) => (Number.isFinite(w.cpu) ? w.cpu.toFixed(1) + " s" : "–") },
    { cls: "num", cell: (w) => (w._cpu == null ? "–" : (100 * w._cpu).toFixed(0) + "%") },
    { cls: "num", cell: (w) => int(w.connections) },
    { cls: "num", cell: (w) => h("span", { class: w.state === "running" ? heartbeatClass(w.heartbeat_age) : null }, duration(w.heartbeat_age)) },
  ];

  function renderWorkers(list, current, t) {
    const gens = new Map();
    for (const w of list) {
      w._cpu = perSecond(`cpu|${w.pid}`, w.cpu, t);
      if (!gens.has(w.generation)) gens.set(w.generation, []);
      gens.get(w.generation).push(w);
    }
    const newest = current ?? Math.max(...gens.keys());
    const groups = [...gens.keys()].sort((a, b) => b - a).map((g) => ({ g, workers: gens.get(g).sort((a, b) => a.slot - b.slot) }));
    sync($("workers-table"), groups, (grp) => grp.g, () => h("tbody", { class: "generation" }), (tbody, grp) => {
      const isCurrent = grp.g === newest;
      tbody.classList.toggle("old", !isCurrent);
      tbody.dataset.generation = grp.g;
      const label = `Generation ${grp.g} · ${grp.workers.length} worker${grp.workers.length === 1 ? "" : "s"}`;
      const rows = [{ head: true }, ...grp.workers];
      const create = (w) => (w.head
        ? h("tr", { class: "group" }, h("th", { colspan: WORKER_COLUMNS.length, scope: "rowgroup" }))
        : h("tr", { class: "worker" }));
      sync(tbody, rows, (w) => (w.head ? "head" : w.pid), create, (tr, w) => {
        if (w.head) {
          tr.firstChild.replaceChildren(label, h("span", { class: `tag ${isCurrent ? "current" : "old"}` }, isCurrent ? "current" : "old"));
          return;
        }
        tr.dataset.pid = w.pid;
        tr.dataset.state = w.state;
        fillRow(tr, WORKER_COLUMNS, w);
      });
    });
  }

  // ---------------------------------------------------------------- polling
  async function getJSON(path) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    try {
      const resp = await fetch(API + path, { signal: ctl.signal, cache: "no-store", headers: { Accept: "application/json" } });
      if (!resp.ok) {
        let text = resp.statusText;
        try { text = (await resp.json()).error?.text || text; } catch { /* not JSON */ }
        throw new Error(`HTTP ${resp.status} ${text}`.trim());
      }
      return await resp.json();
    } catch (e) {
      throw e.name === "AbortError" ? new Error(`no answer within ${TIMEOUT_MS / 1000} s`) : e;
    } finally {
      clearTimeout(timer);
    }
  }

  let lastGood = null, polls = 0;

  function showErrors(errors) {
    const banner = $("banner");
    $("live-dot").classList.toggle("error", errors.length > 0);
    if (!errors.length) { banner.hidden = true; return; }
    banner.replaceChildren(
      h("strong", {}, "Status API unavailable"),
      ` — retrying every ${POLL_MS / 1000} s` + (lastGood ? `; figures are from ${clock(lastGood)}.` : "."),
      h("ul", {}, errors.map((e) => h("li", {}, e))));
    banner.hidden = false;
  }

  const RENDERERS = [
    ["header", (d, t) => (d.nginx || d.connections) && renderHeader(d.nginx, d.connections, t)],
    ["upstreams", (d, t) => d.upstreams && renderUpstreams("http-upstream-cards", d.upstreams, "http", t)],
    ["zones", (d, t) => d.zones && renderZones(d.zones, t)],
    ["streams", (d, t) => d.streams && renderUpstreams("stream-upstream-cards", d.streams, "stream", t)],
    ["workers", (d, t) => d.workers && renderWorkers(d.workers, d.nginx?.generation, t)],
    ["caches", (d, t) => d.caches && renderCaches(d.caches, t)],
  ];

  const SECTIONS = { upstreams: "http-upstreams", zones: "server-zones", streams: "stream-upstreams", workers: "workers", caches: "http-caches" };
  async function poll() {
    const started = performance.now();
    const names = Object.keys(ENDPOINTS);
    const results = await Promise.allSettled(names.map((n) => getJSON(ENDPOINTS[n])));
    const t = performance.now(), docs = {}, errors = [];
    results.forEach((r, i) => {
      if (r.status === "fulfilled") docs[names[i]] = r.value;
      else errors.push(`${API}${ENDPOINTS[names[i]]}: ${r.reason?.message || r.reason}`);
    });
    for (const [name, render] of RENDERERS) {
      try { render(docs, t); } catch (e) { errors.push(`rendering ${name}: ${e.message}`); console.error(e); }
    }
    for (const [name, id] of Object.entries(SECTIONS)) $(id).classList.toggle("stale", !(name in docs));
    if (Object.keys(docs).length) lastGood = Date.now();
    if (lastGood) setText("f-updated", clock(lastGood));
    prune(!errors.length);
    showErrors(errors);
    document.body.dataset.polls = ++polls; // lets tests wait for fresh figures
    setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
  }

  function start() {
    $("api-base").textContent = API;
    poll();
  }
  // Inserted by a script, this file may run before the body is parsed.
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
