// The pricing console. Everything it shows comes from the public API
// (/v2/recommendation, /v2/products, /v2/products/{code}/history,
// /v2/release): no price is computed here. Charts are drawn as SVG by hand.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const PARAMS = ["objective", "basis", "unit_cost", "min_margin", "current_price", "max_change",
  "unitprice_min", "unitprice_max", "num_price_bins", "price_ending"];

function fmt(x, d = 2) {
  return x === null || x === undefined || !isFinite(x) ? "–" : Number(x).toFixed(d);
}
function pct(x) { return x === null || x === undefined || !isFinite(x) ? "–" : (x * 100).toFixed(1) + "%"; }
function money(x) { return x === null || x === undefined || !isFinite(x) ? "–" : "£" + Number(x).toFixed(2); }
function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]); }

async function api(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  if (r.status === 401) { location.href = "/login"; throw new Error("an API key is required"); }
  const body = await r.json().catch(() => ({ error: "the answer was not JSON", status: r.status }));
  if (!r.ok) { const e = new Error(body.error || ("HTTP " + r.status)); e.body = body; throw e; }
  return body;
}

function status(msg) { $("status").textContent = msg || ""; }

// ---------- charts ----------

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function ticks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toFixed(10));
  return out;
}

// A line chart with an optional band and vertical markers. series:
// [{ys, label, dash, band: [lo, hi]}]; markers: [{x, label, dash}].
function chart(box, { xs, series, markers = [], xLabel, yLabel, title, desc, xFormat = (v) => fmt(v), bars }) {
  const W = 720, H = 300, m = { l: 58, r: 16, t: 14, b: 42 };
  box.textContent = "";
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": box.id + "-t " + box.id + "-d" }, box);
  el("title", { id: box.id + "-t" }, svg).textContent = title;
  el("desc", { id: box.id + "-d" }, svg).textContent = desc;
  const all = [];
  for (const s of series) { all.push(...s.ys); if (s.band) all.push(...s.band[0], ...s.band[1]); }
  if (bars) all.push(...bars.ys);
  const finite = all.filter((v) => isFinite(v));
  const yMax = Math.max(...finite, 0) * 1.05 || 1, yMin = Math.min(0, ...finite);
  const xMin = Math.min(...xs), xMax = Math.max(...xs) > xMin ? Math.max(...xs) : xMin + 1;
  const X = (v) => m.l + ((v - xMin) / (xMax - xMin)) * (W - m.l - m.r);
  const Y = (v) => H - m.b - ((v - yMin) / (yMax - yMin)) * (H - m.t - m.b);
  const axis = el("g", {}, svg);
  for (const t of ticks(yMin, yMax, 5)) {
    el("line", { x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t), stroke: "#e3e3e3" }, axis);
    el("text", { x: m.l - 6, y: Y(t) + 4, "text-anchor": "end" }, axis).textContent = fmt(t, t >= 100 ? 0 : 1);
  }
  const xt = bars ? xs.filter((_, i) => i % Math.max(1, Math.ceil(xs.length / 7)) === 0) : ticks(xMin, xMax, 7);
  for (const t of xt) {
    el("line", { x1: X(t), x2: X(t), y1: H - m.b, y2: H - m.b + 4, stroke: "#333" }, axis);
    el("text", { x: X(t), y: H - m.b + 16, "text-anchor": "middle" }, axis).textContent = xFormat(t);
  }
  el("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, stroke: "#333" }, axis);
  el("line", { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, stroke: "#333" }, axis);
  el("text", { x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle" }, axis).textContent = xLabel;
  el("text", { x: 12, y: (m.t + H - m.b) / 2, transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})`, "text-anchor": "middle" }, axis).textContent = yLabel;
  if (bars) {
    const w = Math.max(1, (W - m.l - m.r) / xs.length * 0.7);
    const g = el("g", { "data-series": bars.label, fill: "#c9c9c9", stroke: "#777" }, svg);
    xs.forEach((x, i) => el("rect", { x: X(x) - w / 2, y: Y(bars.ys[i]), width: w, height: Math.max(0, Y(yMin) - Y(bars.ys[i])) }, g));
  }
  for (const s of series) {
    if (s.band) {
      const [lo, hi] = s.band;
      const pts = xs.map((x, i) => `${X(x)},${Y(hi[i])}`).concat(xs.map((x, i) => `${X(x)},${Y(lo[i])}`).reverse());
      el("polygon", { points: pts.join(" "), fill: `url(#${box.id}-hatch)`, stroke: "#889", "stroke-dasharray": "2 2", "data-band": s.label }, svg);
    }
    const d = xs.map((x, i) => `${i ? "L" : "M"}${X(x).toFixed(1)},${Y(s.ys[i]).toFixed(1)}`).join("");
    el("path", { d, fill: "none", stroke: "#1b1b1b", "stroke-width": 2.2, "stroke-dasharray": s.dash || "", "data-series": s.label }, svg);
  }
  const defs = el("defs", {}, svg);
  const pat = el("pattern", { id: box.id + "-hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" }, defs);
  el("rect", { width: 6, height: 6, fill: "#eef2f6" }, pat);
  el("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#a9b6c4", "stroke-width": 1.5 }, pat);
  markers.forEach((mk, i) => {
    if (!isFinite(mk.x)) return;
    const x = X(Math.min(Math.max(mk.x, xMin), xMax));
    el("line", { x1: x, x2: x, y1: m.t, y2: H - m.b, stroke: "#000", "stroke-width": 1.5, "stroke-dasharray": mk.dash || "" , "data-marker": mk.label }, svg);
    const tx = el("text", { x: x + 4, y: m.t + 30 + i * 14, "font-weight": 700 }, svg);
    tx.textContent = mk.label;
    if (x > W - 160) { tx.setAttribute("x", x - 4); tx.setAttribute("text-anchor", "end"); }
  });
  // Legend: patterns and words, no colour needed.
  let lx = m.l + 8;
  for (const s of series) {
    el("line", { x1: lx, x2: lx + 22, y1: m.t + 4, y2: m.t + 4, stroke: "#1b1b1b", "stroke-width": 2.2, "stroke-dasharray": s.dash || "" }, svg);
    el("text", { x: lx + 26, y: m.t + 8 }, svg).textContent = s.label + (s.band ? " (hatched: 80% band)" : "");
    lx += 40 + (s.label.length + (s.band ? 20 : 0)) * 6;
  }
}

