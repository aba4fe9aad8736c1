// The last hour of each node, as small SVG charts. Series come from the node's retained
// history message (<prefix>/nodes/<id>/history, sampled by the node every telemetry
// interval) and grow with the live health messages the page receives anyway.
//
// Everything here comes from the network: every figure is checked to be a finite number
// (or a known level) before it is drawn, series are capped, and nothing is ever parsed as
// markup (SVG elements are built one by one).
const SVG = "http://www.w3.org/2000/svg";
/** Points kept per node: the node's 120 samples plus live ones, cut to the last hour. */
export const MAX_POINTS = 240;
export const WINDOW_S = 3600;
const LEVELS = ["full", "reduced", "paused"];

const finite = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

/** An empty set of series. */
export function emptySeries() {
  return { t: [], cpu_temp_c: [], battery_percent: [], level: [], replication_bps: [], egress_bps: [], last: null };
}

/** Series from a history message, or null if it is not one. */
export function fromHistory(msg) {
  if (!msg || typeof msg !== "object" || !Array.isArray(msg.t)) return null;
  const n = Math.min(msg.t.length, MAX_POINTS);
  const start = msg.t.length - n;
  const col = (name, check) => {
    const a = Array.isArray(msg[name]) ? msg[name] : [];
    return Array.from({ length: n }, (_, i) => check(a[start + i]));
  };
  const s = emptySeries();
  s.t = col("t", finite);
  s.cpu_temp_c = col("cpu_temp_c", finite);
  s.battery_percent = col("battery_percent", finite);
  s.level = col("level", (v) => (LEVELS.includes(v) ? v : null));
  s.replication_bps = col("replication_bps", finite);
  s.egress_bps = col("egress_bps", finite);
  // Drop points without a usable time, keep time order.
  const keep = s.t.map((t, i) => [t, i]).filter(([t]) => t !== null).sort((a, b) => a[0] - b[0]).map(([, i]) => i);
  for (const k of Object.keys(s)) if (Array.isArray(s[k])) s[k] = keep.map((i) => s[k][i]);
  return s;
}

/** A node's new history message, plus the live samples newer than its last point. */
export function mergeHistory(old, fresh) {
  if (old && fresh.t.length) {
    const end = fresh.t[fresh.t.length - 1];
    old.t.forEach((t, i) => {
      if (t > end) for (const k of Object.keys(fresh)) if (Array.isArray(fresh[k])) fresh[k].push(old[k][i]);
    });
    fresh.last = old.last;
    trim(fresh);
  }
  return fresh;
}

/** Appends a sample taken from a live health message (rates from its counters against
 * the previous one), and cuts the series to the last hour. */
export function addHealth(s, h) {
  const t = finite(h && h.ts);
  if (t === null || (s.t.length && t <= s.t[s.t.length - 1])) return;
  const repl = h.replication && typeof h.replication === "object" ? h.replication : {};
  const dp = h.dataplane && typeof h.dataplane === "object" ? h.dataplane : {};
  const counters = {
    t,
    repl: finite(repl.pulled_bytes) !== null && finite(repl.served_bytes) !== null ? repl.pulled_bytes + repl.served_bytes : null,
    egress: finite(dp.egress_bytes),
  };
  const rate = (k) => {
    const p = s.last;
    if (!p || p[k] === null || counters[k] === null || counters[k] < p[k] || t <= p.t) return null;
    return (counters[k] - p[k]) / (t - p.t);
  };
  s.t.push(t);
  s.cpu_temp_c.push(finite(h.cpu_temp_c));
  s.battery_percent.push(finite(h.battery_percent));
  s.level.push(LEVELS.includes(h.level) ? h.level : null);
  s.replication_bps.push(rate("repl"));
  s.egress_bps.push(rate("egress"));
  s.last = counters;
  trim(s);
}

