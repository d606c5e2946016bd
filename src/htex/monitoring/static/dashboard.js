// The htex dashboard page: fetch api/state, draw it with Plotly, refetch when api/events says the store changed.
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
                 "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a"];
// Outcome is drawn as the bar's pattern, so the colour stays the function's.
const PATTERN = { done: "", running: ".", failed: "x", lost: "/", cancelled: "-", dispatched: ".", queued: "." };
const OUTCOME_COLOUR = { done: "#2e9d5b", failed: "#d64545", lost: "#b9770e", running: "#2f6fd6", queued: "#8a8f98" };
const PLOT_CONFIG = { displaylogo: false, responsive: true };
const KEEP = "htex";  // uirevision: live updates keep the user's zoom and legend choices

const params = new URLSearchParams(location.search);
let runId = params.get("run");
let source = null;
let fetching = false, again = false;
let latest = null;  // the store's fingerprint, as the last event said
let retry = null;
const funcColours = new Map();

function colourOf(func) {
  if (!funcColours.has(func)) funcColours.set(func, PALETTE[funcColours.size % PALETTE.length]);
  return funcColours.get(func);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

function secs(s) {
  if (s == null) return "–";
  if (s < 1e-3) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1e3).toFixed(1) + " ms";
  if (s < 120) return s.toFixed(2) + " s";
  return (s / 60).toFixed(1) + " min";
}

function mb(n) { return n == null ? "–" : (n >= 1024 ? (n / 1024).toFixed(1) + " GB" : n + " MB"); }

function layout(extra) {
  return Object.assign({
    uirevision: KEEP, margin: { l: 50, r: 10, t: 6, b: 36 }, font: { size: 11 },
    legend: { orientation: "h", y: -0.2 }, xaxis: { title: { text: "seconds into the run" }, zeroline: false },
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
  }, extra);
}

function drawCounts(counts) {
  for (const [k, v] of Object.entries(counts)) {
    const node = document.getElementById("count-" + k);
    if (node) node.textContent = String(v);
  }
  // "running" on the page counts what pools hold: dispatched and running.
  document.getElementById("count-running").textContent = String((counts.running || 0) + (counts.dispatched || 0));
}

function drawThroughput(tp) {
  const traces = [
    { x: tp.t, y: tp.queued, name: "queued", mode: "lines", line: { color: OUTCOME_COLOUR.queued } },
    { x: tp.t, y: tp.running, name: "running", mode: "lines", line: { color: OUTCOME_COLOUR.running } },
    { x: tp.t, y: tp.done_rate, name: "done /s", mode: "lines", yaxis: "y2", line: { color: OUTCOME_COLOUR.done, dash: "dot" } },
    { x: tp.t, y: tp.failed_rate, name: "failed+lost /s", mode: "lines", yaxis: "y2", line: { color: OUTCOME_COLOUR.failed, dash: "dot" } },
  ];
  Plotly.react("throughput", traces, layout({
    yaxis: { title: { text: "tasks" }, rangemode: "tozero" },
    yaxis2: { title: { text: "tasks / s" }, overlaying: "y", side: "right", rangemode: "tozero", showgrid: false },
    margin: { l: 50, r: 50, t: 6, b: 36 }, legend: { orientation: "h", y: 1.12 },
  }), PLOT_CONFIG);
}