// ---------- product view ----------

let current = { code: null, query: new URLSearchParams() };

function requestQuery() {
  const q = new URLSearchParams();
  for (const name of PARAMS) {
    const v = $(name).value.trim();
    if (v !== "" && !(name === "objective" && v === "revenue")) q.set(name, v);
  }
  return q;
}

function setControls(q) {
  for (const name of PARAMS) $(name).value = q.get(name) || (name === "objective" ? "revenue" : "");
}

async function showProduct(code, q) {
  $("ranking-view").hidden = true;
  $("product-view").hidden = false;
  current = { code, query: q };
  setControls(q);
  const qs = q.toString() ? "?" + q.toString() : "";
  const v2 = `/v2/recommendation/${encodeURIComponent(code)}${qs}`;
  const v1 = `/v1/predict-price/${encodeURIComponent(code)}${qs}`;
  $("url-v2").value = location.origin + v2;
  $("url-v1").value = location.origin + v1;
  status("Loading " + code + "…");
  let rec;
  try {
    rec = await api(v2);
  } catch (e) {
    status("Could not price " + code + ": " + e.message);
    $("product-view").dataset.state = "error";
    return;
  }
  status("");
  renderRecommendation(rec);
  performance.mark("product-rendered");
  $("product-view").dataset.state = "ready";
  api(`/v2/products/${encodeURIComponent(code)}/history`).then(renderHistory).catch((e) => {
    $("history-chart").textContent = "No sales history: " + e.message;
  });
}