function trim(s) {
  const newest = s.t[s.t.length - 1];
  let drop = 0;
  while (drop < s.t.length && (s.t.length - drop > MAX_POINTS || s.t[drop] < newest - WINDOW_S)) drop++;
  if (drop) for (const k of Object.keys(s)) if (Array.isArray(s[k])) s[k].splice(0, drop);
}

function el(name, attrs = {}) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

const W = 200, H = 44;

/** One small line chart: the series against time, with its latest value and range as
 * text. Gaps (unknown figures) break the line. */
export function lineChart(title, t, values, format) {
  const fig = document.createElement("figure");
  fig.className = "chart";
  const cap = document.createElement("figcaption");
  const known = values.filter((v) => v !== null);
  const last = known.length ? known[known.length - 1] : null;
  cap.textContent = `${title}: ${last === null ? "-" : format(last)}`;
  if (known.length) cap.title = `min ${format(Math.min(...known))}, max ${format(Math.max(...known))}`;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": title });
  svg.append(el("rect", { x: 0, y: 0, width: W, height: H, fill: "#f3f5f8" }));
  if (known.length && t.length) {
    const t1 = t[t.length - 1], t0 = Math.min(t[0], t1 - 60);
    let lo = Math.min(...known), hi = Math.max(...known);
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    const x = (ti) => ((ti - t0) / (t1 - t0)) * (W - 4) + 2;
    const y = (v) => H - 3 - ((v - lo) / (hi - lo)) * (H - 6);
    let run = [];
    const flush = () => {
      if (run.length === 1) svg.append(el("circle", { cx: run[0][0], cy: run[0][1], r: 1.5, fill: "#2f6feb" }));
      else if (run.length > 1) svg.append(el("polyline", { points: run.map((p) => p.map((c) => c.toFixed(1)).join(",")).join(" "), fill: "none", stroke: "#2f6feb", "stroke-width": 1.5 }));
      run = [];
    };
    values.forEach((v, i) => (v === null ? flush() : run.push([x(t[i]), y(v)])));
    flush();
  }
  fig.append(svg, cap);
  return fig;
}

/** The throttle level over time as a strip of colours. */
export function levelStrip(t, levels) {
  const fig = document.createElement("figure");
  fig.className = "chart";
  const cap = document.createElement("figcaption");
  cap.textContent = `level: ${levels.length ? levels[levels.length - 1] || "-" : "-"}`;
  const svg = el("svg", { viewBox: `0 0 ${W} 10`, width: W, height: 10, role: "img", "aria-label": "level" });
  const colour = { full: "#1a7f37", reduced: "#d97706", paused: "#c01c28" };
  if (t.length) {
    const t1 = t[t.length - 1], t0 = Math.min(t[0], t1 - 60);
    const x = (ti) => ((ti - t0) / (t1 - t0)) * W;
    levels.forEach((l, i) => {
      const x0 = x(t[i]), x1 = i + 1 < t.length ? x(t[i + 1]) : W;
      svg.append(el("rect", { x: x0.toFixed(1), y: 0, width: Math.max(1, x1 - x0).toFixed(1), height: 10, fill: colour[l] || "#c9ced6" }));
    });
  }
  fig.append(svg, cap);
  return fig;
}

export const rateText = (bps) => (bps >= 1e6 ? `${(bps / 1e6).toFixed(1)} MB/s` : bps >= 1e3 ? `${(bps / 1e3).toFixed(1)} kB/s` : `${bps.toFixed(0)} B/s`);

/** The charts of one node. */
export function nodeCharts(name, s) {
  const card = document.createElement("div");
  card.className = "history";
  const h = document.createElement("h3");
  h.textContent = name;
  card.append(
    h,
    lineChart("cpu", s.t, s.cpu_temp_c, (v) => `${v.toFixed(1)} °C`),
    lineChart("battery", s.t, s.battery_percent, (v) => `${v.toFixed(0)} %`),
    lineChart("replication", s.t, s.replication_bps, rateText),
    lineChart("egress", s.t, s.egress_bps, rateText),
    levelStrip(s.t, s.level),
  );
  return card;
}