function drawStream(stream) {
  const traces = stream.groups.map(g => ({
    type: "bar", orientation: "h", y: g.y, base: g.base, x: g.x, customdata: g.id,
    name: g.outcome === "done" ? g.func : `${g.func} (${g.outcome})`, legendgroup: g.func,
    marker: { color: colourOf(g.func), line: { width: g.outcome === "done" ? 0 : 1, color: OUTCOME_COLOUR[g.outcome] || "#333" },
              pattern: { shape: PATTERN[g.outcome] || "", bgcolor: colourOf(g.func), fgcolor: "rgba(255,255,255,0.9)",
                         fillmode: "overlay", size: 6, solidity: 0.35 } },
    hovertemplate: `task %{customdata}<br>${g.func}: ${g.outcome}<br>start %{base:.3f} s, took %{x:.3f} s<extra>%{y}</extra>`,
  }));
  const height = Math.max(220, 70 + 18 * stream.rows.length);
  document.getElementById("stream").style.height = Math.min(height, 700) + "px";
  Plotly.react("stream", traces, layout({
    barmode: "overlay", bargap: 0.15, showlegend: true,
    legend: { orientation: "v", x: 1.01, y: 1, xanchor: "left", yanchor: "top", tracegroupgap: 4 },
    yaxis: { type: "category", categoryorder: "array", categoryarray: stream.rows, automargin: true },
    margin: { l: 10, r: 10, t: 30, b: 36 },  // room above the legend for the zoom buttons
  }), PLOT_CONFIG);
  document.getElementById("stream-note").textContent = stream.shown < stream.total
    ? `latest ${stream.shown} of ${stream.total} tasks; drag to zoom, double-click to reset`
    : `${stream.total} tasks on ${stream.rows.length} workers; drag to zoom, double-click to reset`;
}

function drawPerPool(id, series, key, title, rangemode) {
  const traces = Object.entries(series).map(([pool, s]) => ({ x: s.t, y: s[key], name: pool, mode: "lines" }));
  Plotly.react(id, traces, layout({
    yaxis: { title: { text: title }, rangemode: rangemode }, showlegend: traces.length > 1,
    xaxis: { title: { text: "" }, ticksuffix: " s", zeroline: false }, legend: { orientation: "h", y: -0.12 },
    margin: { l: 50, r: 10, t: 6, b: 20 },
  }), PLOT_CONFIG);
}

function fill(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  const cols = document.querySelectorAll(`#${tableId} thead th`).length;
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: cols, class: "empty" }, "none yet"))]));
}

function drawFunctions(functions) {
  fill("functions", functions.map(f => el("tr", { "data-func": f.func },
    el("td", {}, el("span", { class: "swatch", style: `background:${colourOf(f.func)}` }), f.func),
    el("td", { class: "num" }, f.count), el("td", { class: "num" }, f.done), el("td", { class: "num" }, f.failed),
    el("td", { class: "num" }, f.lost), el("td", { class: "num" }, f.cancelled),
    el("td", { class: "num" }, secs(f.mean)), el("td", { class: "num" }, secs(f.p95)))));
}

function state(s) { return el("span", { class: "state " + s }, s); }

function drawPools(pools) {
  fill("pools", pools.map(p => el("tr", { "data-pool": p.pool_id },
    el("td", {}, p.pool_id), el("td", {}, p.host), el("td", {}, p.block_id),
    el("td", { class: "num" }, p.workers), el("td", { class: "num" }, p.cores), el("td", { class: "num" }, mb(p.memory_mb)),
    el("td", {}, state(p.state), p.reason ? " " + p.reason : ""),
    el("td", { class: "num" }, p.registered == null ? "–" : secs(p.registered)))));
}

function drawBlocks(blocks) {
  fill("blocks", blocks.map(b => el("tr", { "data-block": b.block_id },
    el("td", {}, b.block_id), el("td", {}, b.job_id || "–"), el("td", {}, b.provider || ""),
    el("td", {}, state(b.state), b.reason ? " " + b.reason : ""),
    el("td", { class: "history" }, b.history.map(h => `${h.state} @${h.time.toFixed(1)}s`).join(" → ")))));
}