function renderRecommendation(r) {
  const weekly = r.basis === "week";
  $("product-title").textContent = `${r.stockcode} — ${r.description}`;
  const obj = r.objective;
  const rows = [
    ["Current price", money(r.current_price) + (r.current_price_source ? ` (${r.current_price_source})` : ""), "current-price", r.current_price],
    ["Recommended price", money(r.optimal_unit_price), "recommended-price", r.optimal_unit_price],
    [`Expected uplift (${obj}, ${weekly ? "per week" : "per line"})`,
      `${fmt(r.uplift.absolute.value)} [${fmt(r.uplift.absolute.lo)}, ${fmt(r.uplift.absolute.hi)}]`, "uplift", r.uplift.absolute.value],
    ["Uplift vs current", `${pct(r.uplift.relative.value)} [${pct(r.uplift.relative.lo)}, ${pct(r.uplift.relative.hi)}]`, "uplift-relative", r.uplift.relative.value],
    ["Elasticity at recommended", `${fmt(r.elasticity.recommended.value)} [${fmt(r.elasticity.recommended.lo)}, ${fmt(r.elasticity.recommended.hi)}]`, "elasticity", r.elasticity.recommended.value],
    ["Unit cost", r.unit_cost == null ? "none" : money(r.unit_cost) + (r.unit_cost_source ? ` (${r.unit_cost_source})` : ""), "unit-cost", r.unit_cost],
    ["Model", `${r.model} (${r.model_version})`, "model", null],
    ["Release", `${r.release} · cache ${r.cache}`, "release", null],
  ];
  $("summary").innerHTML = rows.map(([k, v, id, raw]) =>
    `<div><dt>${esc(k)}</dt><dd id="${id}"${raw == null ? "" : ` data-value="${raw}"`}>${esc(v)}</dd></div>`).join("");
  const flags = [];
  if (r.active_bound) flags.push(`Active bound: ${r.active_bound}`);
  if (r.at_grid_edge) flags.push(`Optimum at the grid's ${r.at_grid_edge} edge: the data cannot say what happens beyond it`);
  if (r.failovers && r.failovers.length) flags.push(`Failed over from ${r.failovers.map((f) => f.model).join(", ")}`);
  $("flags").innerHTML = flags.map((f) => `<span class="flag">${esc(f)}</span>`).join("") +
    (r.notes || []).map((n) => `<br><span class="muted">${esc(n)}</span>`).join("");
  const c = r.curve, xs = c.map((p) => p.unit_price);
  const q = weekly ? c.map((p) => p.weekly_units) : c.map((p) => p.quantity);
  const lo = weekly ? c.map((p) => p.weekly_units_lo) : c.map((p) => p.quantity_min);
  const hi = weekly ? c.map((p) => p.weekly_units_hi) : c.map((p) => p.quantity_max);
  const markers = [
    { x: r.current_price, label: "current " + fmt(r.current_price), dash: "5 4" },
    { x: r.optimal_unit_price, label: "recommended " + fmt(r.optimal_unit_price) },
  ];
  $("demand-caption").textContent = weekly ? "Demand: expected units per week" : "Demand: expected units per order line";
  chart($("demand-chart"), {
    xs, series: [{ ys: q, label: weekly ? "units / week" : "units / line", band: [lo, hi] }], markers,
    xLabel: "unit price", yLabel: weekly ? "units per week" : "units per line",
    title: "Predicted demand against price",
    desc: `Predicted quantity falls from ${fmt(q[0])} at ${fmt(xs[0])} to ${fmt(q[q.length - 1])} at ${fmt(xs[xs.length - 1])}.`,
  });
  // The objective's band is the quantity band times the margin per unit.
  const margin = (p) => (obj === "profit" && r.unit_cost != null ? p - r.unit_cost : p);
  $("objective-caption").textContent = `${obj === "profit" ? "Profit" : "Revenue"} ${weekly ? "per week" : "per order line"}`;
  chart($("objective-chart"), {
    xs, series: [{ ys: c.map((p) => p.objective_value), label: obj, band: [xs.map((p, i) => margin(p) * lo[i]), xs.map((p, i) => margin(p) * hi[i])] }],
    markers, xLabel: "unit price", yLabel: obj,
    title: `Expected ${obj} against price`,
    desc: `Maximum ${fmt(r.max_predicted_sales)} at ${fmt(r.optimal_unit_price)}; current price ${fmt(r.current_price)}.`,
  });
  $("curve-table").innerHTML = "<caption>Every grid price</caption><tr><th scope=col>price</th><th scope=col>units/line</th><th scope=col>units/week [band]</th><th scope=col>revenue/week</th><th scope=col>objective</th><th scope=col>feasible</th></tr>" +
    c.map((p) => `<tr><td>${fmt(p.unit_price)}</td><td>${fmt(p.quantity)}</td><td>${fmt(p.weekly_units)} [${fmt(p.weekly_units_lo)}, ${fmt(p.weekly_units_hi)}]</td><td>${fmt(p.weekly_revenue)}</td><td>${fmt(p.objective_value)}</td><td>${p.feasible ? "yes" : "no"}${p.extrapolated ? " (beyond data)" : ""}</td></tr>`).join("");
}

