// swell's dashboard: one static page over the admin API (/api/v1), no build step, no libraries.
//
// Every second it reads the overview and the chosen function's history (only the seconds it has
// not seen yet, so a poll stays a few hundred bytes however long the page is open); every five
// seconds the queues, streams, dead letters and sagas that are on screen. Actions POST with the admin token the
// operator gave once (kept in sessionStorage, so it leaves with the tab).
//
// Charts are SVG drawn here. Each chart's <figure> carries its latest and peak values as
// data-latest-<series> and data-peak-<series> attributes (the browser tests read those, and so
// can anything else that scrapes the page), and its <svg> an aria-label with the same figures.
"use strict";

(() => {
  const API = new URL("api/v1/", document.baseURI);
  const FAST_MS = 1000;       // overview and history
  const SLOW_MS = 5000;       // queues, streams, dead letters, sagas (while on screen)
  const HIDDEN_MS = 10000;    // a tab nobody looks at polls rarely
  const KEEP_S = 3600;        // history kept in the page: the last hour
  const TOKEN_KEY = "swell.token";
  const OPERATOR_KEY = "swell.operator";

  // -- charts: which series, in which unit -------------------------------------------------------
  const CHARTS = [
    { id: "flow", title: "Arrivals and completions", unit: "/s",
      series: [["arrival_rate", "arrivals"], ["completion_rate", "completions"]] },
    { id: "depth", title: "Depth and age of oldest", unit: "events",
      series: [["depth", "depth"]], right: { unit: "s", series: [["oldest_age_s", "age of oldest"]] } },
    { id: "lag", title: "Lag", unit: "events", series: [["lag", "lag"]] },
    { id: "units", title: "Units and cold starts", unit: "units",
      series: [["desired", "desired"], ["ready", "ready"], ["busy", "busy"]],
      right: { unit: "starts", series: [["cold_starts", "cold starts"]] } },
    { id: "latency", title: "Service time", unit: "s",
      series: [["service_p50_s", "p50"], ["service_p99_s", "p99"]] },
    { id: "errors", title: "Errors and throttles", unit: "%", scale: 100,
      series: [["error_rate", "errors"], ["throttle_rate", "throttles"]] },
    { id: "slo", title: "SLO burn rate", unit: "×", series: [["slo_burn", "burn"]] },
    { id: "cost", title: "Cost", unit: "$/h", series: [["cost_per_hour", "cost"]] },
  ];
  // the history keys a live point takes from the overview's signals (the rest: carried forward)
  const SIGNALS = ["arrival_rate", "completion_rate", "depth", "oldest_age_s", "lag", "ready", "busy",
    "cold_starts", "service_p50_s", "service_p99_s", "error_rate", "throttle_rate"];

  const state = {
    overview: null, fn: null, range: KEEP_S,
    hist: { for: null, t: [], series: {} },
    serverAt: null, localAt: 0,     // the server's clock at the last overview, and ours then
    dlq: null, saga: null,
  };

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  // -- the API -----------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, detail) {
      super(`${status} ${code}${detail ? `: ${detail}` : ""}`);
      this.status = status;
      this.code = code;
      this.detail = detail;
    }
  }

  async function api(path, body) {
    const post = body !== undefined;
    const headers = { Accept: "application/json" };
    if (post) {
      headers["Content-Type"] = "application/json";
      headers.Authorization = `Bearer ${token()}`;
    }
    let res;
    try {
      res = await fetch(new URL(path, API), {
        method: post ? "POST" : "GET", headers, cache: "no-store",
        body: post ? JSON.stringify(body) : undefined,
      });
    } catch (err) {
      throw new ApiError(0, "unreachable", "the server does not answer");
    }
    let data = null;
    try { data = await res.json(); } catch (err) { data = null; }
    if (!res.ok) {
      throw new ApiError(res.status, (data && data.error) || res.statusText,
        (data && data.detail) || "");
    }
    return data;
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
  const operator = () => ($("operator-input").value.trim() || "dashboard");

  /** A state-changing call: asks for the token first, says clearly what a 401 means. */
  async function act(path, body, what) {
    if (!token()) {
      alertUser(`An admin token is needed to ${what}: paste the one swell run printed at start ` +
        "(or SWELL_ADMIN_TOKEN) above.", "auth");
      $("token-input").focus();
      return null;
    }
    try {
      const out = await api(path, body || {});
      clearAlert();
      return out;
    } catch (err) {
      if (err.status === 401) {
        $("token-state").textContent = "token refused (401): enter the right one";
        alertUser(`401 unauthorized: the server refused the admin token, so nothing was done ` +
          `(${what}). Enter the token swell run printed at start.`, "auth");
        $("token-input").focus();
      } else {
        alertUser(`Could not ${what}: ${err.message}`, "error");
      }
      return null;
    }
  }

  function alertUser(text, kind) {
    $("alert-text").textContent = text;
    $("alert").dataset.kind = kind;
    $("alert").hidden = false;
  }

  function clearAlert() {
    $("alert").hidden = true;
    $("alert-text").textContent = "";
  }

  // -- formatting --------------------------------------------------------------------------------
  function num(v) {
    if (v == null || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
    if (a >= 1e4) return `${(v / 1e3).toFixed(a >= 1e5 ? 0 : 1)}k`;
    if (Number.isInteger(v)) return String(v);
    if (a < 0.01) return String(Number(v.toPrecision(2)));
    return v.toFixed(a < 10 ? 2 : 1);
  }

  function fmt(v, unit) {
    if (v == null || Number.isNaN(v)) return "–";
    switch (unit) {
      case "s": return v < 1 ? `${num(v * 1000)} ms` : `${num(v)} s`;
      case "%": return `${num(v)} %`;
      case "$/h": return `$${v.toFixed(v < 1 ? 4 : 2)}/h`;
      case "/s": return `${num(v)}/s`;
      case "×": return `${num(v)}×`;
      default: return num(v);
    }
  }

  function ago(seconds) {
    if (seconds == null) return "–";
    if (seconds < 90) return `${Math.max(0, Math.round(seconds))} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} d ago`;
  }

  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  const serverNow = () => (state.serverAt == null ? Date.now() / 1000
    : state.serverAt + (performance.now() - state.localAt) / 1000);
  const since = (t) => (t == null ? null : serverNow() - t);

  // -- tables: rows kept by key and changed in place (a button keeps its focus across polls) -----
  function syncTable(table, cols, rows, keyOf, empty) {
    if (!table.tHead) {
      const tr = table.createTHead().insertRow();
      for (const c of cols) {
        const th = document.createElement("th");
        th.scope = "col";
        th.textContent = c.h;
        if (c.num) th.className = "num";
        tr.append(th);
      }
      table.createTBody();
      table.createCaption();
    }
    const body = table.tBodies[0];
    const old = new Map([...body.rows].map((tr) => [tr.dataset.key, tr]));
    let prev = null;
    for (const row of rows) {
      const key = String(keyOf(row));
      let tr = old.get(key);
      if (tr) {
        old.delete(key);
      } else {
        tr = document.createElement("tr");
        tr.dataset.key = key;
        for (const c of cols) {
          const td = document.createElement("td");
          if (c.num) td.className = "num";
          td.dataset.label = c.h;
          tr.append(td);
        }
      }
      cols.forEach((c, i) => fillCell(tr.cells[i], c, row));
      const at = prev ? prev.nextSibling : body.firstChild;
      if (at !== tr) body.insertBefore(tr, at);
      prev = tr;
    }
    old.forEach((tr) => tr.remove());
    table.caption.textContent = rows.length ? "" : empty;
  }

  function fillCell(td, col, row) {
    if (col.node) {  // a built cell: rebuilt only when what it shows changes
      const sig = JSON.stringify(col.sig(row));
      if (td.dataset.sig !== sig) {
        td.dataset.sig = sig;
        td.replaceChildren(col.node(row));
      }
      return;
    }
    const v = col.v(row);
    const text = v == null || v === "" ? "–" : String(v);
    if (td.textContent !== text) td.textContent = text;
    if (col.title) {
      const title = col.title(row) || "";
      if (td.title !== title) td.title = title;
    }
  }

  function button(label, onClick, opts = {}) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    if (opts.cls) b.className = opts.cls;
    if (opts.aria) b.setAttribute("aria-label", opts.aria);
    if (opts.pressed != null) b.setAttribute("aria-pressed", String(opts.pressed));
    if (opts.disabled) b.disabled = true;
    b.addEventListener("click", async () => {
      b.disabled = true;
      try { await onClick(); } finally { b.disabled = !!opts.disabled; }
    });
    return b;
  }

  function badge(text, kind, title) {
    const s = document.createElement("span");
    s.className = `badge ${kind || text}`;
    s.textContent = text;
    if (title) s.title = title;
    return s;
  }

  function fragment(...nodes) {
    const f = document.createDocumentFragment();
    f.append(...nodes);
    return f;
  }

  // -- overview: functions and nodes -------------------------------------------------------------
  async function refreshOverview() {
    const ov = await api("overview");
    state.overview = ov;
    if (typeof ov.time === "number") {
      state.serverAt = ov.time;
      state.localAt = performance.now();
    }
    $("app-name").textContent = ov.app || "–";
    $("node-name").textContent = ov.node || "–";
    const fns = ov.functions || [];
    const names = fns.map((f) => f.name);
    if (!names.includes(state.fn)) selectFunction(busiest(fns));
    syncSelect(names);
    renderFunctions(fns);
    renderNodes(ov.nodes || []);
  }

  /** The function with the most work waiting or running (the first, when none has any). */
  function busiest(fns) {
    const load = (f) => (f.signals ? (f.signals.depth || 0) + (f.signals.in_flight || 0) : 0);
    return fns.reduce((best, f) => (best == null || load(f) > load(best) ? f : best), null)?.name ?? null;
  }

  function syncSelect(names) {
    const sel = $("fn-select");
    const have = [...sel.options].map((o) => o.value);
    if (have.join("\n") !== names.join("\n")) {
      sel.replaceChildren(...names.map((n) => new Option(n, n)));
    }
    if (state.fn != null && sel.value !== state.fn) sel.value = state.fn;
    sel.disabled = names.length === 0;
  }

  function selectFunction(name) {
    if (name === state.fn) return;
    state.fn = name;
    state.hist = { for: null, t: [], series: {} };
    if (name) history.replaceState(null, "", `#fn=${enc(name)}`);
    if ($("fn-select").value !== name && name) $("fn-select").value = name;
    renderCharts();
  }

  const sig = (f, k) => (f.signals ? f.signals[k] : null);

  const FUNCTION_COLS = [
    { h: "Function", node: (f) => button(f.name, () => { selectFunction(f.name); poll(); }, {
      cls: "link", pressed: f.name === state.fn, aria: `Show ${f.name} in the charts` }),
      sig: (f) => [f.name, f.name === state.fn] },
    { h: "Units", num: true, v: (f) => f.desired, title: (f) => f.reason },
    { h: "Ready / busy", num: true, v: (f) => `${num(sig(f, "ready"))} / ${num(sig(f, "busy"))}` },
    { h: "Depth", num: true, v: (f) => num(sig(f, "depth")) },
    { h: "Oldest", num: true, v: (f) => fmt(sig(f, "oldest_age_s"), "s") },
    { h: "Lag", num: true, v: (f) => num(sig(f, "lag")) },
    { h: "In / done", num: true, v: (f) => `${num(sig(f, "arrival_rate"))} / ${
      fmt(sig(f, "completion_rate"), "/s")}` },
    { h: "p99", num: true, v: (f) => fmt(sig(f, "service_p99_s"), "s") },
    { h: "Errors", num: true, v: (f) => fmt(pct(sig(f, "error_rate")), "%") },
    { h: "SLO", v: sloText, title: sloTitle },
    { h: "Cost", num: true, v: (f) => (f.cost ? fmt(f.cost.dollars_per_h, "$/h") : null) },
    { h: "Reason", v: (f) => f.reason, title: (f) => f.reason },
    { h: "Intake", node: (f) => fragment(
      badge(f.paused ? "paused" : "open", f.paused ? "paused" : "open", f.paused_by
        ? `paused by ${f.paused_by}` : ""),
      button(f.paused ? "Resume" : "Pause", () => pauseFunction(f, !f.paused), {
        cls: "act", aria: `${f.paused ? "Resume" : "Pause"} intake of ${f.name}` })),
      sig: (f) => [f.name, !!f.paused, f.paused_by] },
  ];

  /** An SLO's firing alerts, else its worst burn rate over its shortest window. */
  function sloText(f) {
    const objectives = (f.slo && f.slo.objectives) || [];
    if (!objectives.length) return null;
    const firing = objectives.flatMap((o) => o.firing || []);
    if (firing.length) return `firing: ${firing.join(", ")}`;
    const burns = objectives.map((o) => Object.values(o.burn_rates || {})[0]).filter((b) => b != null);
    return burns.length ? `ok, burn ${fmt(Math.max(...burns), "×")}` : "ok";
  }

  function sloTitle(f) {
    const objectives = (f.slo && f.slo.objectives) || [];
    return objectives.map((o) => `${o.objective}: target ${o.target}, SLI ${num(o.sli)}, ` +
      `budget left ${num(o.budget_left)}`).join("; ");
  }

  const pct = (v) => (v == null ? null : v * 100);

  function renderFunctions(fns) {
    syncTable($("functions-table"), FUNCTION_COLS, fns, (f) => f.name, "no functions run here");
    const f = fns.find((x) => x.name === state.fn);
    $("fn-summary").textContent = f
      ? `${f.queue ? `reads ${f.queue}` : ""}${f.group ? ` (group ${f.group})` : ""} · ` +
        `${f.mode || ""} · ${f.controller || ""} · ${f.desired} unit(s): ${f.reason || ""}` +
        (f.paused ? " · intake paused" : "")
      : "";
  }

  async function pauseFunction(f, pause) {
    const verb = pause ? "pause" : "resume";
    const out = await act(`functions/${enc(f.name)}/${verb}`, { by: operator() },
      `${verb} intake of ${f.name}`);
    if (out) await poll();
  }

  function renderNodes(nodes) {
    syncTable($("nodes-table"), [
      { h: "Node", v: (n) => n.node },
      { h: "Host", v: (n) => (n.host ? `${n.host}${n.pid ? ` (pid ${n.pid})` : ""}` : null) },
      { h: "Up since", v: (n) => (n.started ? clock(n.started) : null) },
      { h: "Seen", v: (n) => ago(since(n.seen)) },
      { h: "In flight", num: true, v: (n) => num(n.in_flight) },
      { h: "Units per function", v: (n) => Object.entries(n.functions || {})
        .map(([k, v]) => `${k} ${v}`).join(", ") },
    ], nodes, (n) => n.node, "no live nodes");
  }

  // -- history and charts ------------------------------------------------------------------------
  async function refreshHistory() {
    const fn = state.fn;
    if (!fn) return;
    const h = state.hist;
    const last = h.for === fn && h.t.length ? h.t[h.t.length - 1] : null;
    const got = await api(`functions/${enc(fn)}/history?seconds=${KEEP_S}` +
      (last == null ? "" : `&since=${last}`));
    if (state.fn !== fn) return;  // another function was chosen meanwhile
    if (h.for !== fn) {
      state.hist = { for: fn, t: [], series: {} };
    }
    merge(state.hist, got);
  }

  function merge(h, got) {
    const t = got.t || [];
    const series = got.series || {};
    const last = h.t.length ? h.t[h.t.length - 1] : -Infinity;
    const keys = new Set([...Object.keys(h.series), ...Object.keys(series)]);
    for (const k of keys) if (!h.series[k]) h.series[k] = h.t.map(() => null);
    t.forEach((ti, i) => {
      if (ti <= last) return;
      h.t.push(ti);
      for (const k of keys) h.series[k].push(series[k] ? series[k][i] ?? null : null);
    });
    const cut = serverNow() - KEEP_S;
    let drop = 0;
    while (drop < h.t.length && h.t[drop] < cut) drop += 1;
    if (drop) {
      h.t.splice(0, drop);
      for (const k of keys) h.series[k].splice(0, drop);
    }
  }

  /** The history, and the overview's newer reading as its live last point. */
  function chartData() {
    const h = state.hist.for === state.fn ? state.hist : { t: [], series: {} };
    const t = h.t.slice();
    const series = {};
    for (const [k, v] of Object.entries(h.series)) series[k] = v.slice();
    const f = (state.overview && state.overview.functions || []).find((x) => x.name === state.fn);
    const now = state.overview && state.overview.time;
    if (f && f.signals && typeof now === "number" && (!t.length || now > t[t.length - 1])) {
      const keys = new Set([...Object.keys(series), ...SIGNALS, "desired"]);
      t.push(now);
      for (const k of keys) {
        if (!series[k]) series[k] = t.slice(1).map(() => null);
        const live = k === "desired" ? f.desired : SIGNALS.includes(k) ? f.signals[k] : undefined;
        const prev = series[k].length ? series[k][series[k].length - 1] : null;
        series[k].push(live === undefined ? prev : live);
      }
    }
    return { t, series };
  }

  function ensureCharts() {
    const grid = $("chart-grid");
    if (grid.childElementCount) return;
    for (const spec of CHARTS) {
      const fig = document.createElement("figure");
      fig.className = "chart";
      fig.dataset.chart = spec.id;
      const cap = document.createElement("figcaption");
      cap.textContent = spec.title;
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("role", "img");  // named by its aria-label: the title and latest values
      const legend = document.createElement("ul");
      legend.className = "legend";
      fig.append(cap, svg, legend);
      grid.append(fig);
    }
  }

  function renderCharts() {
    ensureCharts();
    const { t, series } = chartData();
    const end = Math.max(serverNow(), t.length ? t[t.length - 1] : 0);
    const start = Math.max(end - state.range, t.length ? t[0] : end - state.range);
    const figs = CHARTS.map((spec) => $("chart-grid").querySelector(`[data-chart="${spec.id}"]`));
    const widths = figs.map((fig) => fig.clientWidth);  // all read before any is drawn: one layout
    CHARTS.forEach((spec, i) => drawChart(figs[i], spec, widths[i], t, series, start, end));
  }

  function lines(spec) {
    const left = spec.series.map(([key, label]) => ({ key, label, unit: spec.unit, axis: "l" }));
    const right = spec.right ? spec.right.series.map(([key, label]) => ({
      key, label, unit: spec.right.unit, axis: "r" })) : [];
    return [...left, ...right];
  }

  /** The top of an axis of four round steps (1, 2, 2.5 or 5 times a power of ten) over ``m``. */
  function niceMax(m) {
    if (!(m > 0)) return 1;
    const x = m / 4;
    const p = 10 ** Math.floor(Math.log10(x));
    const n = x / p;
    return 4 * (n <= 1 ? 1 : n <= 2 ? 2 : n <= 2.5 ? 2.5 : n <= 5 ? 5 : 10) * p;
  }

  function drawChart(fig, spec, width, t, series, start, end) {
    const scale = spec.scale || 1;
    const all = lines(spec);
    const W = Math.max(260, Math.floor(width) - 2 || 320);
    const H = 170;
    const pad = { l: 44, r: spec.right ? 44 : 10, t: 8, b: 20 };
    const iw = W - pad.l - pad.r;
    const ih = H - pad.t - pad.b;
    const inView = t.map((ti) => ti >= start && ti <= end);
    const vals = (s) => (series[s.key] || []).map((v) => (v == null ? null : v * (s.axis === "l" ? scale : 1)));
    const peak = (axis) => Math.max(0, ...all.filter((s) => s.axis === axis)
      .flatMap((s) => vals(s).filter((v, i) => v != null && inView[i])));
    const top = { l: niceMax(peak("l")), r: niceMax(peak("r")) };
    const x = (ti) => pad.l + (end > start ? ((ti - start) / (end - start)) * iw : iw);
    const y = (v, axis) => pad.t + ih - (Math.min(v, top[axis]) / top[axis]) * ih;

    const parts = [];
    for (let i = 0; i <= 4; i += 1) {
      const yy = pad.t + ih - (i / 4) * ih;
      parts.push(`<line class="grid" x1="${pad.l}" x2="${pad.l + iw}" y1="${yy}" y2="${yy}"/>`);
      parts.push(`<text class="tick" x="${pad.l - 4}" y="${yy + 3}" text-anchor="end">${
        esc(num((top.l * i) / 4))}</text>`);
      if (spec.right) {
        parts.push(`<text class="tick" x="${pad.l + iw + 4}" y="${yy + 3}">${
          esc(num((top.r * i) / 4))}</text>`);
      }
    }
    const mid = (start + end) / 2;
    parts.push(`<text class="tick" x="${pad.l}" y="${H - 4}">${esc(clock(start))}</text>`);
    parts.push(`<text class="tick" x="${x(mid)}" y="${H - 4}" text-anchor="middle">${esc(clock(mid))}</text>`);
    parts.push(`<text class="tick" x="${pad.l + iw}" y="${H - 4}" text-anchor="end">${esc(clock(end))}</text>`);

    const legend = [];
    all.forEach((s, n) => {
      const v = vals(s);
      // one point per pixel column (its highest: a spike stays visible), a gap where unknown
      let d = "";
      let pen = false;
      let col = null;
      let best = null;
      let lastPoint = null;
      const flush = () => {
        if (best == null) return;
        d += `${pen ? "L" : "M"}${col} ${best.toFixed(1)}`;
        pen = true;
        lastPoint = [col, best.toFixed(1)];
        best = null;
      };
      t.forEach((ti, i) => {
        if (!inView[i] || v[i] == null) { flush(); pen = false; col = null; return; }
        const px = Math.round(x(ti));
        const py = y(v[i], s.axis);
        if (px !== col) { flush(); col = px; best = py; } else if (py < best) best = py;
      });
      flush();
      const cls = `s${n}${s.axis === "r" ? " right" : ""}`;
      if (d) parts.push(`<path class="line ${cls}" d="${d}"/>`);
      if (lastPoint) parts.push(`<circle class="dot ${cls}" cx="${lastPoint[0]}" cy="${lastPoint[1]}" r="2.5"/>`);
      const latest = lastValue(v);
      const high = Math.max(0, ...v.filter((w, i) => w != null && inView[i]));
      fig.setAttribute(`data-latest-${s.key}`, latest == null ? "" : String(latest));
      fig.setAttribute(`data-peak-${s.key}`, String(high));
      legend.push({ cls, label: s.label, text: fmt(latest, s.unit) });
    });
    if (!t.some((ti, i) => inView[i])) {
      parts.push(`<text class="empty" x="${pad.l + iw / 2}" y="${pad.t + ih / 2}" text-anchor="middle">no data yet</text>`);
    }
    const svg = fig.querySelector("svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("width", String(W));
    svg.setAttribute("height", String(H));
    svg.setAttribute("aria-label", `${spec.title}: ${legend.map((l) => `${l.label} ${l.text}`).join(", ")}`);
    svg.innerHTML = parts.join("");
    fig.dataset.points = String(t.filter((ti, i) => inView[i]).length);
    fig.dataset.updated = t.length ? String(t[t.length - 1]) : "";
    const ul = fig.querySelector(".legend");
    ul.replaceChildren(...legend.map((l) => {
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = `swatch ${l.cls}`;
      sw.setAttribute("aria-hidden", "true");
      const b = document.createElement("b");
      b.textContent = l.text;
      li.append(sw, `${l.label} `, b);
      return li;
    }));
  }

  function lastValue(v) {
    for (let i = v.length - 1; i >= 0; i -= 1) if (v[i] != null) return v[i];
    return null;
  }

  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

  // -- queues and streams ------------------------------------------------------------------------
  async function refreshQueues() {
    const qs = await api("queues");
    syncTable($("queues-table"), [
      { h: "Queue", v: (q) => q.queue || q.name },
      { h: "Ready", num: true, v: (q) => num(q.depth) },
      { h: "In flight", num: true, v: (q) => num(q.in_flight) },
      { h: "Delayed", num: true, v: (q) => num(q.delayed) },
      { h: "Oldest", num: true, v: (q) => fmt(q.oldest_age_s, "s") },
    ], qs || [], (q) => q.queue || q.name, "no queues declared");
  }

  async function refreshStreams() {
    const ss = await api("streams");
    const name = (s) => s.stream ?? s.name;
    const sum = (xs) => (xs || []).reduce((a, b) => a + (b || 0), 0);
    syncTable($("streams-table"), [
      { h: "Stream", v: name },
      { h: "Partitions", num: true, v: (s) => s.partitions },
      { h: "Kept", num: true, v: (s) => num(sum(s.kept)) },
      { h: "Groups (lag per partition)", v: (s) => (s.groups || []).map((g) =>
        `${g.group}: ${num(sum(g.lags))} (${(g.lags || []).join(" ")})`).join("; ") },
      { h: "Hot keys", v: (s) => (s.hot_keys || []).slice(0, 3).map((k) =>
        `${k.key} ${fmt(k.rate_per_s, "/s")}`).join(", ") },
    ], ss || [], name, "no streams");
  }

  // -- dead letters ------------------------------------------------------------------------------
  async function refreshDlq() {
    const qs = await api("dlq");
    syncTable($("dlq-table"), [
      { h: "Dead-letter queue", v: (q) => q.queue },
      { h: "Letters", num: true, v: (q) => num(q.total ?? q.depth) },
      { h: "Oldest", num: true, v: (q) => fmt(q.oldest_age_s, "s") },
      { h: "Actions", node: (q) => fragment(
        button("Show", () => openLetters(q.queue), { aria: `Show the letters of ${q.queue}` }),
        button("Redrive all", () => redrive(q.queue, null), {
          cls: "act", aria: `Redrive every letter of ${q.queue}`,
          disabled: !(q.total ?? q.depth) })),
      sig: (q) => [q.queue, !!(q.total ?? q.depth)] },
    ], qs || [], (q) => q.queue, "no dead-letter queues");
    if (state.dlq) await refreshLetters();
  }

  async function openLetters(queue) {
    state.dlq = queue;
    $("letters").hidden = false;
    $("letters-title").textContent = `Letters in ${queue}`;
    await refreshLetters();
  }

  const LETTER_COLS = [
    { h: "Id", v: (l) => l.id },
    { h: "Reason", v: (l) => l.reason },
    { h: "Error", v: (l) => l.error, title: (l) => l.error },
    { h: "Attempts", num: true, v: (l) => l.attempts },
    { h: "Dead-lettered", v: (l) => (l.dead_lettered_at ? ago(since(l.dead_lettered_at)) : null) },
    { h: "From", v: (l) => l.source_queue },
    { h: "Payload", node: (l) => payload(l.payload), sig: (l) => [l.id, l.payload] },
    { h: "Action", node: (l) => button("Redrive", () => redrive(state.dlq, [l.id]), {
      cls: "act", aria: `Redrive letter ${l.id}`, disabled: l.id == null }), sig: (l) => [l.id] },
  ];

  async function refreshLetters() {
    const queue = state.dlq;
    let got;
    try {
      got = await api(`dlq/${enc(queue)}?limit=50`);
    } catch (err) {
      if (err.status === 404) { closeLetters(); return; }
      throw err;
    }
    if (state.dlq !== queue) return;
    const letters = got.letters || [];
    $("letters-title").textContent = `Letters in ${queue}: ${num(got.total ?? letters.length)}` +
      (got.total > letters.length ? ` (the first ${letters.length} shown)` : "");
    letters.forEach((l, i) => { l.key = l.id ?? `#${i}`; });
    syncTable($("letters-table"), LETTER_COLS, letters, (l) => l.key, "no letters: the queue is empty");
    $("redrive-all").disabled = !letters.length;
  }

  function payload(p) {
    const text = typeof p === "string" ? p : JSON.stringify(p, null, 2);
    const det = document.createElement("details");
    const sum = document.createElement("summary");
    const short = (typeof p === "string" ? p : JSON.stringify(p)) || "";
    sum.textContent = short.length > 48 ? `${short.slice(0, 47)}…` : short || "(empty)";
    const pre = document.createElement("pre");
    pre.textContent = text;
    det.append(sum, pre);
    return det;
  }

  function closeLetters() {
    state.dlq = null;
    $("letters").hidden = true;
  }

  async function redrive(queue, ids) {
    const what = ids ? `redrive letter ${ids.join(", ")}` : `redrive every letter of ${queue}`;
    const out = await act(`dlq/${enc(queue)}/redrive`, ids ? { ids } : {}, what);
    if (out) {
      $("note").textContent = `${out.moved ?? 0} letter(s) moved back to their queue`;
      await refreshDlq();
    }
  }

  // -- sagas -------------------------------------------------------------------------------------
  const sagaRef = (s) => s.ref || `${s.saga}/${s.id}`;
  const sagaStep = (s) => s.step ?? s.current ?? null;

  async function refreshSagas() {
    const st = $("saga-state").value;
    const rows = await api(`sagas${st ? `?state=${enc(st)}` : ""}`);
    syncTable($("sagas-table"), [
      { h: "Saga", v: (s) => sagaRef(s) },
      { h: "State", node: (s) => badge(s.state), sig: (s) => [s.state] },
      { h: "Step", v: sagaStep },
      { h: "Updated", v: (s) => (s.updated ? ago(since(s.updated)) : null) },
      { h: "Open", node: (s) => button("Open", () => openSaga(sagaRef(s)), {
        aria: `Open saga ${sagaRef(s)}` }), sig: (s) => [sagaRef(s)] },
    ], (rows || []).slice(0, 200), sagaRef, st ? `no sagas ${st}` : "no sagas");
    if (state.saga) await refreshSaga();
  }

  async function openSaga(ref) {
    state.saga = ref;
    $("saga").hidden = false;
    await refreshSaga();
  }

  const SAGA_ALLOWS = {
    running: ["pause", "resume", "abort"],
    compensating: ["pause", "resume", "abort"],
    paused: ["resume", "retry", "skip", "abort"],
    needs_attention: ["retry", "skip", "abort"],
    completed: [],
    compensated: [],
  };

  async function refreshSaga() {
    const ref = state.saga;
    let lg;
    try {
      lg = await api(`sagas/${enc(ref)}`);
    } catch (err) {
      if (err.status === 404) { closeSaga(); return; }
      throw err;
    }
    if (state.saga !== ref) return;
    $("saga").dataset.ref = ref;
    $("saga").dataset.state = lg.state;
    $("saga-title").textContent = `Saga ${ref}`;
    $("saga-state-badge").className = `badge ${lg.state}`;
    $("saga-state-badge").textContent = lg.state;
    const allowed = SAGA_ALLOWS[lg.state] || ["pause", "resume", "retry", "skip", "abort"];
    for (const b of document.querySelectorAll("[data-saga-action]")) {
      b.disabled = !allowed.includes(b.dataset.sagaAction);
    }
    const steps = lg.steps || [];
    const stepSel = $("saga-step");
    const names = steps.map((s) => s.name);
    if ([...stepSel.options].map((o) => o.value).join("\n") !== ["", ...names].join("\n")) {
      stepSel.replaceChildren(new Option("(where it stands)", ""), ...names.map((n) => new Option(n, n)));
    }
    syncTable($("saga-steps"), [
      { h: "Step", v: (s) => s.name },
      { h: "State", node: (s) => badge(s.state), sig: (s) => [s.state] },
      { h: "Runs", num: true, v: (s) => s.runs },
      { h: "Failures", num: true, v: (s) => s.failures },
      { h: "Lost", num: true, v: (s) => s.lost },
      { h: "Error", v: (s) => s.error || s.comp_error, title: (s) => s.error || s.comp_error },
      { h: "Result", v: (s) => (s.has_result || s.result != null ? JSON.stringify(s.result) : null) },
    ], steps, (s) => s.name, "no steps");
    const log = (lg.history || []).slice().reverse();
    syncTable($("saga-log"), [
      { h: "At", v: (e) => clock(e.at) },
      { h: "Who", v: (e) => e.actor },
      { h: "What", v: (e) => e.event },
      { h: "Step", v: (e) => e.step },
      { h: "State", v: (e) => e.state },
      { h: "Why", v: (e) => e.reason },
    ], log, (e) => `${e.at}|${e.actor}|${e.event}|${e.step || ""}`, "nothing logged");
  }

  function closeSaga() {
    state.saga = null;
    $("saga").hidden = true;
  }

  async function sagaAction(verb) {
    const ref = state.saga;
    if (!ref) return;
    const body = { by: operator() };
    const reason = $("saga-reason").value.trim();
    if (reason) body.reason = reason;
    if (verb === "skip" && $("saga-step").value) body.step = $("saga-step").value;
    const out = await act(`sagas/${enc(ref)}/${verb}`, body, `${verb} saga ${ref}`);
    if (out) {
      $("note").textContent = `saga ${ref}: ${verb} recorded${out.state ? ` (now ${out.state})` : ""}`;
      $("saga-reason").value = "";
      await refreshSagas();
    }
  }

  // -- polling: two loops, each never running twice at once (a call while it runs: once more after) --
  function loop(step, everyMs) {
    let timer = null;
    let running = false;
    let again = false;
    const run = async () => {
      clearTimeout(timer);
      if (running) { again = true; return; }
      running = true;
      try { await step(); } finally { running = false; }
      if (again) { again = false; run(); return; }
      timer = setTimeout(run, document.hidden ? HIDDEN_MS : everyMs);
    };
    return run;
  }

  function setLive(ok, why) {
    const live = $("live");
    const text = ok ? "live" : `disconnected: ${why} (retrying)`;
    if (live.dataset.text !== text) {
      live.dataset.text = text;
      live.dataset.ok = String(ok);
      live.replaceChildren(text);
    }
    if (ok) live.title = `updated ${clock(serverNow())}`;
  }

  const poll = loop(async () => {
    try {
      await refreshOverview();
      await refreshHistory();
      setLive(true);
    } catch (err) {
      setLive(false, err.message);
    }
    renderCharts();
  }, FAST_MS);

  // The tables below the charts are read only while they are on screen: a queue's stats can
  // count a long table on some brokers, and nobody reads a table scrolled out of sight. One that
  // comes into sight is read at once.
  const SLOW = { queues: refreshQueues, streams: refreshStreams, dlq: refreshDlq, sagas: refreshSagas };
  const onScreen = new Set();

  const pollSlow = loop(async () => {
    const due = Object.keys(SLOW).filter((id) => onScreen.has(id));
    const results = await Promise.allSettled(due.map((id) => SLOW[id]()));
    const failed = results.find((r) => r.status === "rejected");
    if (failed) setLive(false, failed.reason.message);
  }, SLOW_MS);

  function watchSections() {
    const seen = new IntersectionObserver((entries) => {
      let appeared = false;
      for (const e of entries) {
        if (e.isIntersecting) {
          appeared = appeared || !onScreen.has(e.target.id);
          onScreen.add(e.target.id);
        } else {
          onScreen.delete(e.target.id);
        }
      }
      if (appeared) pollSlow();
    });
    for (const id of Object.keys(SLOW)) seen.observe($(id));
  }

  // -- the token and the controls ----------------------------------------------------------------
  function showTokenState() {
    $("token-state").textContent = token() ? "token set for this tab" :
      "no token: actions ask for one";
    $("token-input").value = "";
    $("token-input").placeholder = token() ? "•••••••• (set)" : "printed by swell run at start";
  }

  function wire() {
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = $("token-input").value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      sessionStorage.setItem(OPERATOR_KEY, $("operator-input").value.trim());
      showTokenState();
      if (value) clearAlert();
    });
    $("operator-input").value = sessionStorage.getItem(OPERATOR_KEY) || "";
    $("operator-input").addEventListener("change", () => {
      sessionStorage.setItem(OPERATOR_KEY, $("operator-input").value.trim());
    });
    $("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showTokenState();
    });
    $("alert-close").addEventListener("click", clearAlert);
    $("fn-select").addEventListener("change", (ev) => {
      selectFunction(ev.target.value);
      poll();
    });
    for (const r of document.querySelectorAll('input[name="range"]')) {
      r.addEventListener("change", () => { state.range = Number(r.value); renderCharts(); });
    }
    $("letters-close").addEventListener("click", closeLetters);
    $("redrive-all").addEventListener("click", () => state.dlq && redrive(state.dlq, null));
    $("saga-close").addEventListener("click", closeSaga);
    $("saga-state").addEventListener("change", () => pollSlow());
    for (const b of document.querySelectorAll("[data-saga-action]")) {
      b.addEventListener("click", () => sagaAction(b.dataset.sagaAction));
    }
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) { poll(); pollSlow(); }
    });
    let resized = null;
    window.addEventListener("resize", () => {
      clearTimeout(resized);
      resized = setTimeout(renderCharts, 100);
    });
    const m = /^#fn=(.+)$/.exec(location.hash);
    if (m) state.fn = decodeURIComponent(m[1]);
    showTokenState();
  }

  wire();
  ensureCharts();
  watchSections();
  poll();
})();