function drawFailures(failures) {
  const box = document.getElementById("failures");
  document.getElementById("failures-note").textContent = failures.total > failures.rows.length
    ? `latest ${failures.rows.length} of ${failures.total}` : `${failures.total}`;
  if (!failures.rows.length) { box.replaceChildren(el("p", { class: "empty" }, "none")); return; }
  const open = new Set([...box.querySelectorAll("details[open]")].map(d => d.dataset.task));
  box.replaceChildren(...failures.rows.map(f => {
    const d = el("details", { class: "failure", "data-task": f.task_id },
      el("summary", {}, `task ${f.task_id} `, el("b", {}, f.func || "?"), " ", state(f.outcome), " ",
         el("span", { class: "exc" }, f.exc_type || ""), f.exc_message ? ": " + f.exc_message : "",
         el("span", { class: "muted" }, `  on ${f.pool_id || "?"} / w${f.worker ?? "?"} at ${f.ended == null ? "?" : f.ended.toFixed(2) + " s"}`)),
      el("pre", { class: "tb" }, f.traceback || "(no traceback: " + (f.outcome === "lost" ? "the worker went away)" : "none was sent)")));
    if (open.has(String(f.task_id))) d.open = true;
    return d;
  }));
}

function drawRuns(runs, current) {
  const select = document.getElementById("run-select");
  select.hidden = runs.length < 2;
  select.replaceChildren(...runs.map(r => {
    const o = el("option", { value: r.run_id }, r.label ? `${r.label} (${r.run_id})` : r.run_id);
    o.selected = r.run_id === current;
    return o;
  }));
}

function draw(s) {
  document.getElementById("run-label").textContent = s.run.label ? `${s.run.label} · ${s.run.run_id}` : s.run.run_id;
  document.getElementById("span").textContent = `${secs(s.span)}${s.run.host ? " on " + s.run.host : ""}`;
  drawRuns(s.runs, s.run.run_id);
  drawCounts(s.counts);
  drawThroughput(s.throughput);
  drawStream(s.stream);
  drawPerPool("busy", s.busy, "busy", "% busy", "tozero");
  const mem = {};
  for (const [pool, r] of Object.entries(s.resources)) mem[pool] = r;
  drawPerPool("cpu", mem, "cpu", "CPU %", "tozero");
  drawPerPool("memory", mem, "rss_mb", "RSS (MB)", "tozero");
  drawFunctions(s.functions);
  drawPools(s.pools);
  drawBlocks(s.blocks);
  drawFailures(s.failures);
  const live = document.getElementById("live");
  if (s.finished) { live.textContent = "finished"; live.className = "badge finished"; }
  document.body.dataset.version = s.version;
}

async function refresh() {
  // One fetch at a time; a change seen meanwhile triggers one more afterwards.
  if (fetching) { again = true; return; }
  fetching = true;
  try {
    do {
      again = false;
      const r = await fetch("api/state" + (runId ? "?run=" + encodeURIComponent(runId) : ""), { cache: "no-store" });
      if (!r.ok) throw new Error(`api/state: HTTP ${r.status}`);
      const s = await r.json();
      if (s.empty) { document.getElementById("run-label").textContent = "no run in this store yet"; break; }
      if (!runId) {
        runId = s.run.run_id;
        if (source) listen();  // the stream followed "the latest run": pin it to this one
      }
      draw(s);
      // The server may hand a slightly older snapshot of a big run (it limits how often it makes one): ask again.
      if (latest !== null && s.version !== latest && !retry) {
        retry = setTimeout(() => { retry = null; refresh().catch(e => console.warn(e)); }, 1000);
      }
    } while (again);
  } finally {
    fetching = false;
  }
}

function listen() {
  if (source) source.close();
  source = new EventSource("api/events" + (runId ? "?run=" + encodeURIComponent(runId) : ""));
  const live = document.getElementById("live");
  source.onopen = () => { if (live.textContent !== "finished") { live.textContent = "live"; live.className = "badge live"; } };
  source.onmessage = ev => { latest = JSON.parse(ev.data); refresh().catch(e => console.warn(e)); };
  source.onerror = () => {
    if (live.textContent !== "finished") { live.textContent = "reconnecting…"; live.className = "badge down"; }
  };
}

document.getElementById("run-select").addEventListener("change", ev => {
  runId = ev.target.value;
  const q = new URLSearchParams(location.search);
  q.set("run", runId);
  history.replaceState(null, "", "?" + q.toString());
  refresh().then(listen).catch(e => console.warn(e));
});

refresh().then(listen).catch(e => console.warn(e));