function renderHistory(h) {
  const w = h.weeks;
  if (!w.length) { $("history-chart").textContent = "No weeks with sales."; return; }
  const xs = w.map((x) => x.week_start_ms);
  const maxUnits = Math.max(...w.map((x) => x.units)) || 1;
  const maxPrice = Math.max(...w.map((x) => x.list_price)) || 1;
  // Units are drawn as bars scaled to the price axis; the labels say so.
  const scale = maxPrice / maxUnits;
  chart($("history-chart"), {
    xs,
    bars: { ys: w.map((x) => x.units * scale), label: "units" },
    series: [
      { ys: w.map((x) => x.list_price), label: "list price" },
      { ys: w.map((x) => x.avg_price), label: "avg paid", dash: "4 3" },
    ],
    xLabel: `week (bars: units, tallest = ${fmt(maxUnits, 0)})`, yLabel: "price",
    xFormat: (t) => new Date(t).toISOString().slice(0, 10),
    title: "Weekly sales history",
    desc: `${w.length} weeks with sales from ${w[0].week_start} to ${w[w.length - 1].week_start}; list price from ${fmt(Math.min(...w.map((x) => x.list_price)))} to ${fmt(maxPrice)}.`,
  });
}

// ---------- ranking ----------

const COLUMNS = [
  ["stockcode", "Code", (r) => esc(r.stockcode)],
  ["description", "Description", (r) => `<a href="#/product/${encodeURIComponent(r.stockcode)}">${esc(r.description)}</a>`],
  ["current_price", "Current", (r) => fmt(r.current_price)],
  ["recommended_price", "Recommended", (r) => fmt(r.recommended_price)],
  ["uplift", "Uplift [80% band]", (r) => r.uplift ? `${fmt(r.uplift.value)} [${fmt(r.uplift.lo)}, ${fmt(r.uplift.hi)}]` : esc(r.error || "–")],
  ["uplift_relative", "Uplift %", (r) => r.uplift_relative ? pct(r.uplift_relative.value) : "–"],
  [null, "Bound", (r) => esc(r.at_grid_edge ? "edge: " + r.at_grid_edge : (r.active_bound || ""))],
  ["lines", "Lines", (r) => fmt(r.lines, 0)],
];

async function showRanking(q) {
  $("product-view").hidden = true;
  $("ranking-view").hidden = false;
  $("rq").value = q.get("q") || "";
  $("redge").value = q.get("edge") || "";
  $("rmin").value = q.get("min_lines") || "";
  $("rper").value = q.get("per_page") || "50";
  const csv = new URLSearchParams(q); csv.delete("page"); csv.delete("per_page");
  $("csv-link").href = "/v2/products.csv" + (csv.toString() ? "?" + csv : "");
  status("Loading the ranking…");
  let page;
  try { page = await api("/v2/products?" + q.toString()); } catch (e) { status("Could not load the ranking: " + e.message); return; }
  status("");
  $("ranking-basis").textContent = `Release ${page.release}: ${page.basis}. ${page.total} products.`;
  const sort = page.sort, order = page.order;
  $("ranking-table").innerHTML = "<caption class=muted>Select a column heading to sort</caption><tr>" + COLUMNS.map(([key, label]) => {
    if (!key) return `<th scope=col>${label}</th>`;
    const aria = key === sort ? ` aria-sort="${order === "asc" ? "ascending" : "descending"}"` : "";
    const mark = key === sort ? (order === "asc" ? " ▲" : " ▼") : "";
    return `<th scope=col${aria}><button type=button data-sort="${key}">${label}${mark}</button></th>`;
  }).join("") + "</tr>" + page.products.map((r) => `<tr data-code="${esc(r.stockcode)}">` + COLUMNS.map(([, , f]) => `<td>${f(r)}</td>`).join("") + "</tr>").join("");
  $("ranking-table").dataset.total = page.total;
  $("page-info").textContent = `page ${page.page} of ${page.pages}`;
  $("prev").disabled = page.page <= 1;
  $("next").disabled = page.page >= page.pages;
  $("ranking-view").dataset.state = "ready";
  performance.mark("ranking-rendered");
}

function rankingQuery() {
  const [, qs] = location.hash.split("?");
  return new URLSearchParams(qs || "");
}

// ---------- search ----------

async function search(text) {
  const list = $("search-results");
  if (!text.trim()) { list.hidden = true; return; }
  let page;
  try { page = await api("/v2/products?" + new URLSearchParams({ q: text, sort: "lines", per_page: "20" })); } catch (e) { status(e.message); return; }
  list.innerHTML = page.products.length
    ? page.products.map((p) => `<li><a href="#/product/${encodeURIComponent(p.stockcode)}">${esc(p.stockcode)} — ${esc(p.description)}</a></li>`).join("")
    : `<li>No product matches “${esc(text)}”.</li>`;
  list.hidden = false;
}

// ---------- routing ----------

function route() {
  $("search-results").hidden = true;
  const [path, qs] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "product" && parts[1]) return showProduct(decodeURIComponent(parts[1]), new URLSearchParams(qs || ""));
  return showRanking(new URLSearchParams(qs || ""));
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search($("search").value); });
  $("controls").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = requestQuery();
    location.hash = `#/product/${encodeURIComponent(current.code)}` + (q.toString() ? "?" + q : "");
  });
  $("reset").addEventListener("click", () => { location.hash = `#/product/${encodeURIComponent(current.code)}`; });
  $("ranking-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = rankingQuery();
    for (const [k, id] of [["q", "rq"], ["edge", "redge"], ["min_lines", "rmin"], ["per_page", "rper"]]) {
      const v = $(id).value; if (v) q.set(k, v); else q.delete(k);
    }
    q.delete("page");
    location.hash = "#/ranking?" + q;
  });
  $("ranking-table").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-sort]"); if (!b) return;
    const q = rankingQuery(), key = b.dataset.sort;
    const text = key === "stockcode" || key === "description";
    const cur = q.get("sort") || "uplift", order = q.get("order") || (text ? "asc" : "desc");
    q.set("sort", key);
    q.set("order", cur === key ? (order === "asc" ? "desc" : "asc") : (text ? "asc" : "desc"));
    q.delete("page");
    location.hash = "#/ranking?" + q;
  });
  for (const [id, d] of [["prev", -1], ["next", 1]]) $(id).addEventListener("click", () => {
    const q = rankingQuery(); q.set("page", String(Math.max(1, (+q.get("page") || 1) + d)));
    location.hash = "#/ranking?" + q;
  });
  document.querySelectorAll("button[data-copy]").forEach((b) => b.addEventListener("click", async () => {
    const input = $(b.dataset.copy);
    try { await navigator.clipboard.writeText(input.value); } catch (_) { input.select(); document.execCommand("copy"); }
    b.textContent = "Copied"; setTimeout(() => { b.textContent = "Copy"; }, 1500);
  }));
  api("/v2/release").then((r) => {
    $("release").textContent = `Release ${r.release} · ${r.model} · gate ${r.gate ? (r.gate.passed ? "passed" : r.gate.overridden ? "overridden" : "failed") : "report missing"}`;
    if (r.gate_report) $("gate-link").href = r.gate_report;
  }).catch(() => {});
  window.addEventListener("hashchange", route);
  route();
});
